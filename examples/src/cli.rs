//! Minimal command-line parsing shared by the example nodes.

use std::time::Duration;

use ringwire::runtime::{IdleStrategy, Placement};

/// Iterates over `--flag value` pairs.
pub struct Args {
    inner: std::vec::IntoIter<String>,
}

impl Args {
    /// The process arguments, without the program name.
    pub fn from_env() -> Args {
        Self::from_vec(std::env::args().skip(1).collect())
    }

    /// Arguments from a list (for tests).
    pub fn from_vec(v: Vec<String>) -> Args {
        Args {
            inner: v.into_iter(),
        }
    }

    /// The next flag, `--name` or `--name=value` (the value is then kept for
    /// [`value`](Self::value)).
    pub fn next_flag(&mut self) -> Result<Option<String>, String> {
        match self.inner.next() {
            None => Ok(None),
            Some(a) if a.starts_with('-') => {
                if let Some((flag, value)) = a.split_once('=') {
                    let rest: Vec<String> = std::iter::once(value.to_string())
                        .chain(self.inner.by_ref())
                        .collect();
                    self.inner = rest.into_iter();
                    Ok(Some(flag.to_string()))
                } else {
                    Ok(Some(a))
                }
            }
            Some(a) => Err(format!("unexpected argument {a:?}")),
        }
    }

    /// The value of `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inner
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

/// `--cores 0,2,3` or `--cores 0-3` (a CPU list, ranges allowed; a single
/// CPU is written with a trailing comma, `--cores 3,`) or `--cores 2` (that
/// many cores, pinned to CPUs this process may use, one per physical core
/// before any hyperthread sibling).
pub fn parse_cores(v: &str) -> Result<Placement, String> {
    if v.contains(',') || v.contains('-') {
        let mut cpus = Vec::new();
        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("--cores {v}: {s:?}: {e}"))
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("--cores {v}: range {item} runs backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(item)?),
            }
        }
        if cpus.is_empty() {
            return Err(format!("--cores {v}: no CPU listed"));
        }
        return Ok(Placement::Cpus(cpus));
    }
    let n: usize = v
        .parse()
        .map_err(|e| format!("--cores {v}: {e} (expected a count, or a list like 0,1 or 3,)"))?;
    if n == 0 {
        return Err("--cores must be at least 1 (for CPU 0 alone write --cores 0,)".to_string());
    }
    Ok(Placement::Count(n))
}

/// `--idle park|spin|spin:MICROS|poll`.
pub fn parse_idle(v: &str) -> Result<IdleStrategy, String> {
    match v {
        "park" => Ok(IdleStrategy::Park),
        "poll" => Ok(IdleStrategy::Poll),
        "spin" => Ok(IdleStrategy::Spin(Duration::from_micros(50))),
        s if s.starts_with("spin:") => {
            let us: u64 = s[5..]
                .parse()
                .map_err(|e| format!("--idle {s}: {e} (expected spin:MICROSECONDS)"))?;
            Ok(IdleStrategy::Spin(Duration::from_micros(us)))
        }
        other => Err(format!(
            "--idle {other}: expected park, spin[:MICROS] or poll"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_list_and_count() {
        assert_eq!(parse_cores("0,1").unwrap(), Placement::Cpus(vec![0, 1]));
        assert_eq!(parse_cores("3,").unwrap(), Placement::Cpus(vec![3]));
        assert_eq!(
            parse_cores("0-2,5").unwrap(),
            Placement::Cpus(vec![0, 1, 2, 5])
        );
        assert_eq!(parse_cores("2").unwrap(), Placement::Count(2));
        assert!(parse_cores("0").is_err());
        assert!(parse_cores("a,1").is_err());
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores(",").is_err());
    }

    #[test]
    fn idle_forms() {
        assert_eq!(parse_idle("park").unwrap(), IdleStrategy::Park);
        assert_eq!(
            parse_idle("spin:20").unwrap(),
            IdleStrategy::Spin(Duration::from_micros(20))
        );
        assert!(parse_idle("nap").is_err());
    }

    #[test]
    fn flags_with_equals() {
        let mut a = Args::from_vec(vec!["--wire=raw".into(), "--stats".into()]);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--wire"));
        assert_eq!(a.value("--wire").unwrap(), "raw");
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--stats"));
        assert_eq!(a.next_flag().unwrap(), None);
    }
}
