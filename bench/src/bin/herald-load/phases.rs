//! Wall time per phase of a scenario — server start, connection ramp, measurement steps, teardown, … — so that
//! `herald-load all` can say where the suite's time goes (printed, and in `summary.json`). The scenarios record
//! into one process-wide log; `all` takes it after each scenario.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The phases recorded since the last [`take`], in the order they happened.
static LOG: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// One phase of a scenario: its total wall time over every time it happened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Phase {
    /// What was done, e.g. `"connect"`.
    pub(crate) phase: &'static str,
    /// Wall time, all occurrences together, seconds.
    pub(crate) secs: f64,
    /// How many times it happened.
    pub(crate) times: usize,
}

/// Adds `d` to phase `name`.
pub(crate) fn record(name: &'static str, d: Duration) {
    if let Ok(mut log) = LOG.lock() {
        log.push((name, d));
    }
}

/// Runs `fut`, adding its wall time to phase `name`.
pub(crate) async fn timed<T>(name: &'static str, fut: impl Future<Output = T>) -> T {
    let t = Instant::now();
    let out = fut.await;
    record(name, t.elapsed());
    out
}

/// Times a phase until it is dropped: `let _phase = phases::start("connect");`.
#[derive(Debug)]
#[must_use = "the phase is timed until this guard is dropped"]
pub(crate) struct Guard {
    name: &'static str,
    started: Instant,
}

/// Starts timing phase `name`; it ends when the returned guard is dropped (also on an early return).
pub(crate) fn start(name: &'static str) -> Guard {
    Guard { name, started: Instant::now() }
}

impl Drop for Guard {
    fn drop(&mut self) {
        record(self.name, self.started.elapsed());
    }
}

/// Takes the phases recorded so far, summed by name, in the order each was first seen.
pub(crate) fn take() -> Vec<Phase> {
    let log = LOG.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    summarize(&log)
}

fn summarize(log: &[(&'static str, Duration)]) -> Vec<Phase> {
    let mut out: Vec<Phase> = Vec::new();
    for &(name, d) in log {
        match out.iter_mut().find(|p| p.phase == name) {
            Some(p) => {
                p.secs += d.as_secs_f64();
                p.times += 1;
            }
            None => out.push(Phase { phase: name, secs: d.as_secs_f64(), times: 1 }),
        }
    }
    out
}

/// One line: `connect 3 × 2.1 s, step 9 × 33.0 s, …, other 1.2 s` (other: the part of `total` no phase covers).
pub(crate) fn line(phases: &[Phase], total: f64) -> String {
    let covered: f64 = phases.iter().map(|p| p.secs).sum();
    let mut parts: Vec<String> = phases.iter().map(|p| format!("{} {} × {:.1} s", p.phase, p.times, p.secs)).collect();
    parts.push(format!("other {:.1} s", (total - covered).max(0.0)));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_summed_by_name_in_first_seen_order() {
        let ms = Duration::from_millis;
        let log = [("connect", ms(1500)), ("step", ms(3000)), ("connect", ms(500)), ("stop", ms(300))];
        let p = summarize(&log);
        let names: Vec<_> = p.iter().map(|p| (p.phase, p.times)).collect();
        assert_eq!(names, vec![("connect", 2), ("step", 1), ("stop", 1)]);
        assert!((p[0].secs - 2.0).abs() < 1e-9);
        assert_eq!(line(&p, 6.0), "connect 2 × 2.0 s, step 1 × 3.0 s, stop 1 × 0.3 s, other 0.7 s");
    }
}
