//! The metrics endpoint: a small HTTP/1.1 server that runs on a core of the
//! runtime it reports on.
//!
//! Started by [`RuntimeBuilder::metrics`](crate::RuntimeBuilder::metrics):
//! the listener is bound on core 0 at build time (a bind error fails the
//! build) and the server runs there as an ordinary task. Each request gathers
//! a snapshot of every core through the mailboxes
//! ([`submit_to`](crate::submit_to) of [`core_stats`](crate::core_stats),
//! one core at a time, so a scrape never blocks a core: the other cores
//! answer between their own turns) and answers:
//!
//! - `GET /metrics`: every counter, gauge and histogram in the Prometheus
//!   text exposition format ([`render_prometheus`]);
//! - `GET /`: a short summary, one line per core (CPU, messages per second
//!   since the previous look at `/`, connections, parks, stalls);
//! - any other path: 404; another method: 405; a request that is not
//!   HTTP/1.x: 400.
//!
//! Every response closes the connection (`Connection: close`). A client
//! gets at most [`MAX_REQUEST`] bytes of request head and [`IO_TIMEOUT`] to
//! send it and to take the answer; one that sends more, sends garbage or is
//! slow is closed, and at most [`MAX_CONNECTIONS`] are served at once (more
//! are closed on accept). None of this affects the core's other tasks: the
//! server only awaits.

use std::cell::RefCell;
use std::fmt::Write;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::buf::AlignedBuf;
use crate::executor::spawn_local;
use crate::net::{TcpListener, TcpStream};
use crate::stats::{render_prometheus, CoreStats};

/// Most bytes of request head (request line and headers) read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its request, and then to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answered connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Summary,
}

/// Why a request is refused (the status line sent back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    TooLarge,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::NotFound => "404 Not Found",
            Refusal::MethodNotAllowed => "405 Method Not Allowed",
            Refusal::TooLarge => "431 Request Header Fields Too Large",
        }
    }
}

/// Where the request head ends (just past the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads the request line of a complete request head.
fn parse_request(head: &[u8]) -> Result<Route, Refusal> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(Refusal::BadRequest)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| Refusal::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    if method != "GET" && method != "HEAD" {
        return Err(Refusal::MethodNotAllowed);
    }
    // The query string, if any, is ignored.
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => Ok(Route::Metrics),
        "/" => Ok(Route::Summary),
        _ => Err(Refusal::NotFound),
    }
}

/// A complete response with a body (the body is left out for `HEAD`).
fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// What the summary remembers between looks: when, and each core's message
/// count.
#[derive(Default)]
struct LastLook {
    at: Option<Instant>,
    messages: Vec<u64>,
}

