//! C: fan-out to one large group. `--members` receiver connections (10,000 by default) subscribed to one
//! group (Herald `group:bench`; MQTT topic `bench/fanout`; Socket.IO room `bench`), one publisher sending at a
//! fixed rate. Per message: intended send time → the moment the *last* recipient got it (each recipient
//! records its receive time in a shared per-message slot with an atomic max; worker processes report their
//! slots and the coordinator takes the max). Deliveries per second over the step.

use std::time::Duration;

use herald_bench::hist::{self, Latency};
use herald_bench::net::Error;
use herald_bench::report::{Check, Spread, show, table};
use herald_bench::schedule::{Schedule, unix_nanos};
use serde_json::json;

use crate::procs::{self, ServerProc, WorkerProc};
use crate::worker::{Job, Order, StepReport, Target};
use crate::{Outcome, ServerOpts, TargetKind, percent};

/// Target: deliveries per second at the target rate.
pub(crate) const DELIVERIES_TARGET: f64 = 1_000_000.0;
/// Target: publish-to-last-delivery p99, ms.
pub(crate) const LAST_P99_TARGET_MS: f64 = 50.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The server to measure.
    #[arg(long, value_enum, default_value_t = TargetKind::Herald)]
    pub(crate) target: TargetKind,
    /// Subscribed receiver connections.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) members: usize,
    /// Publish rates to step through, messages per second (each message goes to every member).
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    pub(crate) rates: Vec<f64>,
    /// The rate the targets are checked at (must be one of `--rates`).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) check_rate: f64,
    /// Length of each step, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) step_secs: f64,
    /// Message body size, bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Runs (fresh server and clients each); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Let the runs share one server and one set of connections (faster; runs after the first find the server
    /// warm). A run that left a backlog (a step with less than 99.9 % delivered) is still followed by a fresh
    /// set-up, or the next run would measure that backlog.
    #[arg(long)]
    pub(crate) shared_setup: bool,
    /// Connections being opened at once, per client process.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[command(flatten)]
    pub(crate) server: ServerOpts,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) messages: u64,
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    /// Deliveries per second from the step's start to its last delivery.
    pub(crate) deliveries_per_sec: f64,
    /// Per message, intended send → last recipient (incomplete messages count as the step's deadline).
    pub(crate) last_delivery: Latency,
    /// Messages that did not reach every member before the deadline.
    pub(crate) incomplete: u64,
    /// Per delivery, intended send → that recipient.
    pub(crate) delivery: Latency,
    pub(crate) dropped: usize,
    /// Slow-consumer `resync` events (Herald), all receivers together, so far in the run.
    pub(crate) resyncs: u64,
}

/// Per message of a step: the last receive time over every report and the number of deliveries.
pub(crate) fn last_deliveries(reports: &[StepReport], messages: usize) -> Vec<(u64, u64)> {
    let mut out = vec![(0u64, 0u64); messages];
    for r in reports {
        for (m, slot) in out.iter_mut().enumerate() {
            if let Some(&t) = r.last_ns.get(m) {
                slot.0 = slot.0.max(t);
            }
            if let Some(&c) = r.counts.get(m) {
                slot.1 += u64::from(c);
            }
        }
    }
    out
}

/// Latency of "the last recipient got it" per message; a message that did not reach `members` recipients
/// counts as `deadline_ns`. Returns the histogram and the number of such incomplete messages.
pub(crate) fn last_delivery_hist(
    per_message: &[(u64, u64)],
    schedule: &Schedule,
    members: u64,
    deadline_ns: u64,
) -> (hdrhistogram::Histogram<u64>, u64) {
    let mut h = hist::new_histogram();
    let mut incomplete = 0;
    for (m, &(last, count)) in per_message.iter().enumerate() {
        let intended = schedule.intended_ns(m as u64);
        let at = if count >= members {
            last
        } else {
            incomplete += 1;
            deadline_ns.max(last)
        };
        hist::record_nanos(&mut h, at.saturating_sub(intended));
    }
    (h, incomplete)
}

struct Setup {
    server: Option<ServerProc>,
    publisher: WorkerProc,
    receivers: Vec<WorkerProc>,
}

