//! Worker processes: `herald-load worker` reads one [`Job`] (a JSON line) on stdin, sets it up (opens its
//! connections), prints [`Reply::Ready`], then runs each [`Order::Run`] it is given and prints a
//! [`Reply::Done`] report, until [`Order::Stop`]. Everything it prints on stdout is one JSON line per reply;
//! diagnostics go to stderr.
//!
//! A job targets Herald, Mosquitto (MQTT) or a Socket.IO server: the same load shapes for each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald::core::testkit::protocol::TestTokens;
use herald_bench::hist::{self, Sharded};
use herald_bench::net::{self, Error, Ws};
use herald_bench::scan;
use herald_bench::schedule::{Pacer, Schedule, unix_nanos};
use herald_bench::sio::{self, Packet};
use herald_bench::user_name;

use crate::TransportKind;
use crate::link::{Clients, Link};
use crate::rawsend::{RawSender, RawSenders};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// The server a job talks to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Target {
    /// Herald's WebSocket transport (`/ws?token=…`).
    Herald { addr: SocketAddr },
    /// Herald over another transport (`cert`: the QUIC server certificate's SHA-256, pinned by the clients).
    HeraldVia { via: TransportKind, addr: SocketAddr, cert: [u8; 32] },
    /// An MQTT 3.1.1 broker (QoS 0).
    Mqtt { addr: SocketAddr },
    /// A Socket.IO server (`bench/peers/socketio/server.js`).
    Socketio { addr: SocketAddr },
}

impl Target {
    /// Whether the server is Herald (over any transport).
    pub(crate) fn is_herald(&self) -> bool {
        matches!(self, Target::Herald { .. } | Target::HeraldVia { .. })
    }
}

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "lowercase")]
pub(crate) enum Job {
    /// Open `count` connections as users `first..first+count`, each subscribed to `subscribe` (Herald: a
    /// channel id, or `user` for the user's own channel; MQTT: a topic; Socket.IO: a room), and record every
    /// marked delivery (per-message table for message indices below `track`).
    Connect {
        target: Target,
        first: usize,
        count: usize,
        concurrency: usize,
        subscribe: Option<String>,
        ping_bytes: usize,
        track: usize,
    },
    /// `count` sender → receiver pairs: pair `j` is user `first + 2j` sending to user `first + 2j + 1`.
    Pairs { target: Target, first: usize, count: usize, concurrency: usize, body_bytes: usize },
    /// One publisher, user `first`, sending to `channel` (Herald channel, MQTT topic, Socket.IO room).
    Publish { target: Target, first: usize, channel: String, body_bytes: usize },
}

/// An order to a set-up worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "lowercase")]
pub(crate) enum Order {
    /// One step. Senders (pairs, publishers) send `messages` messages at `rate` per second (this worker's
    /// share), the first intended at `start_ns`, indices from `first_n`. Receivers count deliveries of
    /// indices `first_n..first_n + messages` (for `Connect`: `messages` each) until all arrived or `deadline_ns`.
    Run { start_ns: u64, rate: f64, messages: u64, first_n: u64, deadline_ns: u64 },
    /// Close every connection and exit.
    Stop,
}

/// The set-up report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// Connections open (and subscribed).
    pub(crate) connected: usize,
    /// Connections that failed.
    pub(crate) failed: usize,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// When the first connection attempt started (Unix ns).
    pub(crate) start_ns: u64,
    /// When the last connection was ready (Unix ns).
    pub(crate) end_ns: u64,
    /// When the last `hello` (or handshake end, for peers) arrived, before subscribing (Unix ns).
    pub(crate) hello_end_ns: u64,
}

impl Ready {
    /// Adds another worker's report.
    pub(crate) fn merge(&mut self, o: &Ready) {
        if self.connected + self.failed == 0 {
            *self = o.clone();
            return;
        }
        self.connected += o.connected;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.start_ns = self.start_ns.min(o.start_ns);
        self.end_ns = self.end_ns.max(o.end_ns);
        self.hello_end_ns = self.hello_end_ns.max(o.hello_end_ns);
    }
}

/// A step's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StepReport {
    /// Messages sent.
    pub(crate) sent: u64,
    /// Sends the server refused (an error reply) or that failed on the socket.
    pub(crate) send_errors: u64,
    /// Marked deliveries received in this step.
    pub(crate) delivered: u64,
    /// Connections the server closed so far.
    pub(crate) dropped: usize,
    /// Delivery latency (intended send time → received), base64 V2 HDR histogram in µs.
    pub(crate) hist: String,
    /// Per tracked message of the step: when its last delivery here arrived (Unix ns, 0: none).
    pub(crate) last_ns: Vec<u64>,
    /// Per tracked message of the step: deliveries here.
    pub(crate) counts: Vec<u32>,
    /// The latest delivery of the step (Unix ns, 0: none).
    pub(crate) last_recv_ns: u64,
    /// Herald `resync` events received so far (a subscription dropped as a slow consumer).
    pub(crate) resyncs: u64,
    /// Deliveries that arrived after their step had ended (not counted in `delivered`), so far.
    pub(crate) stale: u64,
}

