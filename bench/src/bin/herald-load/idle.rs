//! A: idle connections. Ramps to N authenticated WebSocket connections (a distinct user each, token in
//! `?token=`, connect + upgrade + `hello`), optionally subscribed; measures the server's memory per
//! connection (`/proc/<pid>/status` VmRSS and RssAnon, after they settle, minus the baseline) and the
//! handshakes per second during the ramp. More than `--per-process` connections are spread over worker
//! processes.

use std::time::Duration;

use herald_bench::net::Error;
use herald_bench::report::{Check, Spread, show, table};
use herald_bench::{BENCH_GROUP, median, open_files_limit};
use serde_json::json;

use crate::procs::{self, WorkerProc, settled_status};
use crate::worker::Job;
use crate::{Outcome, ServerOpts, TransportKind};

/// What each connection subscribes to after its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Subscribe {
    /// Nothing.
    None,
    /// Its own `user:<id>` channel (one channel per connection).
    User,
    /// The shared `group:bench` (the server is started with every user as a member).
    Group,
}

/// Target: server memory per idle connection, bytes.
pub(crate) const MEMORY_TARGET: f64 = 2048.0;
/// Target: handshakes per second during the ramp.
pub(crate) const HANDSHAKE_TARGET: f64 = 10_000.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// How the clients reach Herald (long-poll: each session holds a poll; SSE: each holds its stream).
    #[arg(long, value_enum, default_value_t = TransportKind::Ws)]
    pub(crate) transport: TransportKind,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Connections being opened at once, per client process.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    /// Subscribe each connection to a channel.
    #[arg(long, value_enum, default_value_t = Subscribe::None)]
    pub(crate) subscribe: Subscribe,
    /// After subscribing, send one `ping` padded to this many bytes (0: none) and wait for its reply: shows
    /// what a connection keeps after it has received a frame of that size.
    #[arg(long, default_value_t = 0)]
    pub(crate) ping_bytes: usize,
    /// Repeat the measurement this many times, each with a fresh server process; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Least time to wait, once every connection is up, before sampling memory (ms).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) settle_ms: u64,
    /// Most time to wait for the memory to stop changing (ms).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) max_settle_ms: u64,
    #[command(flatten)]
    pub(crate) server: ServerOpts,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    rss_before: u64,
    rss_after: u64,
    rss_closed: u64,
    rss_anon_before: u64,
    rss_anon_after: u64,
    bytes_per_conn: f64,
    anon_bytes_per_conn: f64,
    threads: u64,
    ramp_secs: f64,
    handshakes_per_sec: f64,
    processes: usize,
    dropped: usize,
}

pub(crate) async fn run(args: &Args) -> Result<Outcome, Error> {
    let per = args.server.per_process.min(args.connections.max(1));
    if let Some(limit) = open_files_limit()
        && (limit as usize) < per + 64
    {
        return Err(
            format!("open files limit is {limit}, {per} connections per process need more: `ulimit -n 20000`").into()
        );
    }
    let mut runs = Vec::new();
    for r in 1..=args.runs {
        let run = one(args).await?;
        println!(
            "A run {r} ({}): {} conns in {:.2} s = {:.0} handshakes/s over {} process(es) | RSS {:.1} -> {:.1} MiB: {:.0} B/conn (RssAnon {:.0}) | server threads {}{}",
            args.transport.name(),
            args.connections,
            run.ramp_secs,
            run.handshakes_per_sec,
            run.processes,
            run.rss_before as f64 / 1048576.0,
            run.rss_after as f64 / 1048576.0,
            run.bytes_per_conn,
            run.anon_bytes_per_conn,
            run.threads,
            if run.dropped > 0 { format!(" | WARNING: {} connections dropped", run.dropped) } else { String::new() },
        );
        runs.push(run);
    }
    let col = |f: fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let mem = col(|r| r.bytes_per_conn);
    let anon = col(|r| r.anon_bytes_per_conn);
    let hs = col(|r| r.handshakes_per_sec);
    let ramp = col(|r| r.ramp_secs);
    let checks = vec![
        Check::at_most(
            "A: server memory per idle connection (RSS, median)",
            mem.map(|s| s.median),
            MEMORY_TARGET,
            "B",
            0,
        ),
        Check::at_least(
            "A: handshakes per second during the ramp (median)",
            hs.map(|s| s.median),
            HANDSHAKE_TARGET,
            "/s",
            0,
        ),
    ];
    let rows = vec![vec![
        format!("{}", args.connections),
        format!("{:?}", args.subscribe).to_lowercase(),
        show(mem, 0),
        show(anon, 0),
        show(hs, 0),
        show(ramp, 2),
        format!("{}", runs.first().map_or(0, |r| r.processes)),
        format!("{}", runs.iter().map(|r| r.dropped).sum::<usize>()),
    ]];
    let table = table(
        &[
            "connections",
            "subscribed to",
            "RSS B/conn",
            "RssAnon B/conn",
            "handshakes/s",
            "ramp s",
            "client procs",
            "dropped",
        ],
        &rows,
    );
    let json = json!({
        "scenario": "A", "transport": args.transport, "connections": args.connections, "subscribe": args.subscribe, "ping_bytes": args.ping_bytes,
        "concurrency": args.concurrency, "server_args": args.server.server_arg, "server_env": args.server.server_env,
        "runs": runs, "bytes_per_conn": mem, "anon_bytes_per_conn": anon, "handshakes_per_sec": hs,
        "median_bytes_per_conn": median(&runs.iter().map(|r| r.bytes_per_conn).collect::<Vec<_>>()),
        "checks": checks,
    });
    Ok(Outcome {
        json,
        checks,
        table,
        figures: vec![("bytes_per_conn", mem.map(|s| s.median)), ("handshakes_per_sec", hs.map(|s| s.median))],
    })
}

