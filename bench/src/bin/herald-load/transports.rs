//! `herald-load transports`: the same two figures for every transport — 1:1 latency at a fixed rate
//! (scenario B with `--transport`, no saturation search) and server memory per idle connection (scenario A with
//! `--transport`) — as one table, the `transports` section of `docs/benchmarks.md`. `herald-load all` runs it
//! too.

use std::path::PathBuf;

use herald_bench::net::Error;
use herald_bench::report::{self, Machine, Spread, show, table};
use serde_json::{Value, json};

use crate::{Outcome, TransportKind, dm, idle};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Runs per figure (fresh server and clients each); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// The transports to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = TransportKind::ALL)]
    pub(crate) transports: Vec<TransportKind>,
    /// Idle connections per run (WebSocket, QUIC, WebTransport).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Idle sessions per run (long-poll, SSE), each holding a poll or a stream.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) sessions: usize,
    /// 1:1 sender → receiver pairs.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) pairs: usize,
    /// 1:1 total messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) rate: f64,
    /// Length of the fixed-rate step, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) secs: f64,
    /// Where the JSON result goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest"))]
    pub(crate) out: PathBuf,
    /// The page whose `transports` section is rewritten.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md"))]
    pub(crate) docs: PathBuf,
    /// Do not rewrite the docs page.
    #[arg(long)]
    pub(crate) no_docs: bool,
}

/// One transport's measurements.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) via: TransportKind,
    /// Idle connections (or sessions) per run.
    pub(crate) idle_count: usize,
    pub(crate) dm_command: String,
    pub(crate) idle_command: String,
    /// Scenario B's JSON result, or why it failed.
    pub(crate) dm: Result<Value, String>,
    /// Scenario A's JSON result, or why it failed.
    pub(crate) idle: Result<Value, String>,
}

impl Args {
    /// The two commands for `via` (as the docs show them, without the program name).
    pub(crate) fn commands(&self, via: TransportKind) -> (String, String) {
        let t = via.name();
        let idle_count = self.idle_count(via);
        (
            format!(
                "dm --transport {t} --pairs {} --rate {} --secs {} --search-steps 0 --runs {}",
                self.pairs, self.rate, self.secs, self.runs
            ),
            format!("idle --transport {t} --connections {idle_count} --runs {}", self.runs),
        )
    }

    fn idle_count(&self, via: TransportKind) -> usize {
        match via {
            TransportKind::Longpoll | TransportKind::Sse => self.sessions,
            _ => self.connections,
        }
    }
}

/// Runs both scenarios for every transport of `args`.
pub(crate) async fn measure(args: &Args) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for &via in &args.transports {
        let (dm_cmd, idle_cmd) = args.commands(via);
        println!("\n=== {}: herald-load {dm_cmd}", via.title());
        let dm = dm::run(&crate::all::parse::<dm::Args>(&dm_cmd)?).await;
        println!("\n=== {}: herald-load {idle_cmd}", via.title());
        let idle = idle::run(&crate::all::parse::<idle::Args>(&idle_cmd)?).await;
        let json = |r: Result<Outcome, Error>| {
            r.map(|o| o.json).map_err(|e| {
                println!("{} FAILED: {e}", via.title());
                e.to_string()
            })
        };
        rows.push(Row {
            via,
            idle_count: args.idle_count(via),
            dm_command: format!("herald-load {dm_cmd}"),
            idle_command: format!("herald-load {idle_cmd}"),
            dm: json(dm),
            idle: json(idle),
        });
    }
    Ok(rows)
}

fn spread(v: &Result<Value, String>, key: &str) -> Option<Spread> {
    serde_json::from_value(v.as_ref().ok()?.get(key)?.clone()).ok()
}

/// The `transports` section: the table, then the commands, then what failed.
pub(crate) fn section(rows: &[Row], rate: f64, pairs: usize) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let dm = |key: &str, d: usize| if r.dm.is_ok() { show(spread(&r.dm, key), d) } else { "failed".into() };
            let idle = |key: &str| if r.idle.is_ok() { show(spread(&r.idle, key), 0) } else { "failed".into() };
            vec![
                r.via.title().to_owned(),
                dm("p50_ms", 3),
                dm("p99_ms", 3),
                dm("p999_ms", 3),
                dm("delivered_per_sec", 0),
                dm("delivered_pct", 2),
                dm("server_cpu_us_per_msg", 1),
                dm("client_cpu_us_per_msg", 1),
                dm("udp_drops", 0),
                format!("{}", r.idle_count),
                idle("bytes_per_conn"),
                idle("anon_bytes_per_conn"),
            ]
        })
        .collect();
    let mut s = table(
        &[
            "transport",
            &format!("1:1 p50 ms @ {rate:.0}/s"),
            "p99 ms",
            "p99.9 ms",
            "achieved delivered/s",
            "delivered %",
            "server CPU µs/msg",
            "clients CPU µs/msg",
            "UDP drops",
            "idle conns",
            "server RSS B/idle conn",
            "RssAnon B/idle conn",
        ],
        &cells,
    );
    s.push_str(&format!(
        "\n1:1: {pairs} sender → receiver pairs, {rate:.0} messages/s in all, open loop, latency from each message's \
         intended send time to its arrival. Idle: server memory growth per authenticated idle connection \
         (long-poll: a session holding a poll; SSE: a session holding its stream). CPU µs/msg: CPU time (user + \
         system, `/proc/<pid>/stat`) of the server process, and of the client processes together, during the 1:1 \
         step, per delivered message — what a transport costs whatever else the machine runs. UDP drops: datagrams \
         the kernel dropped during the 1:1 step because a socket's receive buffer was full (`RcvbufErrors`, \
         whole machine).\n\nCommands \
         (`ulimit -n 20000 && cargo build --release -p herald-bench` first):\n\n"
    ));
    for r in rows {
        s.push_str(&format!("- `target/release/{}`\n- `target/release/{}`\n", r.dm_command, r.idle_command));
    }
    for r in rows {
        for (what, res) in [("1:1", &r.dm), ("idle", &r.idle)] {
            if let Err(e) = res {
                s.push_str(&format!("\n**{} {what}: not measured:** {e}\n", r.via.title()));
            }
        }
    }
    s
}

