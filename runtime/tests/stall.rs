//! The stall detector: a task that spins past the threshold is counted,
//! named, timed and its core's stack shown; an idle core is not a stall.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringwire_runtime::{spawn_local_named, Placement, Runtime};

/// Everything the tests log, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_log() -> Log {
    static LOG: std::sync::OnceLock<Log> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    })
    .clone()
}

const THRESHOLD: Duration = Duration::from_millis(10);

fn runtime() -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(64)
        .send_buffers(4)
        .stall_threshold(Some(THRESHOLD))
        .build()
        .expect("runtime starts")
}

#[inline(never)]
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The `key=value` number in a log line.
fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"));
    line[at + key.len() + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn a_spinning_task_is_reported_with_its_name_duration_and_stack() {
    let log = capture_log();
    let rt = runtime();
    rt.block_on(0, || async {
        spawn_local_named("spinner", async { spin_for(Duration::from_millis(50)) })
            .await
            .unwrap();
    })
    .unwrap();
    // The end of the stall is logged by the watchdog at its next look.
    let mut text = log.text();
    for _ in 0..2000 {
        if text.contains("stall: task \"spinner\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        text = log.text();
    }
    // The end report: its message, then its stack, then its fields.
    let end = text
        .split("stall: task \"spinner\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no end report in:\n{text}"));
    assert!(end.contains("spawned at runtime/tests/stall.rs:"), "{end}");
    assert!(
        field(end, "held_ms") >= THRESHOLD.as_millis() as u64,
        "{end}"
    );
    // The report when flagged carries the core thread's stack, with the
    // spinning function in it.
    let flagged = text
        .split("stall: core 0 has been running")
        .nth(1)
        .unwrap_or_else(|| panic!("no flag report in:\n{text}"));
    let stack = flagged.split("stall: task").next().unwrap();
    assert!(stack.contains("spin_for"), "stack:\n{stack}");
    let stats = rt.stats();
    assert!(stats[0].stalls >= 1, "stalls counted: {}", stats[0].stalls);
    rt.shutdown(Duration::from_secs(2));
}

#[test]
fn an_idle_core_does_not_stall() {
    let rt = runtime();
    // Parked for many thresholds.
    std::thread::sleep(THRESHOLD * 10);
    rt.block_on(0, || async {}).unwrap();
    std::thread::sleep(THRESHOLD * 10);
    assert_eq!(rt.stats()[0].stalls, 0);
    rt.shutdown(Duration::from_secs(2));
}
