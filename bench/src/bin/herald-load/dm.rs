//! B: 1:1 messaging. P pairs of users, each pair in its own `dm:` channel (the receiver subscribed, the
//! sender sending), at a fixed total rate spread evenly over the senders; latency from each message's intended
//! send time to its arrival at the recipient. Then a saturation search for the highest rate at which p99 stays
//! within 5 ms with everything delivered: ×1.5 steps up from a passing rate or down from a failing one, then
//! halving the bracket until it is within ±10 % (a later run starts at the previous run's answer); and the
//! highest delivered throughput seen.

use std::time::Duration;

use herald_bench::hist::{self, Latency};
use herald_bench::net::Error;
use herald_bench::report::{Check, Spread, show, table};
use herald_bench::schedule::unix_nanos;
use serde_json::json;

use crate::procs::{self, ServerProc, WorkerProc};
use crate::worker::{Job, Order, Target};
use crate::{Outcome, ServerOpts, TargetKind, TransportKind, percent};

/// Target at 50,000 msg/s: p50 latency, ms.
pub(crate) const P50_TARGET_MS: f64 = 1.0;
/// Target at 50,000 msg/s (and the saturation criterion): p99 latency, ms.
pub(crate) const P99_TARGET_MS: f64 = 5.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The server to measure.
    #[arg(long, value_enum, default_value_t = TargetKind::Herald)]
    pub(crate) target: TargetKind,
    /// How the clients reach Herald.
    #[arg(long, value_enum, default_value_t = TransportKind::Ws)]
    pub(crate) transport: TransportKind,
    /// Sender → receiver pairs (2 connections each).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) pairs: usize,
    /// Total messages per second, all senders together.
    #[arg(long, default_value_t = 50_000.0)]
    pub(crate) rate: f64,
    /// Length of the fixed-rate step, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) secs: f64,
    /// Message body size, bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Runs (fresh server and clients each); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Saturation search steps after the fixed-rate step, at most (0: no search); the search stops earlier once
    /// the answer is bracketed to ±10 %.
    #[arg(long, default_value_t = 5)]
    pub(crate) search_steps: usize,
    /// Length of each search step, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) step_secs: f64,
    /// Connections being opened at once, per client process.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[command(flatten)]
    pub(crate) server: ServerOpts,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) errors: u64,
    pub(crate) latency: Latency,
    /// Deliveries per second, from the step's start to its last delivery.
    pub(crate) delivered_per_sec: f64,
    /// p99 within the target and at least 99.9 % delivered.
    pub(crate) ok: bool,
    /// CPU time of the server process during the step (lead-in and drain included) per delivered message, µs.
    pub(crate) server_cpu_us_per_msg: f64,
    /// The same for the client worker processes together.
    pub(crate) client_cpu_us_per_msg: f64,
    /// UDP datagrams the kernel dropped during the step for want of socket receive buffer (whole machine;
    /// QUIC and WebTransport traffic is UDP).
    pub(crate) udp_drops: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Run {
    fixed: Step,
    search: Vec<Step>,
    /// Highest rate with `ok` (0 when none).
    saturation_rate: f64,
    /// Highest delivered throughput seen.
    max_delivered_per_sec: f64,
}

/// One run's set-up: the server and the pair workers.
struct Setup {
    server: ServerProc,
    workers: Vec<WorkerProc>,
    shares: Vec<usize>,
}

async fn setup(args: &Args) -> Result<Setup, Error> {
    if args.target != TargetKind::Herald && args.transport != TransportKind::Ws {
        return Err("--transport applies to --target herald only".into());
    }
    let server = match args.target {
        TargetKind::Herald => {
            let mut server_args = vec!["--no-rate-limit".to_owned()];
            server_args.extend(args.transport.server_args());
            args.server.start_herald(&server_args).await?
        }
        TargetKind::Socketio => args.server.start_socketio().await?,
        TargetKind::Mosquitto => return Err("B is implemented for herald and socketio".into()),
    };
    let target = match args.target {
        TargetKind::Herald => match args.transport.target(&server) {
            Ok(t) => t,
            Err(e) => {
                server.stop().await?;
                return Err(e);
            }
        },
        _ => Target::Socketio { addr: server.addr },
    };
    let parts = procs::split(args.pairs, (args.server.per_process / 2).max(1));
    let mut workers = Vec::new();
    let mut shares = Vec::new();
    for (k, (first_pair, count)) in parts.into_iter().enumerate() {
        let job = Job::Pairs {
            target,
            first: 2 * first_pair,
            count,
            concurrency: args.concurrency,
            body_bytes: args.body_bytes,
        };
        workers.push(WorkerProc::spawn(format!("dm worker {k}"), &job, args.server.client_threads).await?);
        shares.push(count);
    }
    if let Err(e) = procs::ready_all(&mut workers, Duration::from_secs(300)).await {
        procs::stop_all(workers).await;
        return Err(e);
    }
    Ok(Setup { server, workers, shares })
}