/// What a worker prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", content = "data", rename_all = "lowercase")]
pub(crate) enum Reply {
    /// Set-up done.
    Ready(Ready),
    /// A step done.
    Done(StepReport),
    /// The job failed.
    Failed(String),
}

fn print(reply: &Reply) {
    // One line per reply; the coordinator reads stdout line by line.
    println!(
        "{}",
        serde_json::to_string(reply).unwrap_or_else(|e| format!("{{\"reply\":\"failed\",\"data\":\"{e}\"}}"))
    );
}

/// The worker's main: reads the job, runs it, answers orders.
pub(crate) async fn main() -> Result<(), Error> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let line = lines.next_line().await?.ok_or("no job on stdin")?;
    let job: Job = serde_json::from_str(&line)?;
    let (orders_tx, orders) = mpsc::channel::<Order>(16);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Order>(&line) {
                Ok(o) => {
                    if orders_tx.send(o).await.is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("worker: ignoring a bad order {line:.100}: {e}"),
            }
        }
        // Stdin closed: the coordinator is gone; stop.
        let _ = orders_tx.send(Order::Stop).await;
    });
    let result = match job {
        Job::Connect { target, first, count, concurrency, subscribe, ping_bytes, track } => {
            let spec = ConnectSpec { target, first, count, concurrency, subscribe, ping_bytes, track };
            connect_job(spec, orders).await
        }
        Job::Pairs { target, first, count, concurrency, body_bytes } => {
            pairs_job(target, first, count, concurrency, body_bytes, orders).await
        }
        Job::Publish { target, first, channel, body_bytes } => {
            publish_job(target, first, channel, body_bytes, orders).await
        }
    };
    if let Err(e) = &result {
        print(&Reply::Failed(e.to_string()));
    }
    result
}

// ----- recording deliveries ------------------------------------------------------------------------------------

/// Delivery records shared by every receiving connection of a worker.
struct Tracker {
    last: Box<[AtomicU64]>,
    counts: Box<[AtomicU32]>,
    delivered: AtomicU64,
    last_recv: AtomicU64,
    dropped: AtomicUsize,
    resyncs: AtomicU64,
    /// The current step's message indices: `lo..hi`. Deliveries of other indices (late ones of an earlier
    /// step) are only counted in `stale`.
    lo: AtomicU64,
    hi: AtomicU64,
    stale: AtomicU64,
    hist: Sharded,
}

