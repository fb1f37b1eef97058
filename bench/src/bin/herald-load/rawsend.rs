//! B's senders over WebSocket, driven by one thread: the pacer itself writes each message to its sender's socket
//! when the message is due, and reads the replies in sweeps.
//!
//! Why not one tokio task per sender, woken by the pacer: at 50,000 msg/s that is 50,000 cross-thread wake-ups a
//! second, a task poll, a `format!`, tungstenite's frame encoder and a lock per message, and another wake-up and
//! a parsed, allocated frame per reply — CPU of the load generator taken from the two cores the server runs on.
//! Here a due message is built in a reused buffer (`scan::body_into`, masked with `wsread::client_text`) and
//! written with one non-blocking `send` from the pacer's thread; nothing else happens per message.
//!
//! The measurement is unchanged: every message is still sent at (not before) its intended time and stamped with
//! it, whatever happened before (open loop); a socket that does not take a message keeps it, and it goes out,
//! with its original stamp, as soon as the socket takes it. Latency is measured at the receivers, as before.
//!
//! Replies are read in sweeps rather than as they arrive: every [`SWEEP`] the senders still owed a reply are
//! read until their sockets are empty (dozens of replies a read), and every [`IDLE_SWEEP`] all of them (answering
//! the server's keep-alive pings, noticing a closed connection). Every reply is read and checked: a step ends
//! only when each of its messages has been answered (or at its deadline), and an `error` reply counts as a send
//! error exactly as before.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use herald_bench::scan;
use herald_bench::schedule::{Schedule, unix_nanos};
use herald_bench::wsread::{self, Frame, FrameReader};

/// How often, during a step, the senders that are owed replies are read.
const SWEEP: Duration = Duration::from_millis(500);
/// How often every sender is read between steps (keep-alive pings are answered then).
const IDLE_SWEEP: Duration = Duration::from_millis(200);
/// While waiting for the last replies of a step: the pause between sweeps.
const TAIL_SWEEP: Duration = Duration::from_millis(2);

/// One sender: a Herald WebSocket connection whose hello (and nothing else) has been read.
pub(crate) struct RawSender {
    tcp: TcpStream,
    /// The frame text before the body, e.g. `{"type":"send","id":0,"channel":"dm:a:b","body":`; `}` follows it.
    prefix: Vec<u8>,
    key: [u8; 4],
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    reader: FrameReader,
    /// Messages queued on this connection, and replies (`reply` or `error`) read from it, since it opened.
    sent: u64,
    replies: u64,
    /// Unanswered messages already counted as errors (once the connection failed).
    lost: u64,
    failed: bool,
}

impl RawSender {
    /// Sender number `i` over `tcp` (a connected, non-blocking socket whose WebSocket handshake is done).
    pub(crate) fn new(tcp: TcpStream, i: usize, prefix: String) -> std::io::Result<Self> {
        tcp.set_nonblocking(true)?;
        // A fixed masking key per connection (RFC 6455 asks for an unpredictable one to protect proxies; there
        // is none here). Never zero, so the server's unmasking does real work.
        let key = ((i as u32).wrapping_mul(0x9E37_79B9) | 0x0101_0101).to_be_bytes();
        Ok(Self {
            tcp,
            prefix: prefix.into_bytes(),
            key,
            out: Vec::new(),
            reader: FrameReader::new(),
            sent: 0,
            replies: 0,
            lost: 0,
            failed: false,
        })
    }

    /// Writes what the socket takes of `out`.
    fn flush(&mut self) {
        while !self.out.is_empty() && !self.failed {
            match self.tcp.write(&self.out) {
                Ok(0) => self.failed = true,
                Ok(n) if n == self.out.len() => self.out.clear(),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.failed = true,
            }
        }
    }