/// The human summary: one line per core.
fn summary(stats: &[CoreStats], last: &mut LastLook, now: Instant) -> String {
    let elapsed = last.at.map(|at| now.saturating_duration_since(at));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ringwire: {} cores; msgs/s since {}",
        stats.len(),
        match elapsed {
            Some(d) => format!("the previous look {:.1} s ago", d.as_secs_f64()),
            None => "start (first look)".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "{:>4} {:>4} {:>12} {:>11} {:>10} {:>7}",
        "core", "cpu", "msgs/s", "connections", "parks", "stalls"
    );
    let mut messages = Vec::with_capacity(stats.len());
    for s in stats {
        let now_msgs = s.messages_in();
        let before = last.messages.get(s.core).copied();
        let rate = match (elapsed, before) {
            (Some(d), Some(b)) if d > Duration::ZERO => {
                format!("{:.0}", now_msgs.wrapping_sub(b) as f64 / d.as_secs_f64())
            }
            _ => format!("{:.0}", 0.0),
        };
        let cpu = s.cpu.map_or_else(|| "-".to_string(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{:>4} {:>4} {:>12} {:>11} {:>10} {:>7}",
            s.core, cpu, rate, s.streams_receiving, s.parks, s.stalls
        );
        if messages.len() <= s.core {
            messages.resize(s.core + 1, 0);
        }
        messages[s.core] = now_msgs;
    }
    last.at = Some(now);
    last.messages = messages;
    out
}

/// A snapshot of every core, gathered one core at a time through the
/// mailboxes (cores that are stopping are left out).
async fn gather() -> Vec<CoreStats> {
    let cores = crate::mailbox::mesh::with(|m| m.peers.len());
    let mut all = Vec::with_capacity(cores);
    for core in 0..cores {
        if let Ok(s) = crate::mailbox::submit_to(core, || async { crate::core::core_stats() }).await
        {
            all.push(s);
        }
    }
    all
}

/// Serves the endpoint on `listener` until the runtime shuts down.
pub(crate) async fn serve(mut listener: TcpListener) {
    let last = Rc::new(RefCell::new(LastLook::default()));
    let active = Rc::new(std::cell::Cell::new(0usize));
    while let Some(conn) = listener.accept().await {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                // Descriptor exhaustion and the like: do not spin on it.
                crate::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if active.get() >= MAX_CONNECTIONS {
            drop(conn);
            continue;
        }
        active.set(active.get() + 1);
        let (last, active) = (last.clone(), active.clone());
        spawn_local(async move {
            if let Err(e) = answer(conn, &last).await {
                tracing::debug!(error = %e, "metrics endpoint: connection closed");
            }
            active.set(active.get() - 1);
        });
    }
}

/// Reads one request from `conn`, answers it and closes.
async fn answer(mut conn: TcpStream, last: &RefCell<LastLook>) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "client too slow");
    let head = crate::time::timeout(IO_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| timed_out())??;
    let reply = match head {
        Err(refusal) => response(refusal.status(), "text/plain", refusal.status(), false),
        Ok(head) => {
            let head_only = head.starts_with(b"HEAD ");
            match parse_request(&head) {
                Err(refusal) => response(refusal.status(), "text/plain", refusal.status(), false),
                Ok(Route::Metrics) => {
                    let body = render_prometheus(&gather().await);
                    response(
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        &body,
                        head_only,
                    )
                }
                Ok(Route::Summary) => {
                    let stats = gather().await;
                    let body = summary(&stats, &mut last.borrow_mut(), Instant::now());
                    response("200 OK", "text/plain; charset=utf-8", &body, head_only)
                }
            }
        }
    };
    let mut buf = AlignedBuf::new(reply.len(), 16);
    buf.copy_from_slice(&reply);
    let (sent, _) = crate::time::timeout(IO_TIMEOUT, conn.send_all(buf))
        .await
        .map_err(|_| timed_out())?;
    sent?;
    conn.shutdown(std::net::Shutdown::Write).await?;
    // Closing with unread request bytes would reset the connection and
    // could discard the answer before the client reads it (a refused,
    // oversized request): read what is left until the client closes, for
    // a bounded time and amount.
    let _ = crate::time::timeout(LINGER, async {
        let mut left = MAX_REQUEST * 8;
        while let Ok(Some(chunk)) = conn.recv().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Reads until the end of the request head: `Ok(Err(TooLarge))` past
/// [`MAX_REQUEST`] bytes, an error when the peer closes first.
async fn read_head(conn: &mut TcpStream) -> io::Result<Result<Vec<u8>, Refusal>> {
    let mut head = Vec::new();
    loop {
        let Some(chunk) = conn.recv().await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the end of the request",
            ));
        };
        // Look for the end across the previous chunk's last three bytes.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk);
        drop(chunk);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(if head.len() > MAX_REQUEST {
                Err(Refusal::TooLarge)
            } else {
                Ok(head)
            });
        }
        if head.len() > MAX_REQUEST {
            return Ok(Err(Refusal::TooLarge));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_routed() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Metrics)
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Ok(Route::Metrics)
        );
        assert_eq!(
            parse_request(b"HEAD / HTTP/1.1\r\n\r\n"),
            Ok(Route::Summary)
        );
        assert_eq!(
            parse_request(b"GET /nope HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err(Refusal::MethodNotAllowed)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"no line end",
        ] {
            assert_eq!(parse_request(bad), Err(Refusal::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response("200 OK", "text/plain", "hello", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 5\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nhello"));
        let h = String::from_utf8(response("200 OK", "text/plain", "hello", true)).unwrap();
        assert!(h.ends_with("\r\n\r\n") && h.contains("Content-Length: 5\r\n"));
    }

    #[test]
    fn the_summary_gives_rates_from_the_second_look() {
        let mut last = LastLook::default();
        let t0 = Instant::now();
        let mut s = CoreStats {
            core: 0,
            cpu: Some(3),
            recv_copies_made: 100,
            streams_receiving: 2,
            ..CoreStats::default()
        };
        let first = summary(std::slice::from_ref(&s), &mut last, t0);
        assert!(first.contains("first look"), "{first}");
        s.recv_copies_made = 300;
        let second = summary(&[s], &mut last, t0 + Duration::from_secs(2));
        let row = second.lines().nth(2).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, ["0", "3", "100", "2", "0", "0"], "{second}");
    }
}