async fn setup(args: &Args, track: usize) -> Result<Setup, Error> {
    let (server, target, channel) = match args.target {
        TargetKind::Herald => {
            let extra = vec!["--no-rate-limit".to_owned(), format!("--group-members={}", args.members + 1)];
            let s = args.server.start_herald(&extra).await?;
            let t = Target::Herald { addr: s.addr };
            (Some(s), t, herald_bench::BENCH_GROUP.to_owned())
        }
        TargetKind::Mosquitto => (None, Target::Mqtt { addr: args.server.mqtt_addr }, "bench/fanout".to_owned()),
        TargetKind::Socketio => {
            let s = args.server.start_socketio().await?;
            let t = Target::Socketio { addr: s.addr };
            (Some(s), t, "bench".to_owned())
        }
    };
    // Receivers are users 1..=members; the publisher is user 0 (a member of the group too).
    let mut receivers = Vec::new();
    for (k, (first, count)) in procs::split(args.members, args.server.per_process).into_iter().enumerate() {
        let job = Job::Connect {
            target,
            first: first + 1,
            count,
            concurrency: args.concurrency,
            subscribe: Some(channel.clone()),
            ping_bytes: 0,
            track,
        };
        receivers.push(WorkerProc::spawn(format!("fanout receivers {k}"), &job, args.server.client_threads).await?);
    }
    let job = Job::Publish { target, first: 0, channel, body_bytes: args.body_bytes };
    let mut publisher = WorkerProc::spawn("fanout publisher".into(), &job, 1).await?;
    let ready = async {
        procs::ready_all(&mut receivers, Duration::from_secs(300)).await?;
        publisher.ready(Duration::from_secs(60)).await
    }
    .await;
    if let Err(e) = ready {
        procs::stop_all(receivers).await;
        publisher.stop().await;
        return Err(e);
    }
    Ok(Setup { server, publisher, receivers })
}

async fn step(s: &mut Setup, args: &Args, rate: f64, first_n: u64) -> Result<Step, Error> {
    let _phase = crate::phases::start("step");
    let start_ns = unix_nanos() + 300_000_000;
    let schedule = Schedule::for_duration(start_ns, rate, Duration::from_secs_f64(args.step_secs), 1);
    let deadline_ns = schedule.end_ns() + 5_000_000_000;
    let order = Order::Run { start_ns, rate, messages: schedule.count, first_n, deadline_ns };
    for w in &mut s.receivers {
        w.order(&order).await?;
    }
    s.publisher.order(&order).await?;
    let wait = Duration::from_secs_f64(args.step_secs + 60.0);
    let published = s.publisher.done(wait).await?;
    let mut reports = Vec::new();
    for w in &mut s.receivers {
        reports.push(w.done(wait).await?);
    }
    let per_message = last_deliveries(&reports, schedule.count as usize);
    let members = args.members as u64;
    let (last_h, incomplete) = last_delivery_hist(&per_message, &schedule, members, deadline_ns);
    let delivery = hist::merge_encoded(reports.iter().map(|r| r.hist.as_str()))?;
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let last = reports.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
    let elapsed = last.saturating_sub(start_ns) as f64 / 1e9;
    Ok(Step {
        rate,
        messages: schedule.count,
        sent: published.sent,
        expected: published.sent * members,
        delivered,
        deliveries_per_sec: if elapsed > 0.0 { delivered as f64 / elapsed } else { 0.0 },
        last_delivery: Latency::of(&last_h),
        incomplete,
        delivery: Latency::of(&delivery),
        dropped: reports.iter().map(|r| r.dropped).sum(),
        resyncs: reports.iter().map(|r| r.resyncs).sum(),
    })
}

impl Setup {
    async fn stop(self) -> Result<(), Error> {
        procs::stop_all(self.receivers).await;
        self.publisher.stop().await;
        if let Some(server) = self.server {
            server.stop().await?;
        }
        Ok(())
    }
}

/// One run: every rate of `--rates` in turn on `s`, message indices from `*first_n` on. Stops early when a step
/// is saturated; returns the steps and whether a backlog was left behind.
async fn one(s: &mut Setup, args: &Args, first_n: &mut u64) -> Result<(Vec<Step>, bool), Error> {
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let st = step(s, args, rate, *first_n).await?;
        println!(
            "  {:>6.0} msg/s × {}: delivered {}/{} ({:.2} %) = {:.0}/s | last delivery p50 {:.1} p99 {:.1} max {:.1} ms ({} incomplete) | per delivery p50 {:.1} p99 {:.1} ms{}",
            st.rate,
            args.members,
            st.delivered,
            st.expected,
            percent(st.delivered as f64, st.expected as f64),
            st.deliveries_per_sec,
            st.last_delivery.p50_ms,
            st.last_delivery.p99_ms,
            st.last_delivery.max_ms,
            st.incomplete,
            st.delivery.p50_ms,
            st.delivery.p99_ms,
            if st.dropped + st.resyncs as usize > 0 {
                format!(" | {} connections dropped, {} resyncs", st.dropped, st.resyncs)
            } else {
                String::new()
            },
        );
        *first_n += st.messages;
        let saturated = percent(st.delivered as f64, st.expected as f64) < 99.9;
        steps.push(st);
        if saturated {
            // Its backlog is still being delivered: a higher rate would measure that backlog, not itself.
            if steps.len() < args.rates.len() {
                println!("  (saturated at {rate:.0} msg/s: the higher rates are not run)");
            }
            return Ok((steps, true));
        }
    }
    Ok((steps, false))
}

