//! Herald's load tool: the benchmark scenarios of `docs/benchmarks.md`, each one command.
//!
//! ```text
//! ulimit -n 20000
//! cargo build --release -p herald-bench
//! target/release/herald-load idle        # A: memory per idle connection, handshakes/s   (alias: idle-memory)
//! target/release/herald-load dm          # B: 1:1 latency at 50,000 msg/s + saturation search
//! target/release/herald-load fanout      # C: one group of 10,000 subscribers
//! target/release/herald-load broadcast   # D: one message to 19,000 connections, 20 times
//! target/release/herald-load store       # E: store appends and history reads (in-process)
//! target/release/herald-load push        # F: reserved (push providers do not exist yet)
//! target/release/herald-load transports  # 1:1 latency at 10,000 msg/s + idle memory, per transport
//! target/release/herald-load all         # everything, 3 runs each, rewrites docs/benchmarks.md
//! ```
//!
//! The load is open-loop: every message's intended send time is fixed before a step starts and its latency is
//! measured from that time (see `herald_bench::schedule`). Scenarios that need many connections run them in
//! worker processes (`herald-load worker`, started by the tool itself), at most `--per-process` each; the
//! server under test (`bench-server`, Mosquitto, or the Socket.IO peer) is always a separate process.

mod all;
mod broadcast;
mod dm;
mod fanout;
mod idle;
mod link;
mod phases;
mod procs;
mod rawsend;
mod store;
mod transports;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use herald_bench::net::Error;
use herald_bench::report::Check;
use herald_bench::store::StoreKind;

/// Herald load tool.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A: ramp to N idle authenticated connections; server memory per connection, handshakes per second.
    #[command(alias = "idle-memory")]
    Idle(idle::Args),
    /// B: 1:1 messaging between P pairs at a fixed total rate; latency percentiles; saturation search.
    Dm(dm::Args),
    /// C: fan-out to one group of 10,000 subscribed members (Herald, or a peer with --target).
    Fanout(fanout::Args),
    /// D: one message to every connection (19,000, several client processes), repeated; time to last delivery.
    Broadcast(broadcast::Args),
    /// E: durable store appends and history reads, in-process, through `Arc<dyn Store>`.
    Store(store::Args),
    /// F: push dispatch. Reserved: filled when push providers exist; exits with status 2.
    Push,
    /// Every scenario (3 runs each), JSON results under bench/results/, tables rewritten in docs/benchmarks.md.
    All(all::Args),
    /// Per transport (WebSocket, QUIC, WebTransport, long-poll, SSE): 1:1 latency at 10,000 msg/s and memory per
    /// idle connection; rewrites the `transports` section of docs/benchmarks.md.
    Transports(transports::Args),
    /// Internal: a load worker process (started by the other scenarios; reads its job on stdin).
    #[command(hide = true)]
    Worker {
        /// Tokio worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// Which server a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TargetKind {
    /// Herald (`bench-server`).
    Herald,
    /// Mosquitto, already running (`--mqtt-addr`).
    Mosquitto,
    /// The Socket.IO server of `bench/peers/socketio` (started with `node`).
    Socketio,
}

/// How the Herald clients of `idle` and `dm` reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportKind {
    /// WebSocket (`/ws?token=`), over TCP.
    #[default]
    Ws,
    /// Native QUIC (ALPN `herald/1`): one UDP socket per client process for thousands of connections.
    Quic,
    /// WebTransport over HTTP/3 (`/wt`), as a browser opens it.
    Webtransport,
    /// HTTP long-poll (`/lp`), h2c: many sessions share each HTTP/2 connection.
    Longpoll,
    /// Server-Sent Events (`/lp/sessions/{id}/sse`), h2c, commands POSTed.
    Sse,
}

impl TransportKind {
    /// Every transport, in table order.
    pub(crate) const ALL: [TransportKind; 5] = [Self::Ws, Self::Quic, Self::Webtransport, Self::Longpoll, Self::Sse];

    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Quic => "quic",
            Self::Webtransport => "webtransport",
            Self::Longpoll => "longpoll",
            Self::Sse => "sse",
        }
    }

    /// The name in tables.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Ws => "WebSocket",
            Self::Quic => "native QUIC",
            Self::Webtransport => "WebTransport",
            Self::Longpoll => "long-poll",
            Self::Sse => "SSE",
        }
    }

    /// The `bench-server` flags that turn the transport on (on a free loopback port).
    pub(crate) fn server_args(self) -> Vec<String> {
        match self {
            Self::Ws => Vec::new(),
            Self::Quic | Self::Webtransport => vec!["--quic=127.0.0.1:0".to_owned()],
            Self::Longpoll | Self::Sse => vec!["--longpoll=127.0.0.1:0".to_owned()],
        }
    }

    /// The worker target for a started `bench-server`.
    pub(crate) fn target(self, server: &procs::ServerProc) -> Result<worker::Target, Error> {
        let quic = || server.extra.quic.ok_or("bench-server did not announce a QUIC address");
        let lp = || server.extra.longpoll.ok_or("bench-server did not announce a long-poll address");
        Ok(match self {
            Self::Ws => worker::Target::Herald { addr: server.addr },
            Self::Quic | Self::Webtransport => {
                let (addr, cert) = quic()?;
                worker::Target::HeraldVia { via: self, addr, cert }
            }
            Self::Longpoll | Self::Sse => worker::Target::HeraldVia { via: self, addr: lp()?, cert: [0; 32] },
        })
    }
}