async fn one(args: &Args) -> Result<Run, Error> {
    let mut server_args = Vec::new();
    if args.subscribe == Subscribe::Group {
        server_args.push(format!("--group-members={}", args.connections));
    }
    server_args.extend(args.transport.server_args());
    let server = args.server.start_herald(&server_args).await?;
    let target = match args.transport.target(&server) {
        Ok(t) => t,
        Err(e) => {
            server.stop().await?;
            return Err(e);
        }
    };
    let before = settled_status(server.pid, Duration::from_millis(500), Duration::from_secs(10)).await?;
    let subscribe = match args.subscribe {
        Subscribe::None => None,
        Subscribe::User => Some("user".to_owned()),
        Subscribe::Group => Some(BENCH_GROUP.to_owned()),
    };
    let parts = procs::split(args.connections, args.server.per_process);
    let mut workers = Vec::new();
    for (k, (first, count)) in parts.iter().copied().enumerate() {
        let job = Job::Connect {
            target,
            first,
            count,
            concurrency: args.concurrency,
            subscribe: subscribe.clone(),
            ping_bytes: args.ping_bytes,
            track: 0,
        };
        workers.push(WorkerProc::spawn(format!("idle worker {k}"), &job, args.server.client_threads).await?);
    }
    let ready = procs::ready_all(&mut workers, Duration::from_secs(300)).await;
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            procs::stop_all(workers).await;
            server.stop().await?;
            return Err(e);
        }
    };
    let ramp_secs = ready.end_ns.saturating_sub(ready.start_ns) as f64 / 1e9;
    let after =
        settled_status(server.pid, Duration::from_millis(args.settle_ms), Duration::from_millis(args.max_settle_ms))
            .await?;
    // One zero-length step to learn how many connections the server dropped while we waited.
    let order = crate::worker::Order::Run { start_ns: 0, rate: 1.0, messages: 0, first_n: 0, deadline_ns: 0 };
    let dropped = procs::run_all(&mut workers, &order, Duration::from_secs(30)).await?.iter().map(|r| r.dropped).sum();
    procs::stop_all(workers).await;
    let closed = settled_status(server.pid, Duration::from_millis(1_000), Duration::from_secs(5)).await?;
    server.stop().await?;
    let n = args.connections as f64;
    Ok(Run {
        rss_before: before.rss,
        rss_after: after.rss,
        rss_closed: closed.rss,
        rss_anon_before: before.rss_anon,
        rss_anon_after: after.rss_anon,
        bytes_per_conn: (after.rss as f64 - before.rss as f64) / n,
        anon_bytes_per_conn: (after.rss_anon as f64 - before.rss_anon as f64) / n,
        threads: after.threads,
        ramp_secs,
        handshakes_per_sec: if ramp_secs > 0.0 { n / ramp_secs } else { 0.0 },
        processes: parts.len(),
        dropped,
    })
}
