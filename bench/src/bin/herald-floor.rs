//! `herald-floor`: the kernel floor of scenarios B, C and D on this machine, without Herald.
//!
//! Each shape is run with the least work a server and its clients can possibly do over loopback TCP — the same
//! connection counts, frame sizes and source-address spreading (`127.0.0.(2 + i % 250)`) as `herald-load`, but no
//! WebSocket, no protocol, no store, no async runtime: plain non-blocking sockets, `epoll` (through `mio`) on the
//! receiving side, fixed-size frames counted by their bytes. Whatever Herald measures above these figures is
//! Herald's; whatever a target asks below them no server can give on this machine.
//!
//! | subcommand | shape |
//! |---|---|
//! | `broadcast` (D) | `--connections` sockets (19,000); the writer threads (2) write one frame to every socket, `--messages` times (20), `--interval-ms` apart (250); per broadcast, intended time → the last socket's read |
//! | `fanout` (C) | `--members` sockets (10,000); `--rate` messages per second (100) for `--secs` (3); every `--batch` k messages the writers put k frames into one write per socket (several values: `--batch 1,2,5`); per message, intended time → the last socket's read; CPU per delivery |
//! | `relay` (B) | `--pairs` sender → receiver pairs (1,000) at `--rate` (50,000/s) open loop; a relay (2 threads, `epoll`) copies each sender's bytes to its receiver and answers with an ack frame; latency from the intended send time to the receiver's read |
//!
//! The measuring side is this process (writers / relay); the clients run in a child process of the same binary
//! (a process here may hold at most 20,000 open files, and each side holds one socket per connection). Both
//! sides report the CPU time of their working threads (`/proc/thread-self/schedstat`), so CPU per delivery
//! covers the whole loopback path: on loopback the writer's `sendto` also runs the receiving socket's TCP
//! processing (softirq) before it returns.
//!
//! ```sh
//! ulimit -n 20000
//! herald-floor broadcast --connections 19000 --messages 20 --runs 3
//! herald-floor fanout --members 10000 --rate 100 --batch 1,2,5 --runs 3
//! herald-floor relay --pairs 1000 --rate 50000 --runs 3
//! ```

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_bench::net::source_ip;
use herald_bench::schedule::{Schedule, unix_nanos};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of one delivery in C and D: the WebSocket frame (4-byte header + 251-byte `message` event on
/// `topic:bench` / `group:bench` with `herald-load`'s 100-byte body) that `bench-server` writes, as measured
/// with `strace -e writev` during `herald-load broadcast`.
const DELIVERY_FRAME_BYTES: usize = 255;
/// Bytes of one delivery in B (the same frame on a `dm:uA:uB` channel, 252 B). The floor's senders send frames
/// of this size too (Herald's clients send a 159-byte masked `send` frame; the relay copies bytes, so a frame
/// keeps one size on both legs).
const RELAY_FRAME_BYTES: usize = 252;
/// Bytes of Herald's reply to a `send` in B (the sender's ack), as measured.
const ACK_FRAME_BYTES: usize = 109;

#[derive(Debug, Parser)]
#[command(name = "herald-floor", about = "The kernel floor of scenarios B, C and D: the least work over loopback TCP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// D-floor: one frame to every connection, `--messages` times.
    Broadcast(BroadcastArgs),
    /// C-floor: a group of `--members` connections at `--rate` messages per second, k frames per write.
    Fanout(FanoutArgs),
    /// B-floor: sender → relay → receiver pairs, open loop.
    Relay(RelayArgs),
    /// (internal) The receiving clients of `broadcast` and `fanout`.
    #[command(hide = true)]
    PushClients(PushClientArgs),
    /// (internal) The clients of `relay`.
    #[command(hide = true)]
    RelayClients(RelayClientArgs),
}

/// Socket settings shared by every shape.
#[derive(Debug, Clone, clap::Args)]
struct SockOpts {
    /// TCP_NODELAY on every socket (both sides).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
    /// SO_SNDBUF of the server's sockets, bytes (kernel default if not given).
    #[arg(long)]
    sndbuf: Option<usize>,
    /// SO_RCVBUF of the client sockets, bytes (kernel default if not given).
    #[arg(long)]
    rcvbuf: Option<usize>,
    /// Client threads reading with epoll, in the client process.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct BroadcastArgs {
    /// Receiving connections.
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Broadcasts per run.
    #[arg(long, default_value_t = 20)]
    messages: u64,
    /// Time between two broadcasts, ms.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Bytes per frame.
    #[arg(long, default_value_t = DELIVERY_FRAME_BYTES)]
    frame_bytes: usize,
    /// Writer threads (each writes to its share of the connections).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Runs (fresh connections each); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    sock: SockOpts,
}

