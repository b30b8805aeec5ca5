//! CPU-time accounting from `/proc/PID/stat` and `getrusage`.
//!
//! The process-level `utime` and `stime` fields of `/proc/PID/stat` already
//! include every thread of the process, so no per-task sum is needed.

use std::io;
use std::time::Duration;

/// User plus system CPU time consumed so far by process `pid`, read from
/// `/proc/PID/stat`.
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// CPU time (user plus system, all threads) consumed so far by this process,
/// from `getrusage`, at microsecond resolution.
pub fn self_cpu_time() -> io::Result<Duration> {
    // SAFETY: `rusage` is a plain C struct for which all-zero bytes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` that outlives the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// CPU time the whole machine (all cores) spent busy, from the first line of
/// `/proc/stat`: everything except `idle` and `iowait`, interrupts included.
pub fn machine_busy_time() -> io::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks = stat
        .lines()
        .next()
        .and_then(parse_machine_busy_ticks)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/stat"))?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// Busy ticks of a `/proc/stat` `cpu` line: user, nice, system, irq, softirq
/// and steal (guest time is already inside user).
pub fn parse_machine_busy_ticks(line: &str) -> Option<u64> {
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    match v.as_slice() {
        [user, nice, system, _idle, _iowait, irq, softirq, steal] => {
            Some(user + nice + system + irq + softirq + steal)
        }
        _ => None,
    }
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat`
/// line. The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm: field 3 (state) is index 0, so utime (14) is index 11.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: `sysconf` has no preconditions; it only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line =
            "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_proc_stat() {
        let line = "cpu  100 5 50 1000 20 3 7 1 0 0";
        assert_eq!(parse_machine_busy_ticks(line), Some(166));
        assert_eq!(parse_machine_busy_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_machine_busy_ticks("cpu 1 2"), None);
        machine_busy_time().unwrap();
    }

    #[test]
    fn ticks() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        process_cpu_time(pid).unwrap();
        self_cpu_time().unwrap();
    }
}
