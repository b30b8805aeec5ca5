//! A TCP relay for tests: forwards between clients and an upstream server,
//! and cuts, stalls or resets the connections through it on request.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringwire_transports::Endpoint;

/// A TCP relay that forwards between clients and `upstream`, and cuts,
/// stalls or resets every connection through it on request.
pub struct Relay {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
    pub stalled: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    /// While set, connections are accepted and closed at once.
    pub refuse: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let (c, s, st, f, r) = (
            conns.clone(),
            stalled.clone(),
            stop.clone(),
            forwarded.clone(),
            refuse.clone(),
        );
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                };
                if r.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                c.lock()
                    .unwrap()
                    .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (s, f) = (s.clone(), f.clone());
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while s.load(Ordering::Relaxed) {
                                thread::sleep(Duration::from_millis(1));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            f.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            conns,
            stalled,
            stop,
            forwarded,
            refuse,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        format!("tcp://127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// Cuts every connection through the relay: FIN on both sides.
    pub fn cut(&self) {
        for (a, b) in self.conns.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Resets every connection through the relay: RST on both sides.
    pub fn reset(&self) {
        for (a, b) in self.conns.lock().unwrap().drain(..) {
            for s in [a, b] {
                let sock = socket2::SockRef::from(&s);
                let _ = sock.set_linger(Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Both);
                drop(s);
            }
        }
    }

    /// Resets the oldest connection through the relay only.
    pub fn reset_first(&self) {
        let mut conns = self.conns.lock().unwrap();
        if conns.is_empty() {
            return;
        }
        let (a, b) = conns.remove(0);
        for s in [a, b] {
            let sock = socket2::SockRef::from(&s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// How many connections go through the relay now.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn stall(&self, d: Duration) {
        self.stalled.store(true, Ordering::Relaxed);
        thread::sleep(d);
        self.stalled.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}
