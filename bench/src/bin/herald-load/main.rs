//! Load scenarios against Herald's WebSocket server.
//!
//! `idle-memory`: starts `bench-server` as a child process, reads its resident memory, opens N authenticated
//! WebSocket connections (a distinct user per connection, token in `?token=`), optionally subscribes each to
//! a channel, waits for the server's memory to settle, reads it again and reports the memory per connection.
//!
//! ```text
//! ulimit -n 20000
//! cargo run --release -p herald-bench --bin herald-load -- idle-memory --connections 10000 --runs 3
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use herald::core::testkit::protocol::TestTokens;
use herald_bench::{BENCH_GROUP, ProcStatus, median, open_files_limit, user_name};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Herald load tool.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Server memory per idle authenticated WebSocket connection.
    IdleMemory(IdleArgs),
}

/// What each connection subscribes to after its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Subscribe {
    /// Nothing.
    None,
    /// Its own `user:<id>` channel (one channel per connection).
    User,
    /// The shared `group:bench` (the server is started with every user as a member).
    Group,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Subscribe each connection to a channel.
    #[arg(long, value_enum, default_value_t = Subscribe::None)]
    subscribe: Subscribe,
    /// After subscribing, send one `ping` padded to this many bytes (0: none) and wait for its reply: shows
    /// what a connection keeps after it has received a frame of that size.
    #[arg(long, default_value_t = 0)]
    ping_bytes: usize,
    /// Repeat the measurement this many times, each with a fresh server process; the median is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The server binary (default: `bench-server` next to this binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// An extra argument for the server, e.g. `--server-arg=--read-buffer=1024` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// An environment variable for the server, e.g. `--server-env MALLOC_ARENA_MAX=2` (repeatable).
    #[arg(long)]
    server_env: Vec<String>,
    /// Least time to wait, once every connection is up, before sampling memory (ms).
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Most time to wait for the memory to stop changing (ms).
    #[arg(long, default_value_t = 20_000)]
    max_settle_ms: u64,
    /// Tokio worker threads of this (client) process.
    #[arg(long, default_value_t = 2)]
    client_workers: usize,
    /// Print one JSON object per run as well.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::IdleMemory(args) => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_workers).enable_all().build()?;
            rt.block_on(idle_memory(args))
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    before: ProcStatus,
    after: ProcStatus,
    closed: ProcStatus,
    connect_secs: f64,
    dropped: usize,
}

impl RunResult {
    fn per_conn(&self, n: usize) -> f64 {
        (self.after.rss as f64 - self.before.rss as f64) / n as f64
    }

    fn anon_per_conn(&self, n: usize) -> f64 {
        (self.after.rss_anon as f64 - self.before.rss_anon as f64) / n as f64
    }
}

const MIB: f64 = 1024.0 * 1024.0;

async fn idle_memory(args: IdleArgs) -> Result<(), Error> {
    if let Some(limit) = open_files_limit()
        && (limit as usize) < args.connections + 64
    {
        return Err(format!(
            "open files limit is {limit}, {} connections need more: run `ulimit -n 20000` first",
            args.connections
        )
        .into());
    }
    let server = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("bench-server"),
    };
    let n = args.connections;
    let mut results = Vec::new();
    for run in 1..=args.runs {
        let r = idle_memory_run(&args, &server).await?;
        println!(
            "run {run}: {n} conns (subscribe={:?}, ping_bytes={}) in {:.1}s | RSS {:.1} -> {:.1} MiB: {:.0} B/conn \
             (RssAnon {:.0} B/conn) | threads {} | after close {:.1} MiB{}",
            args.subscribe,
            args.ping_bytes,
            r.connect_secs,
            r.before.rss as f64 / MIB,
            r.after.rss as f64 / MIB,
            r.per_conn(n),
            r.anon_per_conn(n),
            r.after.threads,
            r.closed.rss as f64 / MIB,
            if r.dropped > 0 {
                format!(" | WARNING: {} connections dropped during the run", r.dropped)
            } else {
                String::new()
            },
        );
        if args.json {
            let line = json!({
                "scenario": "idle-memory", "run": run, "connections": n,
                "subscribe": format!("{:?}", args.subscribe).to_lowercase(), "ping_bytes": args.ping_bytes,
                "server_args": args.server_arg, "server_env": args.server_env,
                "rss_before": r.before.rss, "rss_after": r.after.rss, "rss_closed": r.closed.rss,
                "rss_anon_before": r.before.rss_anon, "rss_anon_after": r.after.rss_anon,
                "bytes_per_conn": r.per_conn(n), "anon_bytes_per_conn": r.anon_per_conn(n),
                "threads": r.after.threads, "connect_secs": r.connect_secs, "dropped": r.dropped,
            });
            println!("{line}");
        }
        results.push(r);
    }
    let per: Vec<f64> = results.iter().map(|r| r.per_conn(n)).collect();
    let anon: Vec<f64> = results.iter().map(|r| r.anon_per_conn(n)).collect();
    let (lo, hi) = per.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    println!(
        "median of {} runs: {:.0} B/conn RSS (min {:.0}, max {:.0}), {:.0} B/conn RssAnon; target 4096 B: {}",
        per.len(),
        median(&per).unwrap_or(f64::NAN),
        lo,
        hi,
        median(&anon).unwrap_or(f64::NAN),
        if median(&per).unwrap_or(f64::MAX) <= 4096.0 { "met" } else { "NOT met" },
    );
    Ok(())
}

