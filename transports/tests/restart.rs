//! A server process killed with SIGKILL and started again: the client, whose
//! resume the new process refuses (it never heard of the session), hands
//! back exactly the messages the dead one never acknowledged, and goes on
//! with a new session.
//!
//! The server is this test binary run again as a child process (with
//! `RINGWIRE_RESTART_SERVER` set), so the test has its own `main`
//! (`harness = false`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use ringwire_transports::{connect, listen, ConnEvent, Endpoint, Reconnect};

const CHILD: &str = "RINGWIRE_RESTART_SERVER";

fn main() {
    if let Ok(port) = std::env::var(CHILD) {
        serve(port.parse().expect("port"));
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RINGWIRE_TEST_LOG").unwrap_or_else(|_| "off".into()))
        .try_init();
    print!("test a_killed_and_restarted_server_gets_exactly_the_unacknowledged_messages_back ... ");
    a_killed_and_restarted_server_gets_exactly_the_unacknowledged_messages_back();
    println!("ok");
}

/// The child: a one-core server on `port` that takes orders on every
/// connection until it is killed. Prints "ready" once it listens.
fn serve(port: u16) {
    let rt = ringwire_runtime::Runtime::builder()
        .placement(ringwire_runtime::Placement::Unpinned(1))
        .build()
        .expect("runtime");
    let done = rt.spawn_on(0, move || async move {
        let ep: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
        let mut l = listen(&ep, &config()).await.expect("listen");
        println!("ready");
        while let Some(conn) = l.accept().await {
            // A refused resume is a failed handshake: skip it.
            let Ok(conn) = conn else { continue };
            ringwire_runtime::spawn_local(
                async move { while conn.recv::<Order>().await.is_ok() {} },
            );
        }
    });
    let _ = done.join();
}

/// The server process, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16) -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server(child);
    assert_eq!(line.trim(), "ready", "the server process did not start");
    server
}

fn signal(server: &Server, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not
    // reaped yet, so the pid names that process.
    let rc = unsafe { libc::kill(server.0.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn a_killed_and_restarted_server_gets_exactly_the_unacknowledged_messages_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start_server(port);
    let rt = runtime();
    let (acked_tx, acked_rx) = mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let client = rt.spawn_on(0, move || async move {
        let ep: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
        let cfg = config().reconnect(
            Reconnect::default()
                .backoff(Duration::from_millis(5), Duration::from_millis(50))
                .give_up_after(Some(Duration::from_secs(30))),
        );
        let conn = connect(&ep, &cfg).await.unwrap();
        // 0..10: acknowledged, so never handed back.
        for i in 0..10 {
            conn.send_acked(&order(i)).await.unwrap();
        }
        acked_tx.send(()).unwrap();
        // The server is frozen now: 10..100 reach its socket at most, and
        // it acknowledges none of them before it dies.
        while frozen_rx.try_recv().is_err() {
            ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 10..100 {
            conn.send(&order(i)).await.unwrap();
        }
        sent_tx.send(()).unwrap();
        let handed_back = loop {
            match conn.next_event().await {
                Some(ConnEvent::SessionReset { unacked }) => {
                    break unacked
                        .iter()
                        .map(|u| u.get::<Order>().unwrap().id.to_native())
                        .collect::<Vec<u64>>();
                }
                Some(_) => continue,
                None => panic!("the connection ended: {:?}", conn.closed_reason()),
            }
        };
        // A new session with the new process.
        conn.send_acked(&order(1000)).await.unwrap();
        handed_back
    });
    acked_rx.recv().unwrap();
    signal(&server, libc::SIGSTOP);
    frozen_tx.send(()).unwrap();
    sent_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    signal(&server, libc::SIGKILL);
    server.0.wait().unwrap();
    let restarted = start_server(port);
    let handed_back = client.join().unwrap();
    assert_eq!(
        handed_back,
        (10..100).collect::<Vec<u64>>(),
        "exactly the unacknowledged messages, in order"
    );
    drop(restarted);
    drop(server);
    shutdown(rt);
}