impl Tracker {
    fn new(track: usize) -> Self {
        Self {
            last: (0..track).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..track).map(|_| AtomicU32::new(0)).collect(),
            delivered: AtomicU64::new(0),
            last_recv: AtomicU64::new(0),
            dropped: AtomicUsize::new(0),
            resyncs: AtomicU64::new(0),
            lo: AtomicU64::new(0),
            hi: AtomicU64::new(u64::MAX),
            stale: AtomicU64::new(0),
            hist: Sharded::new(16),
        }
    }

    /// Records a frame if it carries a bench body.
    fn on_frame(&self, conn: usize, frame: &[u8]) {
        self.on_frame_at(conn, frame, unix_nanos);
    }

    /// Records a frame received at `now()` (read once per socket read by the caller: the frames of one read
    /// arrived together).
    fn on_frame_at(&self, conn: usize, frame: &[u8], now: impl FnOnce() -> u64) {
        let Some((n, t)) = scan::marks(frame) else {
            if scan::find(frame, b"\"type\":\"resync\"").is_some() {
                self.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if n < self.lo.load(Ordering::Relaxed) || n >= self.hi.load(Ordering::Relaxed) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now();
        self.hist.record(conn, now.saturating_sub(t));
        if let (Some(l), Some(c)) = (self.last.get(n as usize), self.counts.get(n as usize)) {
            l.fetch_max(now, Ordering::Relaxed);
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_recv.fetch_max(now, Ordering::Relaxed);
    }

    /// Starts a step of messages `first_n..first_n + messages`: forgets the latency values recorded so far,
    /// returns the delivery count to count from.
    fn begin(&self, first_n: u64, messages: u64) -> u64 {
        self.lo.store(first_n, Ordering::Relaxed);
        self.hi.store(first_n.saturating_add(messages), Ordering::Relaxed);
        let _ = self.hist.take();
        self.last_recv.store(0, Ordering::Relaxed);
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits until `expected` deliveries arrived since `base` or the deadline passed.
    async fn wait(&self, base: u64, expected: u64, deadline_ns: u64) {
        while self.delivered.load(Ordering::Relaxed) - base < expected && unix_nanos() < deadline_ns {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn report(&self, base: u64, first_n: u64, messages: u64) -> StepReport {
        let range = |len: usize| {
            let from = (first_n as usize).min(len);
            from..(first_n.saturating_add(messages) as usize).min(len)
        };
        StepReport {
            delivered: self.delivered.load(Ordering::Relaxed) - base,
            dropped: self.dropped.load(Ordering::Relaxed),
            hist: hist::encode(&self.hist.take()),
            last_ns: self.last[range(self.last.len())].iter().map(|a| a.load(Ordering::Relaxed)).collect(),
            counts: self.counts[range(self.counts.len())].iter().map(|a| a.load(Ordering::Relaxed)).collect(),
            last_recv_ns: self.last_recv.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            ..StepReport::default()
        }
    }
}

// ----- opening connections -------------------------------------------------------------------------------------

/// An open connection of any target.
// Each lives in its own task once open; boxing the WebSocket would add an allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Ws(Ws),
    Mqtt(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    /// Herald over QUIC, WebTransport, long-poll or SSE.
    Link(Link),
}

/// Times of one connection's set-up.
struct Opened {
    conn: Conn,
    hello_ns: u64,
}

async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                return Ok(t.as_str().to_owned());
            }
        }
        Err::<_, Error>("connection closed".into())
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.map_err(|_| "no answer within 30 s")?
}

/// Reads Herald frames until one satisfies `want` (an `error` event fails), 30 s at most each.
async fn herald_expect(link: &mut Link, want: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value, Error> {
    loop {
        let text =
            tokio::time::timeout(Duration::from_secs(30), link.recv()).await.map_err(|_| "no answer within 30 s")??;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if want(&v) {
            return Ok(v);
        }
        if v["type"] == "error" {
            return Err(format!("server error: {v}").into());
        }
    }
}

/// Opens Herald connection `i` as `user` (WebSocket at `Target::Herald`, else over its transport), waits for
/// `hello`, subscribes to `sub` and sends a padded ping.
async fn open_herald(
    target: Target,
    clients: &Clients,
    i: usize,
    user: &str,
    token: &str,
    sub: Option<&str>,
    ping_bytes: usize,
) -> Result<Opened, Error> {
    let mut link = match target {
        Target::HeraldVia { via, addr, .. } => Link::open(via, addr, clients, token).await?,
        Target::Herald { addr } => Link::Ws(Box::new(net::websocket(addr, &format!("/ws?token={token}"), i).await?)),
        _ => return Err("not a Herald target".into()),
    };
    herald_expect(&mut link, |v| v["type"] == "hello").await?;
    let hello_ns = unix_nanos();
    if let Some(channel) = sub {
        let channel = if channel == "user" { format!("user:{user}") } else { channel.to_owned() };
        let cmd = serde_json::json!({"type": "sub", "id": 1, "channel": channel}).to_string();
        link.send(cmd).await?;
        let reply = herald_expect(&mut link, |v| v["id"] == 1).await?;
        if reply["type"] != "reply" {
            return Err(format!("sub {channel} refused: {reply}").into());
        }
    }
    if ping_bytes > 0 {
        // Unknown fields are ignored by the server: the padding only fills the frame.
        let bare = serde_json::json!({"type": "ping", "id": 2, "pad": ""}).to_string();
        let pad = "x".repeat(ping_bytes.saturating_sub(bare.len()));
        link.send(serde_json::json!({"type": "ping", "id": 2, "pad": pad}).to_string()).await?;
        herald_expect(&mut link, |v| v["id"] == 2).await?;
    }
    let conn = match link {
        Link::Ws(ws) => Conn::Ws(*ws),
        other => Conn::Link(other),
    };
    Ok(Opened { conn, hello_ns })
}

/// Opens Socket.IO connection `i` as `user` (the server puts it in a room named after the user), then joins
/// `room` (acknowledged).
async fn open_socketio(addr: SocketAddr, i: usize, user: &str, room: Option<&str>) -> Result<Opened, Error> {
    let mut ws = net::websocket(addr, sio::WS_PATH, i).await?;
    let open = next_text(&mut ws).await?;
    if !matches!(sio::parse(&open), Ok(Packet::Open(_))) {
        return Err(format!("expected an Engine.IO open packet, got {open:.100}").into());
    }
    ws.send(Message::text(sio::connect(Some(&format!("{{\"user\":\"{user}\"}}"))))).await?;
    loop {
        let text = next_text(&mut ws).await?;
        match sio::parse(&text) {
            Ok(Packet::Connect { .. }) => break,
            Ok(Packet::ConnectError { data, .. }) => return Err(format!("Socket.IO connect refused: {data}").into()),
            Ok(Packet::Ping(d)) => ws.send(Message::text(sio::pong(d))).await?,
            _ => {}
        }
    }
    let hello_ns = unix_nanos();
    if let Some(room) = room {
        ws.send(Message::text(format!("421[\"join\",\"{room}\"]"))).await?;
        loop {
            let text = next_text(&mut ws).await?;
            match sio::parse(&text) {
                Ok(Packet::Ack { ack: 1, .. }) => break,
                Ok(Packet::Ping(d)) => ws.send(Message::text(sio::pong(d))).await?,
                _ => {}
            }
        }
    }
    Ok(Opened { conn: Conn::Ws(ws), hello_ns })
}

/// Opens MQTT connection `i` (client id `hb-<user>`), subscribed to `topic` at QoS 0.
async fn open_mqtt(addr: SocketAddr, user: &str, topic: Option<&str>) -> Result<Opened, Error> {
    let mut opts =
        rumqttc::MqttOptions::new(format!("hb-{user}-{}", std::process::id()), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(600)).set_clean_session(true).set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let setup = async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = events.poll().await? {
                break;
            }
        }
        let hello_ns = unix_nanos();
        if let Some(t) = topic {
            client.subscribe(t, rumqttc::QoS::AtMostOnce).await?;
            loop {
                if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = events.poll().await? {
                    break;
                }
            }
        }
        Ok::<_, Error>(hello_ns)
    };
    let hello_ns =
        tokio::time::timeout(Duration::from_secs(30), setup).await.map_err(|_| "MQTT connect timed out")??;
    Ok(Opened { conn: Conn::Mqtt(client, Box::new(events)), hello_ns })
}

async fn open(
    target: Target,
    clients: &Clients,
    i: usize,
    user: &str,
    token: &str,
    sub: Option<&str>,
    ping: usize,
) -> Result<Opened, Error> {
    match target {
        Target::Herald { .. } | Target::HeraldVia { .. } => {
            open_herald(target, clients, i, user, token, sub, ping).await
        }
        Target::Socketio { addr } => open_socketio(addr, i, user, sub).await,
        Target::Mqtt { addr } => open_mqtt(addr, user, sub).await,
    }
}

/// Keeps a connection open, recording marked deliveries, until told to stop.
async fn hold(conn: Conn, i: usize, tracker: Arc<Tracker>, mut stop: watch::Receiver<bool>, sio_mode: bool) {
    match conn {
        // Herald over WebSocket: the cheap reader (headers only, no per-frame allocation).
        Conn::Ws(ws) if !sio_mode => hold_raw(ws.into_inner(), i, tracker, stop).await,
        Conn::Ws(mut ws) => loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if sio_mode && t.as_str() == "2" {
                            let _ = ws.send(Message::text(sio::pong(""))).await;
                        } else {
                            tracker.on_frame(i, t.as_bytes());
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        if !*stop.borrow() {
                            tracker.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    Some(Ok(_)) => {}
                },
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                    return;
                }
            }
        },
        Conn::Link(mut link) => loop {
            tokio::select! {
                r = link.recv() => match r {
                    Ok(text) => tracker.on_frame(i, text.as_bytes()),
                    Err(_) => {
                        if !*stop.borrow() {
                            tracker.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                },
                _ = stop.changed() => {
                    link.close().await;
                    return;
                }
            }
        },
        Conn::Mqtt(client, mut events) => loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => tracker.on_frame(i, &p.payload),
                    Ok(_) => {}
                    Err(_) => {
                        if !*stop.borrow() {
                            tracker.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                },
                _ = stop.changed() => {
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
                    return;
                }
            }
        },
    }
}