    /// Reads everything the socket holds; counts replies and error replies, answers pings.
    fn sweep(&mut self, scratch: &mut [u8], errors: &mut u64) {
        while !self.failed {
            let n = match self.tcp.read(scratch) {
                Ok(0) => {
                    self.failed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.failed = true;
                    break;
                }
            };
            // A short read emptied the socket: no second read just to hear "would block".
            let drained = n < scratch.len();
            let (mut replies, mut closed) = (0, false);
            let out = &mut self.out;
            let fed = self.reader.feed(&scratch[..n], |f| match f {
                Frame::Data(p) => {
                    if scan::find(p, b"\"type\":\"error\"").is_some() {
                        replies += 1;
                        if *errors == 0 {
                            eprintln!("worker: first error reply: {:.300}", String::from_utf8_lossy(p));
                        }
                        *errors += 1;
                    } else if scan::find(p, b"\"type\":\"reply\"").is_some() {
                        replies += 1;
                    }
                }
                Frame::Ping(p) => out.extend_from_slice(&wsread::pong(p)),
                Frame::Close => closed = true,
                Frame::Other => {}
            });
            self.replies += replies;
            if fed.is_err() || closed {
                self.failed = true;
            }
            if !self.out.is_empty() {
                self.flush();
            }
            if drained {
                break;
            }
        }
    }
}

/// What a step did: messages sent (queued on their sockets) and send errors (error replies, failed sockets).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    pub(crate) sent: u64,
    pub(crate) errors: u64,
}

enum Command {
    Run {
        schedule: Schedule,
        first_n: u64,
        body_bytes: usize,
        deadline_ns: u64,
        done: tokio::sync::oneshot::Sender<Sent>,
    },
}

/// The senders' thread.
pub(crate) struct RawSenders {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawSenders {
    /// Starts the thread that owns `senders`.
    pub(crate) fn start(senders: Vec<RawSender>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("senders".into()).spawn(move || serve(senders, &rx))?;
        Ok(Self { commands: Some(tx), thread: Some(thread) })
    }