/// Options shared by the scenarios that start `bench-server`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerOpts {
    /// The server binary (default: `bench-server` next to this binary).
    #[arg(long)]
    pub(crate) server: Option<PathBuf>,
    /// An extra argument for the server, e.g. `--server-arg=--read-buffer=1024` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) server_arg: Vec<String>,
    /// An environment variable for the server, e.g. `--server-env MALLOC_ARENA_MAX=2` (repeatable).
    #[arg(long)]
    pub(crate) server_env: Vec<String>,
    /// The server's store.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    pub(crate) store: StoreKind,
    /// The store's location, for stores that need one.
    #[arg(long)]
    pub(crate) store_url: Option<String>,
    /// Tokio threads of each client worker process.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
    /// Most connections per client process (a process may hold at most 20,000 open files).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) per_process: usize,
    /// Mosquitto's address (for `--target mosquitto`).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) mqtt_addr: std::net::SocketAddr,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json_out: Option<PathBuf>,
}

impl ServerOpts {
    /// Starts the Herald bench server with the given scenario arguments plus the user's.
    pub(crate) async fn start_herald(&self, scenario_args: &[String]) -> Result<procs::ServerProc, Error> {
        let program = match &self.server {
            Some(p) => p.clone(),
            None => procs::sibling("bench-server")?,
        };
        let mut args: Vec<String> = scenario_args.to_vec();
        args.push(format!("--store={}", self.store.name()));
        if let Some(u) = &self.store_url {
            args.push(format!("--store-url={u}"));
        }
        args.extend(self.server_arg.iter().cloned());
        procs::ServerProc::start(&program, &args, &self.server_env).await
    }

    /// Starts the Socket.IO peer (installing its npm packages first when they are missing or older than
    /// `package-lock.json`).
    pub(crate) async fn start_socketio(&self) -> Result<procs::ServerProc, Error> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/socketio");
        if !npm_current(&dir) {
            let _phase = phases::start("npm ci");
            eprintln!("installing the Socket.IO peer's packages (npm ci) in {}", dir.display());
            let offline =
                tokio::process::Command::new("npm").args(["ci", "--offline"]).current_dir(&dir).status().await;
            if !offline.map(|s| s.success()).unwrap_or(false) {
                let online = tokio::process::Command::new("npm").arg("ci").current_dir(&dir).status().await?;
                if !online.success() {
                    return Err(format!("npm ci failed in {}", dir.display()).into());
                }
            }
        }
        let args = vec![dir.join("server.js").display().to_string(), "--port=0".to_owned()];
        procs::ServerProc::start(std::path::Path::new("node"), &args, &self.server_env).await
    }
}

/// Whether `dir/node_modules` was installed (`npm ci` writes `node_modules/.package-lock.json`) from the current
/// `dir/package-lock.json`: no older than it, and with the Socket.IO package in it.
fn npm_current(dir: &std::path::Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(dir.join("node_modules/.package-lock.json")), modified(dir.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed >= lock && dir.join("node_modules/socket.io").exists(),
        _ => false,
    }
}

/// What a scenario produced.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The full result, written to `bench/results/`.
    pub(crate) json: serde_json::Value,
    /// Targets checked.
    pub(crate) checks: Vec<Check>,
    /// A markdown table of the figures.
    pub(crate) table: String,
    /// Headline medians by name (for the Herald/peer ratios).
    pub(crate) figures: Vec<(&'static str, Option<f64>)>,
}

impl Outcome {
    /// The headline figure `name`.
    pub(crate) fn figure(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v)
    }
}

impl Outcome {
    /// Prints the checks and writes the JSON where asked.
    pub(crate) fn finish(&self, json_out: Option<&PathBuf>) -> Result<(), Error> {
        println!("\n{}", self.table);
        for c in &self.checks {
            println!("{}: {} — target {}, measured {}", c.verdict(), c.name, c.target, c.measured);
        }
        if let Some(p) = json_out {
            std::fs::write(p, serde_json::to_string_pretty(&self.json)?)?;
        }
        Ok(())
    }
}

/// Percent of `part` in `whole`.
pub(crate) fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { 100.0 * part / whole } else { 0.0 }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?)
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Scenario::Worker { threads } => return runtime(threads)?.block_on(worker::main()),
        Scenario::Push => {
            println!(
                "F (push dispatch): not measured — this scenario is filled when push providers exist \
                 (herald-apns, herald-fcm, herald-webpush, herald-webhook). No figures are produced."
            );
            std::process::exit(2);
        }
        Scenario::All(args) => return runtime(2)?.block_on(all::run(args)),
        Scenario::Transports(args) => return runtime(2)?.block_on(transports::main(args)),
        Scenario::Idle(args) => {
            let out = runtime(2)?.block_on(idle::run(&args))?;
            (out, args.server.json_out.clone())
        }
        Scenario::Dm(args) => {
            let out = runtime(2)?.block_on(dm::run(&args))?;
            (out, args.server.json_out.clone())
        }
        Scenario::Fanout(args) => {
            let out = runtime(2)?.block_on(fanout::run(&args))?;
            (out, args.server.json_out.clone())
        }
        Scenario::Broadcast(args) => {
            let out = runtime(2)?.block_on(broadcast::run(&args))?;
            (out, args.server.json_out.clone())
        }
        Scenario::Store(args) => {
            let out = runtime(args.threads)?.block_on(store::run(&args))?;
            (out, args.json_out.clone())
        }
    };
    outcome.0.finish(outcome.1.as_ref())
}