thread_local! {
    /// The read buffer of every receiving connection polled on this thread: a read takes whatever the socket
    /// holds (up to 64 KiB, dozens of coalesced frames), and only an unfinished frame is kept per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// What a raw receiving connection saw in one poll.
enum RawEvent {
    /// The peer closed or failed.
    Closed,
    /// A ping to answer.
    Ping(Vec<u8>),
}

/// Receives on a WebSocket whose handshake is done, parsing frame headers only (the server sends nothing
/// before the step starts, so tungstenite's read buffer is empty when the stream is taken out of it). The
/// frames of one read share one clock read.
async fn hold_raw(mut tcp: tokio::net::TcpStream, i: usize, tracker: Arc<Tracker>, mut stop: watch::Receiver<bool>) {
    use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
    let mut reader = herald_bench::wsread::FrameReader::new();
    loop {
        let next = std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|buf| {
                loop {
                    let mut rb = ReadBuf::new(buf);
                    match std::pin::Pin::new(&mut tcp).poll_read(cx, &mut rb) {
                        std::task::Poll::Pending => return std::task::Poll::Pending,
                        std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(RawEvent::Closed),
                        std::task::Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            return std::task::Poll::Ready(RawEvent::Closed);
                        }
                        std::task::Poll::Ready(Ok(())) => {
                            let mut now = 0;
                            let mut event = None;
                            let fed = reader.feed(rb.filled(), |f| match f {
                                herald_bench::wsread::Frame::Data(p) => tracker.on_frame_at(i, p, || {
                                    if now == 0 {
                                        now = unix_nanos();
                                    }
                                    now
                                }),
                                herald_bench::wsread::Frame::Ping(p) => event = Some(RawEvent::Ping(p.to_vec())),
                                herald_bench::wsread::Frame::Close => event = Some(RawEvent::Closed),
                                herald_bench::wsread::Frame::Other => {}
                            });
                            if fed.is_err() {
                                event = Some(RawEvent::Closed);
                            }
                            if let Some(e) = event {
                                return std::task::Poll::Ready(e);
                            }
                        }
                    }
                }
            })
        });
        tokio::select! {
            event = next => match event {
                RawEvent::Ping(payload) => {
                    let _ = tcp.write_all(&herald_bench::wsread::pong(&payload)).await;
                }
                RawEvent::Closed => {
                    if !*stop.borrow() {
                        tracker.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
            _ = stop.changed() => {
                // A masked close frame (code 1000, zero key), then wait briefly for the server's close.
                let _ = tcp.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut sink = [0u8; 4096];
                    while matches!(tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        }
    }
}

/// The outcome of opening many connections.
struct Opening {
    ready: Ready,
    opened: Vec<(usize, Opened)>,
}

/// Opens connections `0..count` (users `first + i*stride + offset`) with at most `concurrency` at once. Tokens
/// are minted before the clock starts.
async fn open_many(
    target: Target,
    users: Vec<String>,
    subs: Vec<Option<String>>,
    concurrency: usize,
    ping_bytes: usize,
    index_base: usize,
) -> Opening {
    let tokens = TestTokens::default();
    let minted: Vec<String> = if target.is_herald() {
        users.iter().map(|u| tokens.token(u)).collect()
    } else {
        vec![String::new(); users.len()]
    };
    let clients = match target {
        Target::HeraldVia { via, addr, cert } => Clients::new(via, addr, cert, users.len()),
        _ => Ok(Clients::default()),
    };
    let clients = match clients {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let failed = users.len();
            let ready = Ready { failed, first_error: Some(format!("client set-up: {e}")), ..Ready::default() };
            return Opening { ready, opened: Vec::new() };
        }
    };
    let concurrency = match target {
        Target::HeraldVia { via, .. } => crate::link::open_concurrency(via, concurrency),
        _ => concurrency,
    };
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (tx, mut rx) = mpsc::channel::<(usize, Result<Opened, String>)>(1024);
    let start_ns = unix_nanos();
    for (i, ((user, token), sub)) in users.into_iter().zip(minted).zip(subs).enumerate() {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (tx, clients) = (tx.clone(), clients.clone());
        tokio::spawn(async move {
            let r = open(target, &clients, index_base + i, &user, &token, sub.as_deref(), ping_bytes).await;
            drop(permit);
            let _ = tx.send((i, r.map_err(|e| format!("{user}: {e}")))).await;
        });
    }
    drop(tx);
    let mut ready = Ready { start_ns, ..Ready::default() };
    let mut opened = Vec::new();
    while let Some((i, r)) = rx.recv().await {
        match r {
            Ok(o) => {
                ready.connected += 1;
                ready.hello_end_ns = ready.hello_end_ns.max(o.hello_ns);
                opened.push((i, o));
            }
            Err(e) => {
                ready.failed += 1;
                ready.first_error.get_or_insert(e);
            }
        }
    }
    ready.end_ns = unix_nanos();
    opened.sort_by_key(|(i, _)| *i);
    Opening { ready, opened }
}

// ----- jobs ----------------------------------------------------------------------------------------------------

struct ConnectSpec {
    target: Target,
    first: usize,
    count: usize,
    concurrency: usize,
    subscribe: Option<String>,
    ping_bytes: usize,
    track: usize,
}

async fn connect_job(spec: ConnectSpec, mut orders: mpsc::Receiver<Order>) -> Result<(), Error> {
    let users: Vec<String> = (spec.first..spec.first + spec.count).map(user_name).collect();
    let subs = vec![spec.subscribe.clone(); spec.count];
    let opening = open_many(spec.target, users, subs, spec.concurrency, spec.ping_bytes, spec.first).await;
    let tracker = Arc::new(Tracker::new(spec.track));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sio_mode = matches!(spec.target, Target::Socketio { .. });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, o) in opening.opened {
        tasks.spawn(hold(o.conn, spec.first + i, tracker.clone(), stop_rx.clone(), sio_mode));
    }
    print(&Reply::Ready(opening.ready.clone()));
    let receivers = opening.ready.connected as u64;
    while let Some(order) = orders.recv().await {
        match order {
            Order::Run { messages, first_n, deadline_ns, .. } => {
                let base = tracker.begin(first_n, messages);
                tracker.wait(base, messages * receivers, deadline_ns).await;
                print(&Reply::Done(tracker.report(base, first_n, messages)));
            }
            Order::Stop => break,
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while tasks.join_next().await.is_some() {} }).await;
    Ok(())
}

type WsSink = SplitSink<Ws, Message>;

/// Counts replies to sends (and error replies) on a sender's read half.
async fn count_replies(mut stream: SplitStream<Ws>, errors: Arc<AtomicU64>, herald: bool) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg
            && herald
            && scan::find(t.as_bytes(), b"\"type\":\"error\"").is_some()
            && errors.fetch_add(1, Ordering::Relaxed) == 0
        {
            eprintln!("worker: first error reply: {:.300}", t.as_str());
        }
    }
}

