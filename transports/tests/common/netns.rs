//! A real network path for fault tests: two network namespaces the test
//! creates, joined by a veth pair, side A at [`ADDR_A`] and side B at
//! [`ADDR_B`]; nothing in them reaches the host's interfaces. Faults are
//! nftables rules on each side's ingress hook (netdev family; this kernel
//! has no netem): random loss with `numgen random`, and a cut that drops
//! every packet until it is lifted. Both namespaces go when the pair is
//! dropped, a failing test's too.
#![allow(dead_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

/// Side A's address (device `rwfa`).
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
/// Side B's address (device `rwfb`).
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);

/// One end of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn device(self) -> &'static str {
        match self {
            Side::A => "rwfa",
            Side::B => "rwfb",
        }
    }
}

/// Two namespaces and the veth pair between them; see the module docs.
pub struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    /// Creates the namespaces (named after `tag` and the process id), the
    /// veth pair, the addresses, and on each side an nftables table with an
    /// empty `cut` chain and an empty `loss` chain on the device's ingress.
    /// Each packet on the veth is one wire-sized packet (`gso_max_segs 1`:
    /// the kernel cuts TCP and UDP GSO batches before they cross), so that
    /// loss hits packets as a wire would, not 64 KiB batches.
    pub fn create(tag: &str) -> Result<VethPair, String> {
        run("nft", &["--version"], None)?;
        let base = format!("rwf-{tag}-{}", std::process::id());
        let pair = VethPair {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "-n", &pair.a, "link", "add", "rwfa", "type", "veth", "peer", "name", "rwfb", "netns",
            &pair.b,
        ])?;
        for side in [Side::A, Side::B] {
            let ns = pair.ns(side);
            let dev = side.device();
            let addr = match side {
                Side::A => ADDR_A,
                Side::B => ADDR_B,
            };
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "gso_max_segs", "1", "up"])?;
            pair.nft(
                side,
                &format!(
                    "table netdev rwfault {{\n\
                     counter lost {{}}\n\
                     counter cut {{}}\n\
                     chain cut {{ type filter hook ingress device \"{dev}\" priority -10; policy accept; }}\n\
                     chain loss {{ type filter hook ingress device \"{dev}\" priority 0; policy accept; }}\n\
                     }}\n"
                ),
            )?;
        }
        Ok(pair)
    }

    /// The namespace's name.
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Runs `f` on a new thread inside `side`'s namespace; a runtime it
    /// builds has its core threads inside too (threads are made in the
    /// namespace of the thread that makes them).
    pub fn spawn<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns(side));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Drops `percent` % of the IPv4 packets arriving at `side`, at random
    /// (`numgen random`), counting them in the `lost` counter; 0 stops it.
    pub fn set_loss(&self, side: Side, percent: u32) -> Result<(), String> {
        let mut script = String::from("flush chain netdev rwfault loss\n");
        if percent > 0 {
            script.push_str(&format!(
                "add rule netdev rwfault loss meta protocol ip numgen random mod 100 < {percent} \
                 counter name \"lost\" drop\n"
            ));
        }
        self.nft(side, &script)
    }

    /// Cuts the path: every packet arriving at either side is dropped (and
    /// counted in `cut`) until [`VethPair::restore`].
    pub fn cut(&self) -> Result<(), String> {
        for side in [Side::A, Side::B] {
            self.nft(
                side,
                "add rule netdev rwfault cut counter name \"cut\" drop\n",
            )?;
        }
        Ok(())
    }

    /// Lifts a [`VethPair::cut`].
    pub fn restore(&self) -> Result<(), String> {
        for side in [Side::A, Side::B] {
            self.nft(side, "flush chain netdev rwfault cut\n")?;
        }
        Ok(())
    }

    /// Packets counted so far by `side`'s named counter (`lost`, `cut`).
    pub fn dropped(&self, side: Side, counter: &str) -> Result<u64, String> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.ns(side),
                "nft",
                "list",
                "counter",
                "netdev",
                "rwfault",
                counter,
            ],
            None,
        )?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                let n = words.next().unwrap_or_default();
                return n
                    .parse()
                    .map_err(|e| format!("counter {counter}: {n:?}: {e}"));
            }
        }
        Err(format!("counter {counter}: no packet count in {out:?}"))
    }

    /// A field of `/proc/net/snmp` in `side`'s namespace, e.g. `("Tcp",
    /// "RetransSegs")` or `("Udp", "RcvbufErrors")`.
    pub fn snmp(&self, side: Side, proto: &str, field: &str) -> Result<u64, String> {
        let proto = format!("{proto}:");
        let field = field.to_string();
        self.spawn(side, move || {
            // `/proc/net` follows the main thread's namespace; this thread's
            // own is under `thread-self`.
            let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
                .map_err(|e| format!("read snmp: {e}"))?;
            let mut lines = text.lines().filter(|l| l.starts_with(&proto));
            let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
                return Err(format!("no {proto} lines in snmp"));
            };
            let i = names
                .split_whitespace()
                .position(|n| n == field)
                .ok_or_else(|| format!("no {proto} {field} in snmp"))?;
            let v = values.split_whitespace().nth(i).unwrap_or_default();
            v.parse()
                .map_err(|e| format!("{proto} {field}: {v:?}: {e}"))
        })
        .join()
        .map_err(|_| "snmp reader panicked".to_string())?
    }

    fn nft(&self, side: Side, script: &str) -> Result<(), String> {
        run(
            "ip",
            &["netns", "exec", self.ns(side), "nft", "-f", "-"],
            Some(script),
        )
        .map(drop)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair,
        // and its nftables tables.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// The pair, or `None` after printing why the test is skipped (not root, no
/// `ip` or `nft`, no namespaces).
pub fn veth_pair(tag: &str) -> Option<VethPair> {
    match VethPair::create(tag) {
        Ok(pair) => Some(pair),
        Err(why) => {
            eprintln!("SKIPPED: no namespaces, veth and nftables for the fault test: {why}");
            None
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `file` is an open namespace descriptor for the duration of the
    // call; setns changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args, None).map(drop)
}

/// Runs `prog` with `args` (and `input` on its stdin); its stdout, or why it
/// failed.
fn run(prog: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{prog}`: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("`{prog}` stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{prog}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
