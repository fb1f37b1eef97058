//! Reading what the hub records through the `metrics` facade, in process.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Totals by `name{label=value,...}` (labels in registration order; histograms as `name{...}:count`), from the
/// process-wide debugging recorder. Its snapshots drain what was recorded since the previous one, so they are
/// added up here.
#[derive(Debug)]
pub struct Totals {
    snapshotter: Snapshotter,
    totals: HashMap<String, f64>,
}

impl Totals {
    /// Installs a debugging recorder as the process-wide one (once per test binary: one test per binary).
    ///
    /// # Panics
    /// If a recorder is installed already.
    pub fn install() -> Self {
        let recorder = DebuggingRecorder::new();
        let totals = Self { snapshotter: recorder.snapshotter(), totals: HashMap::new() };
        recorder.install().expect("the only recorder of this test binary");
        totals
    }

    /// Everything recorded so far.
    pub fn take(&mut self) -> &HashMap<String, f64> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            let (name, delta) = match value {
                DebugValue::Counter(n) => (name, n as f64),
                DebugValue::Gauge(g) => (name, g.into_inner()),
                DebugValue::Histogram(h) => (format!("{name}:count"), h.len() as f64),
            };
            *self.totals.entry(name).or_default() += delta;
        }
        &self.totals
    }
}
