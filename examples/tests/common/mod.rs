//! Running example nodes as processes in tests: their stdout read line by
//! line, every wait bounded, every process killed (by its own pid) when
//! its handle is dropped.

#![allow(dead_code)]

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Longest any single wait of a test may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// A node started by a test.
pub struct Node {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub out: Vec<String>,
}

impl Node {
    /// Starts `bin` with `args` (stdout piped, stderr to the test's).
    pub fn start(bin: &str, args: &[&str]) -> Node {
        Node::start_cmd(Command::new(bin), bin, args)
    }

    /// Starts `bin` inside network namespace `ns` (`ip netns exec`).
    pub fn start_in_ns(ns: &str, bin: &str, args: &[&str]) -> Node {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, bin]);
        Node::start_cmd(cmd, bin, args)
    }

    fn start_cmd(mut cmd: Command, bin: &str, args: &[&str]) -> Node {
        let name = format!(
            "{} {}",
            bin.rsplit('/').next().unwrap_or(bin),
            args.join(" ")
        );
        let mut child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Node {
            name,
            child,
            lines,
            out: Vec::new(),
        }
    }

    /// The child's stdin (for interactive nodes).
    pub fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.child.stdin.as_mut().unwrap()
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line with {needle:?} in {WAIT:?}; got {:?}",
                        self.name, self.out
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited without a line with {needle:?}; got {:?}",
                        self.name, self.out
                    )
                }
            }
        }
    }

    /// Like [`Node::wait_line`], but a line already read counts too.
    pub fn wait_line_seen(&mut self, needle: &str) -> String {
        if let Some(line) = self.out.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.wait_line(needle)
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this handle owns and has not
        // reaped; it touches no memory.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its status and its whole
    /// stdout.
    pub fn finish(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{}: still running after {WAIT:?}; got {:?}",
                    self.name, self.out
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.out.push(line);
        }
        (status, self.out.join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `bin args` to completion; returns its status and stdout.
pub fn run(bin: &str, args: &[&str]) -> (ExitStatus, String) {
    Node::start(bin, args).finish()
}

/// The value of `key=` in `text` (the first one), as a number.
pub fn field(text: &str, key: &str) -> u64 {
    let pat = format!("{key}=");
    let at = text
        .match_indices(&pat)
        .find(|(i, _)| *i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
        .0;
    let rest = &text[at + pat.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key}= is not a number in {text:?}"))
}

/// The first `scheme://...` word of `line` (up to a space or a comma).
pub fn endpoint_in(line: &str, scheme: &str) -> String {
    let at = line
        .find(&format!("{scheme}://"))
        .unwrap_or_else(|| panic!("no {scheme}:// in {line:?}"));
    line[at..]
        .split([' ', ',', ';'])
        .next()
        .unwrap()
        .to_string()
}

/// A network namespace with `lo` up and a multicast route on it, deleted
/// when dropped; `Err` (why) where namespaces cannot be made.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(tag: &str) -> Result<NetNs, String> {
        let ns = NetNs {
            name: format!("rwx-{tag}-{}", std::process::id()),
        };
        let n = ns.name.as_str();
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "multicast", "on"])?;
        ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", "lo"])?;
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Waits for `child` to exit, at most `limit`.
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs a command to completion, killing it if it outlives `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = match wait_for(&mut child, limit) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