#[derive(Debug, Clone, clap::Args)]
struct FanoutArgs {
    /// Member connections.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Messages per second (each goes to every member).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Length of each step, seconds.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Frames per write (k): the writers write every k messages, k frames at once. Several values, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5")]
    batch: Vec<u64>,
    /// Bytes per frame.
    #[arg(long, default_value_t = DELIVERY_FRAME_BYTES)]
    frame_bytes: usize,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Runs of every step (fresh connections each); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    sock: SockOpts,
}

#[derive(Debug, Clone, clap::Args)]
struct RelayArgs {
    /// Sender → receiver pairs.
    #[arg(long, default_value_t = 1_000)]
    pairs: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// Length of a run, seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Bytes per frame (sender → relay → receiver).
    #[arg(long, default_value_t = RELAY_FRAME_BYTES)]
    frame_bytes: usize,
    /// Bytes of the relay's ack to the sender per frame (0: no ack).
    #[arg(long, default_value_t = ACK_FRAME_BYTES)]
    ack_bytes: usize,
    /// Relay threads.
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// Runs (fresh connections each); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    sock: SockOpts,
}

#[derive(Debug, Clone, clap::Args)]
struct PushClientArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    messages: u64,
    #[arg(long)]
    frame_bytes: usize,
    #[command(flatten)]
    sock: SockOpts,
}

#[derive(Debug, Clone, clap::Args)]
struct RelayClientArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    pairs: usize,
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    messages: u64,
    #[arg(long)]
    frame_bytes: usize,
    #[command(flatten)]
    sock: SockOpts,
}

fn main() -> Result<(), Error> {
    match Cli::parse().cmd {
        Cmd::Broadcast(a) => broadcast(&a),
        Cmd::Fanout(a) => fanout(&a),
        Cmd::Relay(a) => relay(&a),
        Cmd::PushClients(a) => push_clients(&a),
        Cmd::RelayClients(a) => relay_clients(&a),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shared helpers

/// CPU time of the calling thread so far, ns (`/proc/thread-self/schedstat`, first field).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Nearest-rank percentile of `values` (sorted in place); 0 when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Median of the finite `values`, with the range, as `median (min–max)`.
fn spread(values: &[f64], decimals: usize) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "—".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let med = percentile(&mut v, 50.0);
    if v.len() == 1 {
        format!("{med:.decimals$}")
    } else {
        format!("{med:.decimals$} ({min:.decimals$}–{max:.decimals$})")
    }
}

/// A listening socket on 127.0.0.1 with a deep accept queue.
fn listen() -> Result<TcpListener, Error> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Accepts `n` connections, sets them non-blocking with the server-side options.
fn accept_all(listener: &TcpListener, n: usize, sock: &SockOpts) -> Result<Vec<TcpStream>, Error> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (s, _) = listener.accept()?;
        s.set_nodelay(sock.nodelay)?;
        if let Some(b) = sock.sndbuf {
            socket2::SockRef::from(&s).set_send_buffer_size(b)?;
        }
        out.push(s);
    }
    Ok(out)
}