/// Counts the error replies among the frames a sender receives (a sender's connection gets the replies to
/// its sends) until its link ends.
async fn count_link_replies(mut link: Link, errors: Arc<AtomicU64>) {
    while let Ok(text) = link.recv().await {
        note_reply(text.as_bytes(), &errors);
    }
}

fn note_reply(frame: &[u8], errors: &AtomicU64) {
    if scan::find(frame, b"\"type\":\"error\"").is_some() && errors.fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("worker: first error reply: {:.300}", String::from_utf8_lossy(frame));
    }
}

/// Where a sender writes.
enum Out {
    /// A WebSocket's write half (its read half is drained by [`count_replies`]).
    Ws(Mutex<WsSink>),
    /// A QUIC / WebTransport stream: the sending task also reads the replies.
    Quic(Mutex<Box<herald::quic::client::FrameStream>>, Arc<AtomicU64>),
    /// A long-poll / SSE session: each batch of released messages is one `POST …/commands` (newline-delimited);
    /// the replies are read by [`count_link_replies`].
    Http(herald::longpoll::client::ClientSession),
}

/// A sender: one connection's write side and how it frames a message.
struct Sender {
    out: Out,
    /// The frame text before and after the body, e.g. `{"type":"send","id":0,"channel":"dm:a:b","body":` and `}`.
    prefix: String,
    suffix: String,
}