    /// Runs one paced step (message `g` of the schedule is sender `g % senders`'s), returns when every message
    /// was answered or at `deadline_ns`.
    pub(crate) async fn run(&self, schedule: Schedule, first_n: u64, body_bytes: usize, deadline_ns: u64) -> Sent {
        let (done, result) = tokio::sync::oneshot::channel();
        let Some(commands) = &self.commands else { return Sent::default() };
        if commands.send(Command::Run { schedule, first_n, body_bytes, deadline_ns, done }).is_err() {
            return Sent::default();
        }
        result.await.unwrap_or_default()
    }
}

impl Drop for RawSenders {
    /// Closes every connection (a close frame each, then a short wait for the server's) and joins the thread.
    fn drop(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut senders: Vec<RawSender>, commands: &mpsc::Receiver<Command>) {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut errors = 0;
    loop {
        match commands.recv_timeout(IDLE_SWEEP) {
            Ok(Command::Run { schedule, first_n, body_bytes, deadline_ns, done }) => {
                let sent = run(&mut senders, &mut scratch, schedule, (first_n, body_bytes, deadline_ns));
                let _ = done.send(sent);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                for s in &mut senders {
                    s.sweep(&mut scratch, &mut errors);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // A masked close frame (code 1000) each; the server answers and closes.
    for s in &mut senders {
        s.out.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        s.flush();
    }
    let until = unix_nanos() + 2_000_000_000;
    while unix_nanos() < until && senders.iter().any(|s| !s.failed) {
        for s in &mut senders {
            s.sweep(&mut scratch, &mut errors);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One paced step: releases messages at their intended times, writing each to its sender's socket at once.
fn run(senders: &mut [RawSender], scratch: &mut [u8], schedule: Schedule, params: (u64, usize, u64)) -> Sent {
    let (first_n, body_bytes, deadline_ns) = params;
    let mut result = Sent::default();
    if senders.is_empty() {
        return result;
    }
    let schedule = Schedule { senders: senders.len() as u64, ..schedule };
    let owed = |s: &RawSender| s.sent > s.replies && !s.failed;
    let mut payload = Vec::with_capacity(body_bytes + 128);
    let mut released = 0;
    let mut last_sweep = unix_nanos();
    let sweep_ns = SWEEP.as_nanos() as u64;
    while released < schedule.count {
        let now = unix_nanos();
        let due = schedule.due_at(now);
        for g in released..due {
            let (s, _) = schedule.sender_of(g);
            let sender = &mut senders[s as usize];
            payload.clear();
            payload.extend_from_slice(&sender.prefix);
            scan::body_into(&mut payload, first_n + g, schedule.intended_ns(g), body_bytes);
            payload.push(b'}');
            wsread::client_text(&mut sender.out, &payload, sender.key);
            sender.sent += 1;
            result.sent += 1;
            sender.flush();
        }
        released = due;
        if now.saturating_sub(last_sweep) >= sweep_ns {
            last_sweep = now;
            for s in senders.iter_mut().filter(|s| owed(s) || !s.out.is_empty()) {
                s.sweep(scratch, &mut result.errors);
                s.flush();
            }
        }
        if released < schedule.count {
            // Behind schedule: no sleep (not even a zero one, which is still a system call).
            let wait = schedule.intended_ns(released).saturating_sub(unix_nanos());
            if wait > 0 {
                std::thread::sleep(Duration::from_nanos(wait.min(50_000_000)));
            }
        }
    }
    // Every message answered (or the deadline).
    loop {
        for s in senders.iter_mut().filter(|s| owed(s) || !s.out.is_empty()) {
            s.sweep(scratch, &mut result.errors);
            s.flush();
        }
        if !senders.iter().any(|s| owed(s) || (!s.out.is_empty() && !s.failed)) || unix_nanos() >= deadline_ns {
            break;
        }
        std::thread::sleep(TAIL_SWEEP);
    }
    // A failed connection's unanswered messages are send errors (each counted once).
    for s in senders.iter_mut().filter(|s| s.failed) {
        let unanswered = s.sent.saturating_sub(s.replies);
        result.errors += unanswered.saturating_sub(s.lost);
        s.lost = unanswered;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Reads masked client text frames from `tcp` and answers each: an `error` for message index 103, a `reply`
    /// otherwise. Returns the message indices seen, after `count` frames.
    fn fake_server(mut tcp: TcpStream, count: usize) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while seen.len() < count {
            let n = tcp.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                if buf.len() < 2 {
                    break;
                }
                assert_eq!(buf[0], 0x81, "a final text frame");
                assert_eq!(buf[1] & 0x80, 0x80, "masked");
                let (hlen, len) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                    126 => break,
                    n => (2, usize::from(n)),
                };
                if buf.len() < hlen + 4 + len {
                    break;
                }
                let key = [buf[hlen], buf[hlen + 1], buf[hlen + 2], buf[hlen + 3]];
                let payload: Vec<u8> =
                    buf[hlen + 4..hlen + 4 + len].iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect();
                buf.drain(..hlen + 4 + len);
                let (n, _) = scan::marks(&payload).unwrap_or_else(|| panic!("no marks in {payload:?}"));
                assert!(payload.starts_with(b"{\"type\":\"send\",\"id\":0,\"channel\":\"dm:a:b\",\"body\":{"));
                seen.push(n);
                let answer: &[u8] =
                    if n == 103 { br#"{"type":"error","id":0,"code":"x"}"# } else { br#"{"type":"reply","id":0}"# };
                let mut frame = vec![0x81, answer.len() as u8];
                frame.extend_from_slice(answer);
                tcp.write_all(&frame).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        seen
    }

    #[tokio::test]
    async fn every_message_is_sent_once_in_order_and_every_reply_checked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            fake_server(tcp, 10)
        });
        let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let prefix = "{\"type\":\"send\",\"id\":0,\"channel\":\"dm:a:b\",\"body\":".to_owned();
        let senders = RawSenders::start(vec![RawSender::new(tcp, 0, prefix).unwrap_or_else(|e| panic!("{e}"))])
            .unwrap_or_else(|e| panic!("{e}"));
        let start_ns = unix_nanos() + 5_000_000;
        let schedule = Schedule { start_ns, rate: 1_000.0, count: 10, senders: 1 };
        let sent = senders.run(schedule, 100, 120, unix_nanos() + 5_000_000_000).await;
        // Open loop: not before the last message's intended time.
        assert!(unix_nanos() >= schedule.intended_ns(9));
        assert_eq!(sent.sent, 10);
        assert_eq!(sent.errors, 1, "the one error reply");
        let seen = server.join().unwrap_or_else(|_| panic!("the fake server panicked"));
        assert_eq!(seen, (100..110).collect::<Vec<u64>>());
        drop(senders);
    }
}