/// Spawns the server and returns it with the address it listens on.
async fn start_server(args: &IdleArgs, server: &PathBuf) -> Result<(Child, String), Error> {
    let mut cmd = Command::new(server);
    cmd.args(&args.server_arg).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    if args.subscribe == Subscribe::Group {
        cmd.arg(format!("--group-members={}", args.connections));
    }
    for kv in &args.server_env {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--server-env wants KEY=VALUE, got {kv:?}"))?;
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", server.display()))?;
    let stdout = child.stdout.take().ok_or("no server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // Skip anything a wrapper (a profiler, say) prints before the server's own `listening <addr>` line.
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("listening ") {
                return Ok(addr.to_owned());
            }
        }
        Err::<_, Error>("the server exited before listening".into())
    };
    let addr = tokio::time::timeout(Duration::from_secs(30), listening)
        .await
        .map_err(|_| "the server did not start in 30 s")??;
    // Keep draining its stdout so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// Samples the process status until it stops changing (three samples 500 ms apart within 0.5 % or 64 KiB).
async fn settled_status(pid: u32, least: Duration, most: Duration) -> Result<ProcStatus, Error> {
    tokio::time::sleep(least).await;
    let deadline = Instant::now() + most;
    let mut window: Vec<ProcStatus> = Vec::new();
    loop {
        let s = ProcStatus::read(pid)?;
        window.push(s);
        if window.len() > 3 {
            window.remove(0);
        }
        if window.len() == 3 {
            let (lo, hi) = window.iter().fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.rss), hi.max(s.rss)));
            if hi - lo <= (hi / 200).max(64 * 1024) || Instant::now() >= deadline {
                return Ok(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn idle_memory_run(args: &IdleArgs, server: &PathBuf) -> Result<RunResult, Error> {
    let (mut child, addr) = start_server(args, server).await?;
    let pid = child.id().ok_or("the server exited")?;
    let before = settled_status(pid, Duration::from_millis(500), Duration::from_secs(10)).await?;

    let tokens = TestTokens::default();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut up = 0;
    for i in 0..args.connections {
        let permit = permits.clone().acquire_owned().await?;
        let user = user_name(i);
        let url = format!("ws://{addr}/ws?token={}", tokens.token(&user));
        let sub = match args.subscribe {
            Subscribe::None => None,
            Subscribe::User => Some(format!("user:{user}")),
            Subscribe::Group => Some(BENCH_GROUP.to_owned()),
        };
        let (ready, stop, dropped) = (ready_tx.clone(), stop_rx.clone(), dropped.clone());
        let ping_bytes = args.ping_bytes;
        tasks.spawn(async move {
            let ws = match open(&url, sub.as_deref(), ping_bytes).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.send(Err(format!("connection {i}: {e}"))).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready.send(Ok(())).await;
            hold(ws, stop, &dropped).await;
        });
        // Fail fast on the first error instead of opening thousands more.
        while let Ok(r) = ready_rx.try_recv() {
            r?;
            up += 1;
        }
    }
    drop(ready_tx);
    while up < args.connections {
        match ready_rx.recv().await {
            Some(Ok(())) => up += 1,
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let after =
        settled_status(pid, Duration::from_millis(args.settle_ms), Duration::from_millis(args.max_settle_ms)).await?;
    let dropped_during = dropped.load(Ordering::Relaxed);

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let closed = settled_status(pid, Duration::from_millis(1_000), Duration::from_secs(5)).await?;

    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
        child.kill().await?;
    }
    Ok(RunResult { before, after, closed, connect_secs, dropped: dropped_during })
}

/// Connects, waits for the `hello`, subscribes to `sub` when given and sends a padded ping when `ping_bytes` is
/// not 0 (waiting for each reply).
async fn open(url: &str, sub: Option<&str>, ping_bytes: usize) -> Result<Ws, Error> {
    // A small client read buffer: tungstenite's default (128 KiB, touched on first read) would cost GiBs here.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    .map_err(|_| "connect timed out")??;
    next_json(&mut ws, |v| v["type"] == "hello").await?;
    if let Some(channel) = sub {
        let cmd = json!({"type": "sub", "id": 1, "channel": channel}).to_string();
        ws.send(Message::text(cmd)).await?;
        let reply = next_json(&mut ws, |v| v["id"] == 1).await?;
        if reply["type"] != "reply" {
            return Err(format!("sub {channel} refused: {reply}").into());
        }
    }
    if ping_bytes > 0 {
        // Unknown fields are ignored by the server: the padding only fills the frame.
        let mut cmd = json!({"type": "ping", "id": 2, "pad": ""}).to_string();
        let pad = "x".repeat(ping_bytes.saturating_sub(cmd.len()));
        cmd = json!({"type": "ping", "id": 2, "pad": pad}).to_string();
        ws.send(Message::text(cmd)).await?;
        next_json(&mut ws, |v| v["id"] == 2).await?;
    }
    Ok(ws)
}

/// Reads frames until one matches `want` (30 s at most).
async fn next_json(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Result<Value, Error> {
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(&t)?;
                if want(&v) {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    return Err(format!("server error: {v}").into());
                }
            }
        }
        Err("connection closed".into())
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.map_err(|_| "no answer within 30 s")?
}

/// Keeps a connection open, polling it (tungstenite answers the server's pings while polled) until told to stop.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, dropped: &AtomicUsize) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !*stop.borrow() {
                        dropped.fetch_add(1, Ordering::Relaxed);
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
    }
}