/// Runs one step at `rate` for `secs`; indices from `first_n`.
async fn step(s: &mut Setup, pairs: usize, rate: f64, secs: f64, first_n: u64) -> Result<Step, Error> {
    let _phase = crate::phases::start("step");
    let cpu = |pid: Option<u32>| pid.and_then(|p| herald_bench::cpu_seconds(p).ok()).unwrap_or(0.0);
    let clients_cpu = |s: &Setup| s.workers.iter().map(|w| cpu(w.pid())).sum::<f64>();
    let (server_cpu0, client_cpu0) = (cpu(Some(s.server.pid)), clients_cpu(s));
    let udp0 = herald_bench::udp_rcvbuf_errors();
    let start_ns = unix_nanos() + 300_000_000;
    let total = ((rate * secs) as u64).max(1);
    let drain = 5_000_000_000;
    let deadline_ns = start_ns + (secs * 1e9) as u64 + drain;
    for (w, &share) in s.workers.iter_mut().zip(&s.shares) {
        let fraction = share as f64 / pairs as f64;
        let order = Order::Run {
            start_ns,
            rate: rate * fraction,
            messages: ((total as f64) * fraction).round() as u64,
            first_n,
            deadline_ns,
        };
        w.order(&order).await?;
    }
    let mut reports = Vec::new();
    for w in &mut s.workers {
        reports.push(w.done(Duration::from_secs_f64(secs + 60.0)).await?);
    }
    let h = hist::merge_encoded(reports.iter().map(|r| r.hist.as_str()))?;
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let errors: u64 = reports.iter().map(|r| r.send_errors).sum();
    let last = reports.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
    let elapsed = last.saturating_sub(start_ns) as f64 / 1e9;
    let latency = Latency::of(&h);
    let per_msg = |secs: f64| if delivered > 0 { secs * 1e6 / delivered as f64 } else { 0.0 };
    let server_cpu_us_per_msg = per_msg(cpu(Some(s.server.pid)) - server_cpu0);
    let client_cpu_us_per_msg = per_msg(clients_cpu(s) - client_cpu0);
    let udp_drops = match (udp0, herald_bench::udp_rcvbuf_errors()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let ok = latency.p99_ms <= P99_TARGET_MS && percent(delivered as f64, sent as f64) >= 99.9 && errors == 0;
    Ok(Step {
        rate,
        sent,
        delivered,
        errors,
        latency,
        delivered_per_sec: if elapsed > 0.0 { delivered as f64 / elapsed } else { 0.0 },
        ok,
        server_cpu_us_per_msg,
        client_cpu_us_per_msg,
        udp_drops,
    })
}

/// After a step that left messages undelivered at its deadline, waits for the server and the clients to work
/// off that backlog (at the rate the step delivered, at most 10 s): otherwise the next step of the search
/// measures the previous step's backlog rather than its own rate.
async fn drain_backlog(s: &Step) {
    let backlog = s.sent.saturating_sub(s.delivered);
    if backlog == 0 {
        return;
    }
    let _phase = crate::phases::start("backlog drain");
    let secs = (backlog as f64 / s.delivered_per_sec.max(1_000.0)).min(10.0) + 1.0;
    println!("  ({backlog} messages undelivered at the deadline: waiting {secs:.1} s for the backlog to drain)");
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

fn print_step(label: &str, s: &Step) {
    println!(
        "  {label} {:>9.0} msg/s: sent {} delivered {} ({:.2} %) errors {} | p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.1} ms | {:.0} delivered/s | CPU µs/msg server {:.1} clients {:.1} | UDP drops {} {}",
        s.rate,
        s.sent,
        s.delivered,
        percent(s.delivered as f64, s.sent as f64),
        s.errors,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency.p999_ms,
        s.latency.max_ms,
        s.delivered_per_sec,
        s.server_cpu_us_per_msg,
        s.client_cpu_us_per_msg,
        s.udp_drops,
        if s.ok { "ok" } else { "over" }
    );
}

/// The saturation search brackets the answer to this ratio (±10 %): it stops once the highest passing rate and
/// the lowest failing rate are within it.
const BRACKET: f64 = 1.2;

/// The next rate of the saturation search, from the highest rate known to pass (`lo`) and the lowest known to
/// fail (`hi`), or `None` once they bracket the answer to within [`BRACKET`]. `hint` (the previous run's answer)
/// is tried first, then `hint × 1.2` or `hint / 1.2` to bracket it; otherwise ×1.5 steps up from a passing rate,
/// down from a failing one, and halving the bracket (geometric mean) once there are both.
fn next_rate(lo: Option<f64>, hi: Option<f64>, hint: Option<f64>) -> Option<f64> {
    if let (Some(l), Some(h)) = (lo, hi)
        && h <= l * BRACKET * 1.001
    {
        return None;
    }
    let inside = |r: f64| r > 0.0 && lo.is_none_or(|l| r > l * 1.001) && hi.is_none_or(|h| r < h / 1.001);
    if let Some(h) = hint
        && let Some(r) = [h, h * BRACKET, h / BRACKET].into_iter().find(|&r| inside(r))
    {
        return Some(r);
    }
    match (lo, hi) {
        (Some(l), Some(h)) => Some((l * h).sqrt()),
        (Some(l), None) => Some(l * 1.5),
        (None, Some(h)) => Some(h / 1.5),
        (None, None) => None,
    }
}

async fn one(args: &Args, hint: Option<f64>) -> Result<Run, Error> {
    let mut s = setup(args).await?;
    let result = async {
        let mut first_n = 0;
        let fixed = step(&mut s, args.pairs, args.rate, args.secs, first_n).await?;
        print_step("fixed ", &fixed);
        drain_backlog(&fixed).await;
        first_n += fixed.sent;
        let mut run = Run { max_delivered_per_sec: fixed.delivered_per_sec, ..Run::default() };
        if fixed.ok {
            run.saturation_rate = fixed.rate;
        }
        let (mut lo, mut hi) = if fixed.ok { (Some(fixed.rate), None) } else { (None, Some(fixed.rate)) };
        for _ in 0..args.search_steps {
            let Some(rate) = next_rate(lo, hi, hint) else { break };
            let st = step(&mut s, args.pairs, rate, args.step_secs, first_n).await?;
            print_step("search", &st);
            drain_backlog(&st).await;
            first_n += st.sent;
            run.max_delivered_per_sec = run.max_delivered_per_sec.max(st.delivered_per_sec);
            if st.ok {
                run.saturation_rate = run.saturation_rate.max(st.rate);
                lo = Some(lo.map_or(st.rate, |l| l.max(st.rate)));
            } else {
                hi = Some(hi.map_or(st.rate, |h| h.min(st.rate)));
            }
            run.search.push(st);
        }
        run.fixed = fixed;
        Ok::<_, Error>(run)
    }
    .await;
    procs::stop_all(s.workers).await;
    s.server.stop().await?;
    result
}

pub(crate) async fn run(args: &Args) -> Result<Outcome, Error> {
    let mut runs: Vec<Run> = Vec::new();
    for r in 1..=args.runs {
        println!("B run {r} ({:?} over {}, {} pairs):", args.target, args.transport.name(), args.pairs);
        // The search of a later run starts at the previous run's answer.
        let hint = runs.last().map(|r| r.saturation_rate).filter(|&s| s > 0.0);
        runs.push(one(args, hint).await?);
    }
    let col = |f: fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let p50 = col(|r| r.fixed.latency.p50_ms);
    let p99 = col(|r| r.fixed.latency.p99_ms);
    let p999 = col(|r| r.fixed.latency.p999_ms);
    let delivered = col(|r| percent(r.fixed.delivered as f64, r.fixed.sent as f64));
    let sat = col(|r| r.saturation_rate);
    let max_tp = col(|r| r.max_delivered_per_sec);
    let fixed_tp = col(|r| r.fixed.delivered_per_sec);
    let errors = col(|r| r.fixed.errors as f64);
    let server_cpu = col(|r| r.fixed.server_cpu_us_per_msg);
    let client_cpu = col(|r| r.fixed.client_cpu_us_per_msg);
    let udp_drops = col(|r| r.fixed.udp_drops as f64);
    let name = match args.target {
        TargetKind::Herald => "B",
        _ => "B (Socket.IO peer)",
    };
    let checks = if args.target == TargetKind::Herald {
        vec![
            Check::at_most(
                &format!("B: p50 latency at {} msg/s", args.rate),
                p50.map(|s| s.median),
                P50_TARGET_MS,
                "ms",
                3,
            ),
            Check::at_most(
                &format!("B: p99 latency at {} msg/s", args.rate),
                p99.map(|s| s.median),
                P99_TARGET_MS,
                "ms",
                3,
            ),
        ]
    } else {
        Vec::new()
    };
    let server_name = match (args.target, args.transport) {
        (TargetKind::Herald, TransportKind::Ws) => "herald".to_owned(),
        (TargetKind::Herald, t) => format!("herald ({})", t.name()),
        (t, _) => format!("{t:?}").to_lowercase(),
    };
    let row = vec![
        server_name,
        format!("{}", args.pairs),
        format!("{:.0}", args.rate),
        show(p50, 3),
        show(p99, 3),
        show(p999, 3),
        show(delivered, 2),
        show(sat, 0),
        show(max_tp, 0),
    ];
    let table = table(
        &[
            "server",
            "pairs",
            "msg/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "delivered %",
            "highest rate with p99 ≤ 5 ms",
            "max delivered/s",
        ],
        &[row],
    );
    let json = json!({
        "scenario": name, "target": args.target, "transport": args.transport, "pairs": args.pairs, "rate": args.rate, "secs": args.secs,
        "body_bytes": args.body_bytes, "runs": runs, "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
        "saturation_rate": sat, "max_delivered_per_sec": max_tp, "delivered_per_sec": fixed_tp,
        "delivered_pct": delivered, "send_errors": errors, "server_cpu_us_per_msg": server_cpu,
        "client_cpu_us_per_msg": client_cpu, "udp_drops": udp_drops, "checks": checks,
    });
    Ok(Outcome {
        json,
        checks,
        table,
        figures: vec![
            ("p50_ms", p50.map(|s| s.median)),
            ("p99_ms", p99.map(|s| s.median)),
            ("saturation_rate", sat.map(|s| s.median)),
            ("max_delivered_per_sec", max_tp.map(|s| s.median)),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a server that passes every rate up to `capacity`; returns the rates tried and
    /// the answer.
    fn search(fixed: f64, capacity: f64, hint: Option<f64>, steps: usize) -> (Vec<f64>, f64) {
        let (mut lo, mut hi) = if fixed <= capacity { (Some(fixed), None) } else { (None, Some(fixed)) };
        let mut tried = Vec::new();
        for _ in 0..steps {
            let Some(r) = next_rate(lo, hi, hint) else { break };
            tried.push(r.round());
            if r <= capacity {
                lo = Some(lo.map_or(r, |l: f64| l.max(r)));
            } else {
                hi = Some(hi.map_or(r, |h: f64| h.min(r)));
            }
        }
        (tried, lo.unwrap_or(0.0))
    }

    #[test]
    fn search_without_a_hint_brackets_the_answer_to_ten_percent() {
        let (tried, answer) = search(50_000.0, 28_000.0, None, 10);
        assert_eq!(tried, vec![33_333.0, 22_222.0, 27_217.0, 30_120.0]);
        assert_eq!(answer.round(), 27_217.0);
        let (tried, answer) = search(50_000.0, 80_000.0, None, 10);
        assert_eq!(tried, vec![75_000.0, 112_500.0, 91_856.0, 83_001.0]);
        assert_eq!(answer.round(), 75_000.0);
    }

    #[test]
    fn search_with_a_hint_tries_it_and_its_neighbour() {
        // The hint passes, 1.2 × the hint fails: bracketed in two steps.
        let (tried, answer) = search(50_000.0, 28_000.0, Some(27_000.0), 10);
        assert_eq!(tried, vec![27_000.0, 32_400.0]);
        assert_eq!(answer, 27_000.0);
        // The hint fails, hint / 1.2 passes.
        let (tried, answer) = search(50_000.0, 24_000.0, Some(27_000.0), 10);
        assert_eq!(tried, vec![27_000.0, 22_500.0]);
        assert_eq!(answer, 22_500.0);
        // Far off: the hint and its neighbours, then ordinary steps.
        let (tried, _) = search(50_000.0, 10_000.0, Some(27_000.0), 3);
        assert_eq!(tried, vec![27_000.0, 22_500.0, 15_000.0]);
    }

    #[test]
    fn search_stops_on_a_contradiction_and_at_the_step_limit() {
        assert_eq!(next_rate(Some(30_000.0), Some(20_000.0), Some(25_000.0)), None);
        assert_eq!(next_rate(Some(20_000.0), Some(23_000.0), None), None);
        assert_eq!(search(50_000.0, 1_000.0, None, 2).0.len(), 2);
    }
}