/// The rows as JSON (for `bench/results/`).
pub(crate) fn to_json(rows: &[Row]) -> Value {
    let result = |r: &Result<Value, String>| match r {
        Ok(v) => v.clone(),
        Err(e) => json!({"error": e}),
    };
    rows.iter()
        .map(|r| {
            json!({
                "transport": r.via, "dm_command": r.dm_command, "idle_command": r.idle_command,
                "dm": result(&r.dm), "idle": result(&r.idle),
            })
        })
        .collect()
}

pub(crate) async fn main(args: Args) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let machine = Machine::detect();
    let rows = measure(&args).await?;
    let text = section(&rows, args.rate, args.pairs);
    println!("\n{text}");
    std::fs::create_dir_all(&args.out)?;
    let doc = json!({
        "machine": machine, "runs": args.runs, "seconds": started.elapsed().as_secs_f64(), "rows": to_json(&rows),
    });
    std::fs::write(args.out.join("transports.json"), serde_json::to_string_pretty(&doc)?)?;
    if !args.no_docs {
        let page = std::fs::read_to_string(&args.docs)?;
        let page =
            report::replace_section(&page, "transports", &text).map_err(|e| format!("{}: {e}", args.docs.display()))?;
        std::fs::write(&args.docs, page)?;
        println!("rewrote the transports section of {}", args.docs.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(median: f64, min: f64, max: f64) -> Value {
        json!({"median": median, "min": min, "max": max, "runs": 3})
    }

    #[test]
    fn commands_per_transport() {
        let args: Args = crate::all::parse("transports --runs 2 --sessions 4000 --transports quic,sse").expect("args");
        assert_eq!(args.transports, vec![TransportKind::Quic, TransportKind::Sse]);
        let (dm_cmd, idle_cmd) = args.commands(TransportKind::Sse);
        assert_eq!(dm_cmd, "dm --transport sse --pairs 1000 --rate 10000 --secs 5 --search-steps 0 --runs 2");
        assert_eq!(idle_cmd, "idle --transport sse --connections 4000 --runs 2");
        assert_eq!(args.commands(TransportKind::Quic).1, "idle --transport quic --connections 10000 --runs 2");
        // The generated commands are valid scenario command lines.
        let dm: dm::Args = crate::all::parse(&dm_cmd).expect("dm");
        assert_eq!((dm.transport, dm.search_steps, dm.rate), (TransportKind::Sse, 0, 10_000.0));
        let idle: idle::Args = crate::all::parse(&idle_cmd).expect("idle");
        assert_eq!((idle.transport, idle.connections), (TransportKind::Sse, 4000));
        let all: Args = crate::all::parse("transports").expect("defaults");
        assert_eq!(all.transports, TransportKind::ALL.to_vec());
        assert!(crate::all::parse::<Args>("transports --transports carrier-pigeon").is_err());
    }

    #[test]
    fn section_renders_figures_and_failures() {
        let ok = Row {
            via: TransportKind::Quic,
            idle_count: 10_000,
            dm_command: "herald-load dm --transport quic".into(),
            idle_command: "herald-load idle --transport quic".into(),
            dm: Ok(json!({
                "p50_ms": spread(0.41, 0.4, 0.5), "p99_ms": spread(1.5, 1.2, 2.0), "p999_ms": spread(3.0, 2.5, 4.0),
                "delivered_per_sec": spread(9_990.0, 9_980.0, 10_000.0), "delivered_pct": spread(100.0, 100.0, 100.0),
                "server_cpu_us_per_msg": spread(20.0, 19.0, 21.0), "client_cpu_us_per_msg": spread(30.0, 29.0, 31.0),
                "udp_drops": spread(0.0, 0.0, 12.0),
            })),
            idle: Ok(
                json!({"bytes_per_conn": spread(5_000.0, 4_900.0, 5_100.0), "anon_bytes_per_conn": spread(4_000.0, 3_900.0, 4_100.0)}),
            ),
        };
        let failed = Row {
            via: TransportKind::Longpoll,
            idle_count: 5_000,
            dm_command: "herald-load dm --transport longpoll".into(),
            idle_command: "herald-load idle --transport longpoll".into(),
            dm: Err("too slow".into()),
            idle: Ok(json!({"bytes_per_conn": spread(9_000.0, 8_000.0, 9_500.0)})),
        };
        let s = section(&[ok, failed], 10_000.0, 1_000);
        assert!(
            s.contains(
                "| native QUIC | 0.410 (0.400–0.500) | 1.500 (1.200–2.000) | 3.000 (2.500–4.000) | 9990 (9980–10000) \
             | 100.00 (100.00–100.00) | 20.0 (19.0–21.0) | 30.0 (29.0–31.0) | 0 (0–12) | 10000 | 5000 (4900–5100) | 4000 (3900–4100) |"
            ),
            "{s}"
        );
        assert!(
            s.contains("| long-poll | failed | failed | failed | failed | failed | failed | failed | failed | 5000 | 9000 (8000–9500) | — |"),
            "{s}"
        );
        assert!(s.contains("**long-poll 1:1: not measured:** too slow"));
        assert!(s.contains("- `target/release/herald-load idle --transport quic`"));
        assert!(s.contains("1:1 p50 ms @ 10000/s"));
    }
}