/// Sends sender `s`'s share of `schedule` as the pacer releases it. Returns (sent, socket errors).
async fn send_share(
    sender: &Sender,
    s: u64,
    schedule: Schedule,
    slot: &herald_bench::schedule::Slot,
    first_n: u64,
    body_bytes: usize,
) -> (u64, u64) {
    let total = schedule.count_of(s);
    let frame = |k: u64| {
        let g = schedule.global(s, k);
        let body = scan::body(first_n + g, schedule.intended_ns(g), body_bytes);
        format!("{}{body}{}", sender.prefix, sender.suffix)
    };
    let (mut k, mut errors) = (0, 0);
    match &sender.out {
        Out::Ws(sink) => {
            let mut sink = sink.lock().await;
            while k < total {
                let released = slot.wait_beyond(k).await.min(total);
                while k < released {
                    if sink.feed(Message::text(frame(k))).await.is_err() {
                        errors += 1;
                    }
                    k += 1;
                }
                if sink.flush().await.is_err() {
                    errors += 1;
                }
            }
        }
        Out::Quic(stream, replies) => {
            let mut stream = stream.lock().await;
            while k < total {
                let released = slot.released().min(total);
                if released > k {
                    while k < released {
                        if stream.send_frame(frame(k).as_bytes()).await.is_err() {
                            errors += 1;
                        }
                        k += 1;
                    }
                    continue;
                }
                // Nothing due: read replies meanwhile (both futures are cancel-safe).
                tokio::select! {
                    _ = slot.wait_beyond(k) => {}
                    r = stream.recv_frame() => match r {
                        Ok(f) => note_reply(&f, replies),
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    },
                }
            }
        }
        Out::Http(session) => {
            while k < total {
                let released = slot.wait_beyond(k).await.min(total);
                let mut body = String::new();
                while k < released {
                    body.push_str(&frame(k));
                    body.push('\n');
                    k += 1;
                }
                if session.send(body).await.is_err() {
                    errors += 1;
                }
            }
        }
    }
    (k, errors)
}

/// Runs one paced step over `senders` and returns (sent, errors).
async fn paced(senders: &Arc<Vec<Sender>>, order: (u64, f64, u64, u64), body_bytes: usize) -> (u64, u64) {
    let (start_ns, rate, messages, first_n) = order;
    let schedule = Schedule { start_ns, rate, count: messages, senders: senders.len().max(1) as u64 };
    let pacer = Pacer::start(schedule);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..senders.len() {
        let (senders, slots) = (senders.clone(), pacer.slots().clone());
        tasks.spawn(async move { send_share(&senders[s], s as u64, schedule, &slots[s], first_n, body_bytes).await });
    }
    let (mut sent, mut errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if let Ok((s, e)) = r {
            sent += s;
            errors += e;
        }
    }
    (sent, errors)
}