/// Client connection `i` to `addr`, bound to [`source_ip`]`(i)`, blocking until connected, then non-blocking.
/// Retried a few times: a burst of connects can overflow the accept queue, and the kernel then resets some.
fn connect(addr: SocketAddr, i: usize, sock: &SockOpts) -> Result<mio::net::TcpStream, Error> {
    let mut tries = 0;
    loop {
        match connect_once(addr, i, sock) {
            Ok(s) => return Ok(s),
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("connection {i}: {e}; retrying");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn connect_once(addr: SocketAddr, i: usize, sock: &SockOpts) -> Result<mio::net::TcpStream, Error> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let ip = match source_ip(i) {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    s.bind(&SocketAddr::from((ip, 0)).into())?;
    if let Some(b) = sock.rcvbuf {
        s.set_recv_buffer_size(b)?;
    }
    s.set_tcp_nodelay(sock.nodelay)?;
    s.connect(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(s.into()))
}

/// Arguments a child process gets for the socket options.
fn sock_args(sock: &SockOpts) -> Vec<String> {
    let mut v = vec![format!("--nodelay={}", sock.nodelay), format!("--client-threads={}", sock.client_threads)];
    if let Some(b) = sock.rcvbuf {
        v.push(format!("--rcvbuf={b}"));
    }
    v
}

/// A client child process of this binary, talking in lines over stdin / stdout.
struct Clients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Clients {
    fn spawn(args: &[String]) -> Result<Self, Error> {
        let mut child =
            Command::new(std::env::current_exe()?).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    fn line(&mut self) -> Result<String, Error> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            return Err("client process ended early".into());
        }
        Ok(l.trim().to_owned())
    }

    fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        self.child.wait()?;
        Ok(())
    }
}

/// Reads one line from stdin (the parent's orders).
fn stdin_line() -> Result<String, Error> {
    let mut l = String::new();
    std::io::stdin().lock().read_line(&mut l)?;
    Ok(l.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------------------------
// C and D: writers push frames, clients read them.

/// One push step: what the writers and the clients measured.
#[derive(Debug, Default)]
struct PushStep {
    /// Per message: intended time → the last delivery, ms (infinite when a delivery is missing).
    last_ms: Vec<f64>,
    delivered: u64,
    expected: u64,
    writes: u64,
    server_cpu_ns: u64,
    client_cpu_ns: u64,
    reads: u64,
    empty_reads: u64,
    /// Deliveries per second from the first intended time to the last delivery.
    rate: f64,
}

/// What the client process reports at the end of a push step.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PushReport {
    last_ns: Vec<u64>,
    counts: Vec<u64>,
    cpu_ns: u64,
    reads: u64,
    empty_reads: u64,
}

/// What one writer thread did.
#[derive(Debug, Default)]
struct WriterReport {
    writes: u64,
    cpu_ns: u64,
}

/// Writes the messages of `schedule` to `conns`, `batch` frames per write (everything that is due and not yet
/// written, rounded down to whole batches, goes out in one write per socket).
fn writer(conns: Vec<TcpStream>, schedule: Schedule, batch: u64, frame: Arc<Vec<u8>>) -> WriterReport {
    let batch = batch.max(1);
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut any_pending = false;
    let mut sent = 0u64;
    let mut writes = 0u64;
    let mut buf = Vec::new();
    loop {
        let due = schedule.due_at(unix_nanos());
        let upto = if due == schedule.count { due } else { due - due % batch };
        if upto > sent || any_pending {
            let new = (upto - sent) as usize;
            buf.clear();
            for _ in 0..new {
                buf.extend_from_slice(&frame);
            }
            any_pending = false;
            for (c, p) in conns.iter().zip(pending.iter_mut()) {
                let data: &[u8] = if p.is_empty() {
                    &buf
                } else {
                    p.extend_from_slice(&buf);
                    &p[..]
                };
                if data.is_empty() {
                    continue;
                }
                writes += 1;
                let n = match (&*c).write(data) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(_) => data.len(),
                };
                if n < data.len() {
                    let rest = data[n..].to_vec();
                    *p = rest;
                    any_pending = true;
                } else {
                    p.clear();
                }
            }
            sent = upto;
            if any_pending {
                thread::sleep(Duration::from_micros(50));
            }
            continue;
        }
        if sent >= schedule.count {
            break;
        }
        let next = (sent + batch).min(schedule.count) - 1;
        let wait = schedule.intended_ns(next).saturating_sub(unix_nanos());
        thread::sleep(Duration::from_nanos(wait));
    }
    WriterReport { writes, cpu_ns: thread_cpu_ns() }
}

/// Runs one push step: `connections` clients, `schedule` messages, `batch` frames per write.
fn push_step(
    connections: usize,
    rate: f64,
    messages: u64,
    batch: u64,
    frame_bytes: usize,
    writers: usize,
    sock: &SockOpts,
) -> Result<PushStep, Error> {
    let listener = listen()?;
    let addr = listener.local_addr()?;
    let mut args = vec![
        "push-clients".to_owned(),
        format!("--addr={addr}"),
        format!("--connections={connections}"),
        format!("--messages={messages}"),
        format!("--frame-bytes={frame_bytes}"),
    ];
    args.extend(sock_args(sock));
    let mut clients = Clients::spawn(&args)?;
    let conns = accept_all(&listener, connections, sock)?;
    drop(listener);
    if clients.line()? != "ready" {
        return Err("client process not ready".into());
    }
    let start_ns = unix_nanos() + 300_000_000;
    let schedule = Schedule { start_ns, rate, count: messages, senders: 1 };
    let deadline_ns = schedule.end_ns() + 10_000_000_000;
    clients.send(&deadline_ns.to_string())?;
    let frame = Arc::new(ws_like_frame(frame_bytes));
    let per = connections.div_ceil(writers.max(1));
    let mut conns = conns;
    let mut handles = Vec::new();
    while !conns.is_empty() {
        let rest = conns.split_off(per.min(conns.len()));
        let mine = std::mem::replace(&mut conns, rest);
        let frame = Arc::clone(&frame);
        handles.push(thread::spawn(move || writer(mine, schedule, batch, frame)));
    }
    let mut w = WriterReport::default();
    for h in handles {
        let r = h.join().map_err(|_| "writer thread panicked")?;
        w.writes += r.writes;
        w.cpu_ns += r.cpu_ns;
    }
    let report: PushReport = serde_json::from_str(&clients.line()?)?;
    clients.finish()?;
    let mut step = PushStep {
        writes: w.writes,
        server_cpu_ns: w.cpu_ns,
        client_cpu_ns: report.cpu_ns,
        reads: report.reads,
        empty_reads: report.empty_reads,
        expected: messages * connections as u64,
        ..PushStep::default()
    };
    let mut last = 0;
    for m in 0..messages as usize {
        let count = report.counts.get(m).copied().unwrap_or(0);
        let at = report.last_ns.get(m).copied().unwrap_or(0);
        step.delivered += count;
        last = last.max(at);
        let ms = if count >= connections as u64 {
            at.saturating_sub(schedule.intended_ns(m as u64)) as f64 / 1e6
        } else {
            f64::INFINITY
        };
        step.last_ms.push(ms);
    }
    step.rate = step.delivered as f64 / (last.saturating_sub(start_ns).max(1) as f64 / 1e9);
    Ok(step)
}

/// A frame of `n` bytes shaped like a WebSocket text frame (the header is not parsed by anyone).
fn ws_like_frame(n: usize) -> Vec<u8> {
    let mut f = vec![b'x'; n.max(2)];
    f[0] = 0x81;
    f[1] = 126;
    f
}

/// The client process of `broadcast` / `fanout`: connects, reads with epoll, counts frames per socket.
fn push_clients(a: &PushClientArgs) -> Result<(), Error> {
    let threads = a.sock.client_threads.max(1);
    let mut polls = Vec::new();
    let mut socks: Vec<Vec<mio::net::TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for _ in 0..threads {
        polls.push(Poll::new()?);
    }
    for i in 0..a.connections {
        let t = i % threads;
        let mut s = connect(a.addr, i, &a.sock)?;
        polls[t].registry().register(&mut s, Token(socks[t].len()), Interest::READABLE)?;
        socks[t].push(s);
    }
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let mut handles = Vec::new();
    for (poll, conns) in polls.into_iter().zip(socks) {
        let deadline = Arc::clone(&deadline);
        let (messages, frame) = (a.messages, a.frame_bytes as u64);
        handles.push(thread::spawn(move || push_reader(poll, conns, messages, frame, &deadline)));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let d: u64 = stdin_line()?.parse()?;
    deadline.store(d, Ordering::Relaxed);
    let mut total = PushReport {
        last_ns: vec![0; a.messages as usize],
        counts: vec![0; a.messages as usize],
        ..PushReport::default()
    };
    for h in handles {
        let r = h.join().map_err(|_| "reader thread panicked")??;
        for m in 0..a.messages as usize {
            total.last_ns[m] = total.last_ns[m].max(r.last_ns[m]);
            total.counts[m] += r.counts[m];
        }
        total.cpu_ns += r.cpu_ns;
        total.reads += r.reads;
        total.empty_reads += r.empty_reads;
    }
    println!("{}", serde_json::to_string(&total)?);
    Ok(())
}

/// One reader thread of the push clients. A read shorter than the buffer drained the socket, so it does not
/// read again until the next edge (no `EAGAIN` read per wake-up).
fn push_reader(
    mut poll: Poll,
    conns: Vec<mio::net::TcpStream>,
    messages: u64,
    frame: u64,
    deadline: &AtomicU64,
) -> Result<PushReport, Error> {
    let mut received = vec![0u64; conns.len()];
    let mut r =
        PushReport { last_ns: vec![0; messages as usize], counts: vec![0; messages as usize], ..Default::default() };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let expected = messages * frame * conns.len() as u64;
    let mut total = 0u64;
    while total < expected && unix_nanos() < deadline.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in &events {
            let i = ev.token().0;
            let Some(mut c) = conns.get(i) else { continue };
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        r.reads += 1;
                        let now = unix_nanos();
                        let before = received[i] / frame;
                        received[i] += n as u64;
                        total += n as u64;
                        let after = (received[i] / frame).min(messages);
                        for m in before..after {
                            let m = m as usize;
                            r.last_ns[m] = r.last_ns[m].max(now);
                            r.counts[m] += 1;
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        r.empty_reads += 1;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    r.cpu_ns = thread_cpu_ns();
    Ok(r)
}

fn push_line(name: &str, s: &PushStep, k: Option<u64>) -> String {
    let mut lm = s.last_ms.clone();
    let p50 = percentile(&mut lm, 50.0);
    let p99 = percentile(&mut lm, 99.0);
    let max = lm.last().copied().unwrap_or(0.0);
    let d = s.delivered.max(1) as f64;
    let batch = k.map(|k| format!(" k={k}")).unwrap_or_default();
    format!(
        "{name}{batch}: delivered {}/{} | last delivery p50 {p50:.1} p99 {p99:.1} max {max:.1} ms | {:.0} deliveries/s | frames per write {:.2}, per read {:.2} ({} empty reads) | CPU per delivery: server {:.2} µs, clients {:.2} µs, total {:.2} µs | per write {:.2} µs, per read {:.2} µs | load {}",
        s.delivered,
        s.expected,
        s.rate,
        d / s.writes.max(1) as f64,
        d / s.reads.max(1) as f64,
        s.empty_reads,
        s.server_cpu_ns as f64 / d / 1e3,
        s.client_cpu_ns as f64 / d / 1e3,
        (s.server_cpu_ns + s.client_cpu_ns) as f64 / d / 1e3,
        s.server_cpu_ns as f64 / s.writes.max(1) as f64 / 1e3,
        s.client_cpu_ns as f64 / s.reads.max(1) as f64 / 1e3,
        load_average(),
    )
}

fn push_summary(name: &str, steps: &[PushStep]) {
    let col = |f: &dyn Fn(&PushStep) -> f64| steps.iter().map(f).collect::<Vec<f64>>();
    let p50 = col(&|s| percentile(&mut s.last_ms.clone(), 50.0));
    let p99 = col(&|s| percentile(&mut s.last_ms.clone(), 99.0));
    let rate = col(&|s| s.rate);
    let cpu = col(&|s| (s.server_cpu_ns + s.client_cpu_ns) as f64 / s.delivered.max(1) as f64 / 1e3);
    let fpw = col(&|s| s.delivered as f64 / s.writes.max(1) as f64);
    println!(
        "{name} — median (range) of {} runs: last delivery p50 {} ms, p99 {} ms | {} deliveries/s | CPU per delivery {} µs | frames per write {}",
        steps.len(),
        spread(&p50, 1),
        spread(&p99, 1),
        spread(&rate, 0),
        spread(&cpu, 2),
        spread(&fpw, 2),
    );
}

fn broadcast(a: &BroadcastArgs) -> Result<(), Error> {
    let rate = 1_000.0 / a.interval_ms.max(1) as f64;
    let mut steps = Vec::new();
    for r in 1..=a.runs {
        let s = push_step(a.connections, rate, a.messages, 1, a.frame_bytes, a.writers, &a.sock)?;
        println!("{}", push_line(&format!("D-floor run {r}: {} connections", a.connections), &s, None));
        steps.push(s);
    }
    push_summary(
        &format!("D-floor: {} connections, {} writers, {} B frames", a.connections, a.writers, a.frame_bytes),
        &steps,
    );
    Ok(())
}

fn fanout(a: &FanoutArgs) -> Result<(), Error> {
    let messages = ((a.rate * a.secs) as u64).max(1);
    let mut all: Vec<(u64, Vec<PushStep>)> = a.batch.iter().map(|&k| (k, Vec::new())).collect();
    // Runs outermost, so that the batch sizes alternate under the same load.
    for r in 1..=a.runs {
        for (k, steps) in &mut all {
            let s = push_step(a.members, a.rate, messages, *k, a.frame_bytes, a.writers, &a.sock)?;
            println!(
                "{}",
                push_line(&format!("C-floor run {r}: {} members at {} msg/s", a.members, a.rate), &s, Some(*k))
            );
            steps.push(s);
        }
    }
    for (k, steps) in &all {
        push_summary(&format!("C-floor k={k}: {} members at {} msg/s", a.members, a.rate), steps);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// B: sender → relay → receiver.

/// What the relay clients report.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RelayReport {
    delivered: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    cpu_ns: u64,
    reads: u64,
}

/// One relay thread: copies every sender's bytes to its receiver and answers each whole frame with an ack.
/// `conns` holds (sender, receiver) per pair.
fn relay_thread(
    mut poll: Poll,
    conns: Vec<(TcpStream, TcpStream)>,
    frame: usize,
    ack: usize,
    stop: &AtomicBool,
) -> Result<(u64, u64), Error> {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let acks = vec![b'a'; ack * 64];
    let mut received = vec![0usize; conns.len()];
    let mut out_pending: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut ack_pending: Vec<usize> = vec![0; conns.len()];
    let mut writes = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let any = out_pending.iter().any(|p| !p.is_empty()) || ack_pending.iter().any(|&n| n > 0);
        let timeout = if any { Duration::from_millis(1) } else { Duration::from_millis(50) };
        poll.poll(&mut events, Some(timeout))?;
        let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        let mut work: Vec<usize> = ready;
        if any {
            work.extend((0..conns.len()).filter(|&i| !out_pending[i].is_empty() || ack_pending[i] > 0));
        }
        for i in work {
            let Some((mut snd, mut rcv)) = conns.get(i).map(|(s, r)| (s, r)) else { continue };
            loop {
                let n = match snd.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                let frames = (received[i] + n) / frame - received[i] / frame;
                received[i] += n;
                out_pending[i].extend_from_slice(&buf[..n]);
                ack_pending[i] += frames * ack;
                if n < buf.len() {
                    break;
                }
            }
            if !out_pending[i].is_empty() {
                writes += 1;
                match rcv.write(&out_pending[i]) {
                    Ok(n) => {
                        out_pending[i].drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            while ack_pending[i] > 0 {
                let n = ack_pending[i].min(acks.len());
                writes += 1;
                match snd.write(&acks[..n]) {
                    Ok(w) => ack_pending[i] -= w,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok((writes, thread_cpu_ns()))
}

fn relay_step(a: &RelayArgs) -> Result<(RelayReport, u64, u64), Error> {
    let listener = listen()?;
    let addr = listener.local_addr()?;
    let messages = ((a.rate * a.secs) as u64).max(1);
    let mut args = vec![
        "relay-clients".to_owned(),
        format!("--addr={addr}"),
        format!("--pairs={}", a.pairs),
        format!("--rate={}", a.rate),
        format!("--messages={messages}"),
        format!("--frame-bytes={}", a.frame_bytes),
    ];
    args.extend(sock_args(&a.sock));
    let mut clients = Clients::spawn(&args)?;
    // Each client connection starts with 4 bytes: its number (2 × pair + 0 for the sender, + 1 for the receiver).
    let mut slots: Vec<(Option<TcpStream>, Option<TcpStream>)> = (0..a.pairs).map(|_| (None, None)).collect();
    for mut s in accept_all(&listener, 2 * a.pairs, &a.sock)? {
        let mut id = [0u8; 4];
        s.read_exact(&mut id)?;
        let id = u32::from_le_bytes(id) as usize;
        let slot = slots.get_mut(id / 2).ok_or("bad connection id")?;
        s.set_nonblocking(true)?;
        if id.is_multiple_of(2) { slot.0 = Some(s) } else { slot.1 = Some(s) }
    }
    let relays = a.relays.max(1);
    let polls: Vec<Poll> = (0..relays).map(|_| Poll::new()).collect::<Result<_, _>>()?;
    let mut parts: Vec<Vec<(TcpStream, TcpStream)>> = (0..relays).map(|_| Vec::new()).collect();
    for (p, slot) in slots.into_iter().enumerate() {
        let (Some(snd), Some(rcv)) = slot else { return Err("a pair is missing a connection".into()) };
        let t = p % relays;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&snd);
        polls[t].registry().register(&mut mio::unix::SourceFd(&fd), Token(parts[t].len()), Interest::READABLE)?;
        parts[t].push((snd, rcv));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (poll, conns) in polls.into_iter().zip(parts) {
        let stop = Arc::clone(&stop);
        let (frame, ack) = (a.frame_bytes, a.ack_bytes);
        handles.push(thread::spawn(move || relay_thread(poll, conns, frame, ack, &stop)));
    }
    if clients.line()? != "ready" {
        return Err("client process not ready".into());
    }
    let start_ns = unix_nanos() + 300_000_000;
    clients.send(&start_ns.to_string())?;
    let report: RelayReport = serde_json::from_str(&clients.line()?)?;
    stop.store(true, Ordering::Relaxed);
    let (mut writes, mut cpu) = (0, 0);
    for h in handles {
        let (w, c) = h.join().map_err(|_| "relay thread panicked")??;
        writes += w;
        cpu += c;
    }
    clients.finish()?;
    Ok((report, writes, cpu))
}

fn relay(a: &RelayArgs) -> Result<(), Error> {
    let messages = ((a.rate * a.secs) as u64).max(1);
    let mut rows = Vec::new();
    for r in 1..=a.runs {
        let (rep, writes, cpu) = relay_step(a)?;
        let d = rep.delivered.max(1) as f64;
        println!(
            "B-floor run {r}: {} pairs at {} msg/s: delivered {}/{messages} | latency p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms | CPU per message: relay {:.2} µs ({:.2} writes), clients {:.2} µs ({:.2} reads) | load {}",
            a.pairs,
            a.rate,
            rep.delivered,
            rep.p50_us as f64 / 1e3,
            rep.p99_us as f64 / 1e3,
            rep.p999_us as f64 / 1e3,
            rep.max_us as f64 / 1e3,
            cpu as f64 / d / 1e3,
            writes as f64 / d,
            rep.cpu_ns as f64 / d / 1e3,
            rep.reads as f64 / d,
            load_average(),
        );
        rows.push((rep, cpu));
    }
    let p50: Vec<f64> = rows.iter().map(|(r, _)| r.p50_us as f64 / 1e3).collect();
    let p99: Vec<f64> = rows.iter().map(|(r, _)| r.p99_us as f64 / 1e3).collect();
    let cpu: Vec<f64> = rows.iter().map(|(r, c)| (r.cpu_ns + c) as f64 / r.delivered.max(1) as f64 / 1e3).collect();
    println!(
        "B-floor: {} pairs at {} msg/s — median (range) of {} runs: p50 {} ms, p99 {} ms | CPU per message {} µs",
        a.pairs,
        a.rate,
        rows.len(),
        spread(&p50, 3),
        spread(&p99, 3),
        spread(&cpu, 2)
    );
    Ok(())
}

/// Per-connection frame reassembly of the relay's receivers: where in the current frame we are and the
/// intended-time stamp (bytes 2..10 of a frame) gathered so far.
#[derive(Debug, Default, Clone, Copy)]
struct FrameScan {
    pos: usize,
    stamp: [u8; 8],
}

impl FrameScan {
    /// Feeds `data`; calls `done(stamp)` for every frame it completes.
    fn feed(&mut self, data: &[u8], frame: usize, mut done: impl FnMut(u64)) {
        let mut i = 0;
        while i < data.len() {
            let take = (frame - self.pos).min(data.len() - i);
            let (lo, hi) = (self.pos.max(2), (self.pos + take).min(10));
            if lo < hi {
                self.stamp[lo - 2..hi - 2].copy_from_slice(&data[i + lo - self.pos..i + hi - self.pos]);
            }
            self.pos += take;
            i += take;
            if self.pos == frame {
                done(u64::from_le_bytes(self.stamp));
                self.pos = 0;
            }
        }
    }
}

/// The clients of `relay`: one pacer thread writes each message at its intended time to its pair's sender
/// socket; reader threads (epoll) read the receivers (latency) and the senders' acks (discarded).
fn relay_clients(a: &RelayClientArgs) -> Result<(), Error> {
    let threads = a.sock.client_threads.max(1);
    let frame = a.frame_bytes.max(10);
    let polls: Vec<Poll> = (0..threads).map(|_| Poll::new()).collect::<Result<_, _>>()?;
    let mut senders = Vec::with_capacity(a.pairs);
    let mut receivers: Vec<Vec<mio::net::TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for p in 0..a.pairs {
        let t = p % threads;
        for role in 0..2u32 {
            let mut s = connect(a.addr, 2 * p + role as usize, &a.sock)?;
            let id = (2 * p as u32 + role).to_le_bytes();
            (&s).write_all(&id)?;
            if role == 0 {
                // Token: even = a sender (ack reads), odd = a receiver, both by index within the thread.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                polls[t].registry().register(
                    &mut mio::unix::SourceFd(&fd),
                    Token(2 * senders.len()),
                    Interest::READABLE,
                )?;
                senders.push(s);
            } else {
                let idx = receivers[t].len();
                polls[t].registry().register(&mut s, Token(2 * idx + 1), Interest::READABLE)?;
                receivers[t].push(s);
            }
        }
    }
    let senders = Arc::new(senders);
    let start = Arc::new(AtomicU64::new(u64::MAX));
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let mut handles = Vec::new();
    for (t, (poll, rcv)) in polls.into_iter().zip(receivers).enumerate() {
        let senders = Arc::clone(&senders);
        let deadline = Arc::clone(&deadline);
        let expected = (0..a.pairs as u64)
            .filter(|p| *p as usize % threads == t)
            .map(|p| Schedule { start_ns: 0, rate: a.rate, count: a.messages, senders: a.pairs as u64 }.count_of(p));
        let expected: u64 = expected.sum();
        handles.push(thread::spawn(move || relay_reader(poll, &senders, rcv, frame, expected, &deadline)));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let start_ns: u64 = stdin_line()?.parse()?;
    start.store(start_ns, Ordering::Relaxed);
    let schedule = Schedule { start_ns, rate: a.rate, count: a.messages, senders: a.pairs as u64 };
    deadline.store(schedule.end_ns() + 10_000_000_000, Ordering::Relaxed);
    let pacer_cpu = pace(&schedule, &senders, frame)?;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut rep = RelayReport { cpu_ns: pacer_cpu, ..RelayReport::default() };
    for handle in handles {
        let (part, cpu, reads) = handle.join().map_err(|_| "reader thread panicked")??;
        h.add(&part)?;
        rep.cpu_ns += cpu;
        rep.reads += reads;
    }
    rep.delivered = h.len();
    rep.p50_us = h.value_at_quantile(0.5);
    rep.p99_us = h.value_at_quantile(0.99);
    rep.p999_us = h.value_at_quantile(0.999);
    rep.max_us = h.max();
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

/// Sends every message of `schedule` at its intended time (sleeping while none is due) to its pair's sender.
fn pace(schedule: &Schedule, senders: &[mio::net::TcpStream], frame: usize) -> Result<u64, Error> {
    let mut buf = ws_like_frame(frame);
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); senders.len()];
    let mut g = 0;
    while g < schedule.count || pending.iter().any(|p| !p.is_empty()) {
        let due = schedule.due_at(unix_nanos());
        if g >= due && pending.iter().all(|p| p.is_empty()) {
            let wait = schedule.intended_ns(g).saturating_sub(unix_nanos());
            thread::sleep(Duration::from_nanos(wait));
            continue;
        }
        while g < due {
            let (p, _) = schedule.sender_of(g);
            let p = p as usize;
            buf[2..10].copy_from_slice(&schedule.intended_ns(g).to_le_bytes());
            pending[p].extend_from_slice(&buf);
            g += 1;
        }
        for (mut s, p) in senders.iter().zip(pending.iter_mut()) {
            if p.is_empty() {
                continue;
            }
            match s.write(p) {
                Ok(n) => {
                    p.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(thread_cpu_ns())
}

/// One reader thread of the relay clients: latency per received frame; acks are read and dropped.
fn relay_reader(
    mut poll: Poll,
    senders: &[mio::net::TcpStream],
    receivers: Vec<mio::net::TcpStream>,
    frame: usize,
    expected: u64,
    deadline: &AtomicU64,
) -> Result<(hdrhistogram::Histogram<u64>, u64, u64), Error> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut scans = vec![FrameScan::default(); receivers.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    while h.len() < expected && unix_nanos() < deadline.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in &events {
            let t = ev.token().0;
            let idx = t / 2;
            // Even tokens are senders by pair number (acks), odd ones this thread's receivers by index.
            let sock = if t.is_multiple_of(2) { senders.get(idx) } else { receivers.get(idx) };
            let Some(mut s) = sock else { continue };
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        reads += 1;
                        if t % 2 == 1 {
                            let now = unix_nanos();
                            scans[idx].feed(&buf[..n], frame, |stamp| {
                                let _ = h.record(now.saturating_sub(stamp).div_ceil(1_000).max(1));
                            });
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok((h, thread_cpu_ns(), reads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_scan_reassembles_stamps_across_reads() {
        let frame = 16;
        let mut bytes = Vec::new();
        for stamp in [7u64, 1_000_000_007] {
            let mut f = ws_like_frame(frame);
            f[2..10].copy_from_slice(&stamp.to_le_bytes());
            bytes.extend_from_slice(&f);
        }
        for cut in 0..bytes.len() {
            let mut scan = FrameScan::default();
            let mut got = Vec::new();
            scan.feed(&bytes[..cut], frame, |s| got.push(s));
            scan.feed(&bytes[cut..], frame, |s| got.push(s));
            assert_eq!(got, vec![7, 1_000_000_007], "cut at {cut}");
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 10.0);
        assert_eq!(percentile(&mut v, 99.0), 20.0);
        assert_eq!(percentile(&mut [], 99.0), 0.0);
    }
}
