//! [`MetricsLayer`].

use tower::Layer;

use super::Metrics;
use crate::metrics::CommandMetrics;

/// Wraps a command service in [`Metrics`].
#[derive(Debug, Clone, Default)]
pub struct MetricsLayer {
    table: CommandMetrics,
}

impl MetricsLayer {
    /// A layer recording into `table` (share one table between the layer and anything else that counts
    /// commands, as the hub does).
    pub fn new(table: CommandMetrics) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics::new(inner, self.table.clone())
    }
}