pub(crate) async fn run(args: &Args) -> Result<Outcome, Error> {
    // Message indices go on from run to run on a shared set-up, so its receivers track every run's messages.
    let per_run: usize = args
        .rates
        .iter()
        .map(|r| Schedule::for_duration(0, *r, Duration::from_secs_f64(args.step_secs), 1).count as usize)
        .sum();
    let track = if args.shared_setup { per_run * args.runs.max(1) } else { per_run };
    let mut runs: Vec<Vec<Step>> = Vec::new();
    let mut current: Option<Setup> = None;
    let mut first_n = 0;
    for r in 1..=args.runs {
        let s = match &mut current {
            Some(s) => s,
            None => {
                first_n = 0;
                current.insert(setup(args, track).await?)
            }
        };
        println!("C run {r} ({:?}, {} members):", args.target, args.members);
        let (steps, backlog) = match one(s, args, &mut first_n).await {
            Ok(x) => x,
            Err(e) => {
                if let Some(s) = current.take() {
                    let _ = s.stop().await;
                }
                return Err(e);
            }
        };
        runs.push(steps);
        if args.shared_setup && backlog && r < args.runs {
            println!("  (a backlog was left: the next run gets a fresh server and fresh connections)");
        }
        if (!args.shared_setup || backlog)
            && let Some(s) = current.take()
        {
            s.stop().await?;
        }
    }
    if let Some(s) = current.take() {
        s.stop().await?;
    }
    let mut rows = Vec::new();
    let mut last_p99_at_check = None;
    for (i, &rate) in args.rates.iter().enumerate() {
        let col = |f: fn(&Step) -> f64| Spread::of(&runs.iter().filter_map(|r| r.get(i)).map(f).collect::<Vec<_>>());
        let dps = col(|s| s.deliveries_per_sec);
        let last_p50 = col(|s| s.last_delivery.p50_ms);
        let last_p99 = col(|s| s.last_delivery.p99_ms);
        let del_p99 = col(|s| s.delivery.p99_ms);
        let pct = col(|s| percent(s.delivered as f64, s.expected as f64));
        if (rate - args.check_rate).abs() < 1e-9 {
            last_p99_at_check = last_p99.map(|s| s.median);
        }
        rows.push(vec![
            format!("{:?}", args.target).to_lowercase(),
            format!("{}", args.members),
            format!("{rate:.0}"),
            show(dps, 0),
            show(pct, 2),
            show(last_p50, 1),
            show(last_p99, 1),
            show(del_p99, 1),
        ]);
    }
    // Throughput: per run, the best step that delivered (nearly) everything; then the median over runs.
    let best: Vec<f64> = runs
        .iter()
        .map(|r| {
            r.iter()
                .filter(|s| percent(s.delivered as f64, s.expected as f64) >= 99.9)
                .map(|s| s.deliveries_per_sec)
                .fold(0.0, f64::max)
        })
        .collect();
    let best = Spread::of(&best);
    let checks = if args.target == TargetKind::Herald {
        vec![
            Check::at_least(
                &format!("C: deliveries per second to {} members (best step with ≥ 99.9 % delivered)", args.members),
                best.map(|s| s.median),
                DELIVERIES_TARGET,
                "/s",
                0,
            ),
            Check::at_most(
                &format!("C: publish-to-last-delivery p99 at {} msg/s", args.check_rate),
                last_p99_at_check,
                LAST_P99_TARGET_MS,
                "ms",
                1,
            ),
        ]
    } else {
        Vec::new()
    };
    let table = table(
        &[
            "server",
            "members",
            "msg/s",
            "deliveries/s",
            "delivered %",
            "last delivery p50 ms",
            "last delivery p99 ms",
            "per-delivery p99 ms",
        ],
        &rows,
    ) + &format!("\nBest deliveries/s with ≥ 99.9 % delivered, per run: {}\n", show(best, 0));
    let json = json!({
        "scenario": "C", "target": args.target, "members": args.members, "rates": args.rates,
        "step_secs": args.step_secs, "body_bytes": args.body_bytes, "runs": runs, "checks": checks,
    });
    Ok(Outcome {
        json,
        checks,
        table,
        figures: vec![("deliveries_per_sec", best.map(|s| s.median)), ("last_p99_ms", last_p99_at_check)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(last: Vec<u64>, counts: Vec<u32>) -> StepReport {
        StepReport { last_ns: last, counts, ..StepReport::default() }
    }

    #[test]
    fn last_delivery_is_the_max_over_processes_and_incomplete_counts_as_deadline() {
        let a = report(vec![1_010_000_000, 1_020_000_000], vec![2, 2]);
        let b = report(vec![1_030_000_000, 0], vec![2, 1]);
        let per = last_deliveries(&[a, b], 2);
        assert_eq!(per, vec![(1_030_000_000, 4), (1_020_000_000, 3)]);
        let schedule = Schedule { start_ns: 1_000_000_000, rate: 100.0, count: 2, senders: 1 };
        let (h, incomplete) = last_delivery_hist(&per, &schedule, 4, 2_000_000_000);
        assert_eq!(incomplete, 1);
        // Message 0: 30 ms after its intended time. Message 1 (intended at 1.01 s): incomplete, so 990 ms.
        assert_eq!(h.len(), 2);
        assert!((h.min() as f64 - 30_000.0).abs() < 50.0, "{}", h.min());
        assert!((h.max() as f64 - 990_000.0).abs() < 1_000.0, "{}", h.max());
    }
}