async fn pairs_job(
    target: Target,
    first: usize,
    count: usize,
    concurrency: usize,
    body_bytes: usize,
    mut orders: mpsc::Receiver<Order>,
) -> Result<(), Error> {
    let herald = target.is_herald();
    if matches!(target, Target::Mqtt { .. }) {
        return Err("1:1 pairs are not implemented over MQTT".into());
    }
    // Receivers first (users first+2j+1), subscribed to their dm channel (Herald) or in their own room.
    let pair = |j: usize| (user_name(first + 2 * j), user_name(first + 2 * j + 1));
    let dm = |a: &str, b: &str| if a < b { format!("dm:{a}:{b}") } else { format!("dm:{b}:{a}") };
    let receivers: Vec<String> = (0..count).map(|j| pair(j).1).collect();
    let subs: Vec<Option<String>> = (0..count)
        .map(|j| {
            if herald {
                let (a, b) = pair(j);
                Some(dm(&a, &b))
            } else {
                None
            }
        })
        .collect();
    let mut ready = Ready::default();
    let rx_open = open_many(target, receivers, subs, concurrency, 0, first + 1).await;
    ready.merge(&rx_open.ready);
    let senders_users: Vec<String> = (0..count).map(|j| pair(j).0).collect();
    let tx_open = open_many(target, senders_users, vec![None; count], concurrency, 0, first).await;
    ready.merge(&tx_open.ready);

    let tracker = Arc::new(Tracker::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (j, o) in rx_open.opened {
        tasks.spawn(hold(o.conn, first + 2 * j + 1, tracker.clone(), stop_rx.clone(), !herald));
    }
    let errors = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    // Herald over WebSocket: the senders are driven by one thread (see `rawsend`).
    let mut raw = Vec::new();
    let raw_path = matches!(target, Target::Herald { .. });
    for (j, o) in tx_open.opened {
        let (a, b) = pair(j);
        if raw_path && let Conn::Ws(ws) = o.conn {
            let prefix = format!("{{\"type\":\"send\",\"id\":{j},\"channel\":\"{}\",\"body\":", dm(&a, &b));
            raw.push(RawSender::new(ws.into_inner().into_std()?, first + 2 * j, prefix)?);
            continue;
        }
        let out = match o.conn {
            Conn::Ws(ws) => {
                let (sink, stream) = ws.split();
                tokio::spawn(count_replies(stream, errors.clone(), herald));
                Out::Ws(Mutex::new(sink))
            }
            Conn::Link(Link::Quic(stream)) => Out::Quic(Mutex::new(stream), errors.clone()),
            Conn::Link(link) => {
                let Some(session) = link.session() else { continue };
                tokio::spawn(count_link_replies(link, errors.clone()));
                Out::Http(session)
            }
            Conn::Mqtt(..) => continue,
        };
        let (prefix, suffix) = if herald {
            (format!("{{\"type\":\"send\",\"id\":{j},\"channel\":\"{}\",\"body\":", dm(&a, &b)), "}".to_owned())
        } else {
            (format!("42[\"dm\",\"{b}\","), "]".to_owned())
        };
        senders.push(Sender { out, prefix, suffix });
    }
    let senders = Arc::new(senders);
    let raw = if raw.is_empty() { None } else { Some(RawSenders::start(raw)?) };
    print(&Reply::Ready(ready));
    while let Some(order) = orders.recv().await {
        match order {
            Order::Run { start_ns, rate, messages, first_n, deadline_ns } => {
                let base = tracker.begin(first_n, messages);
                let errors_before = errors.load(Ordering::Relaxed);
                let (sent, socket_errors) = match &raw {
                    Some(raw) => {
                        let schedule = Schedule { start_ns, rate, count: messages, senders: 1 };
                        let r = raw.run(schedule, first_n, body_bytes, deadline_ns).await;
                        (r.sent, r.errors)
                    }
                    None => paced(&senders, (start_ns, rate, messages, first_n), body_bytes).await,
                };
                tracker.wait(base, sent, deadline_ns).await;
                let mut report = tracker.report(base, first_n, 0);
                report.sent = sent;
                report.send_errors = socket_errors + errors.load(Ordering::Relaxed) - errors_before;
                print(&Reply::Done(report));
            }
            Order::Stop => break,
        }
    }
    let _ = stop_tx.send(true);
    if let Some(raw) = raw {
        // Dropping closes the connections and joins the thread: not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || drop(raw)).await;
    }
    for s in senders.iter() {
        let close = async {
            match &s.out {
                Out::Ws(sink) => {
                    let _ = sink.lock().await.close().await;
                }
                Out::Quic(stream, _) => stream.lock().await.close(1000, "done"),
                Out::Http(session) => {
                    let _ = session.delete().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while tasks.join_next().await.is_some() {} }).await;
    Ok(())
}

async fn publish_job(
    target: Target,
    first: usize,
    channel: String,
    body_bytes: usize,
    mut orders: mpsc::Receiver<Order>,
) -> Result<(), Error> {
    let user = user_name(first);
    let token = TestTokens::default().token(&user);
    let start_ns = unix_nanos();
    let clients = Clients::default();
    if matches!(target, Target::HeraldVia { .. }) {
        return Err("the publisher speaks WebSocket only".into());
    }
    let opened = open(target, &clients, first, &user, &token, None, 0).await?;
    let ready =
        Ready { connected: 1, start_ns, end_ns: unix_nanos(), hello_end_ns: opened.hello_ns, ..Ready::default() };
    match opened.conn {
        Conn::Link(_) => return Err("the publisher speaks WebSocket only".into()),
        Conn::Ws(ws) => {
            let herald = target.is_herald();
            let (sink, stream) = ws.split();
            let errors = Arc::new(AtomicU64::new(0));
            tokio::spawn(count_replies(stream, errors.clone(), herald));
            let (prefix, suffix) = if herald {
                (format!("{{\"type\":\"send\",\"id\":1,\"channel\":\"{channel}\",\"body\":"), "}".to_owned())
            } else {
                (format!("42[\"pub\",\"{channel}\","), "]".to_owned())
            };
            let senders = Arc::new(vec![Sender { out: Out::Ws(Mutex::new(sink)), prefix, suffix }]);
            print(&Reply::Ready(ready));
            while let Some(order) = orders.recv().await {
                let Order::Run { start_ns, rate, messages, first_n, .. } = order else { break };
                let before = errors.load(Ordering::Relaxed);
                let (sent, socket_errors) = paced(&senders, (start_ns, rate, messages, first_n), body_bytes).await;
                let send_errors = socket_errors + errors.load(Ordering::Relaxed) - before;
                print(&Reply::Done(StepReport { sent, send_errors, ..StepReport::default() }));
            }
            if let Out::Ws(sink) = &senders[0].out {
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.lock().await.close()).await;
            }
        }
        Conn::Mqtt(client, mut events) => {
            // The event loop must be polled for publishes to leave.
            let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
            print(&Reply::Ready(ready));
            while let Some(order) = orders.recv().await {
                let Order::Run { start_ns, rate, messages, first_n, .. } = order else { break };
                let schedule = Schedule { start_ns, rate, count: messages, senders: 1 };
                let pacer = Pacer::start(schedule);
                let slot = &pacer.slots()[0];
                let (mut k, mut errors) = (0, 0);
                while k < messages {
                    let released = slot.wait_beyond(k).await.min(messages);
                    while k < released {
                        let body = scan::body(first_n + k, schedule.intended_ns(k), body_bytes);
                        if client.publish(channel.as_str(), rumqttc::QoS::AtMostOnce, false, body).await.is_err() {
                            errors += 1;
                        }
                        k += 1;
                    }
                }
                print(&Reply::Done(StepReport { sent: k, send_errors: errors, ..StepReport::default() }));
            }
            let _ = client.disconnect().await;
            driver.abort();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_records_marked_frames_per_message() {
        let t = Tracker::new(4);
        let now = unix_nanos();
        let body = |n: u64| scan::body(n, now - 2_000_000, 60);
        let base = t.begin(2, 8);
        t.on_frame(1, body(1).as_bytes()); // an earlier step's message: stale
        t.on_frame(0, format!("{{\"type\":\"message\",\"body\":{}}}", body(2)).as_bytes());
        t.on_frame(1, body(2).as_bytes());
        t.on_frame(1, body(3).as_bytes());
        t.on_frame(1, body(9).as_bytes()); // in the step, beyond the table: counted, not tracked
        t.on_frame(1, b"{\"type\":\"reply\",\"id\":1}"); // not a bench message
        t.on_frame(1, b"{\"type\":\"resync\",\"channel\":\"group:bench\",\"seq\":3}");
        let r = t.report(base, 2, 2);
        assert_eq!(r.delivered, 4);
        assert_eq!(r.counts, vec![2, 1]);
        assert_eq!((r.resyncs, r.stale), (1, 1));
        assert!(r.last_ns.iter().all(|&l| l >= now));
        let h = hist::decode(&r.hist).expect("histogram");
        assert_eq!(h.len(), 4);
        assert!(h.min() >= 2_000, "latency counts from the intended time: {} µs", h.min());
        // A new step forgets the latencies but keeps counting from a new base.
        let base = t.begin(10, 5);
        assert_eq!(t.report(base, 10, 5).delivered, 0);
    }

    #[test]
    fn ready_reports_merge() {
        let mut all = Ready::default();
        all.merge(&Ready { connected: 2, start_ns: 10, end_ns: 20, hello_end_ns: 15, ..Ready::default() });
        all.merge(&Ready {
            connected: 3,
            failed: 1,
            first_error: Some("x".into()),
            start_ns: 5,
            end_ns: 30,
            hello_end_ns: 12,
        });
        assert_eq!((all.connected, all.failed, all.start_ns, all.end_ns, all.hello_end_ns), (5, 1, 5, 30, 15));
        assert_eq!(all.first_error.as_deref(), Some("x"));
    }

    #[test]
    fn orders_and_replies_are_json_lines() {
        let o = Order::Run { start_ns: 1, rate: 2.5, messages: 3, first_n: 4, deadline_ns: 5 };
        let text = serde_json::to_string(&o).expect("serializes");
        assert!(!text.contains('\n'));
        assert!(matches!(serde_json::from_str::<Order>(&text), Ok(Order::Run { messages: 3, .. })));
        let r: Reply =
            serde_json::from_str(&serde_json::to_string(&Reply::Failed("e".into())).expect("ser")).expect("de");
        assert!(matches!(r, Reply::Failed(e) if e == "e"));
    }
}
