//! Counts and times every command that passes through the tower stack.
//!
//! The hub puts [`MetricsLayer`] right inside the `Trace` layer, so it sees every outcome of the stack: rate
//! limits, timeouts, refusals and the engine's own results. Commands answered before the stack (`ping`, `auth`,
//! frames that do not decode, commands before authentication) are counted by the hub into the same
//! [`CommandMetrics`] table.

mod future;
mod layer;

pub use self::future::ResponseFuture;
pub use self::layer::MetricsLayer;

use std::convert::Infallible;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use crate::hub::{CommandRequest, CommandResponse};
use crate::metrics::CommandMetrics;

/// The service made by [`MetricsLayer`]: records `herald_commands_total{kind, status}` and
/// `herald_commands_duration_seconds{kind}` for each command.
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    table: CommandMetrics,
}

impl<S> Metrics<S> {
    /// Wraps `inner`, recording into `table`.
    pub fn new(inner: S, table: CommandMetrics) -> Self {
        Self { inner, table }
    }
}

impl<S> Service<CommandRequest> for Metrics<S>
where
    S: Service<CommandRequest, Response = CommandResponse, Error = Infallible>,
{
    type Response = CommandResponse;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let kind = req.command.kind();
        ResponseFuture::new(self.inner.call(req), self.table.clone(), kind, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::id::{SessionId, UserId};
    use crate::model::Principal;
    use crate::protocol::Command;
    use crate::session::{QueueLimits, Session};
    use crate::status::Status;

    fn request(command: Command) -> CommandRequest {
        let user = UserId::new("alice").expect("user id");
        CommandRequest {
            session: Arc::new(Session::new(SessionId(1), QueueLimits { max_frames: 4, max_bytes: 1024 })),
            principal: Arc::new(Principal { user, device: None, expires_at: None }),
            id: 1,
            command,
            trace_parent: None,
        }
    }

    #[test]
    fn counts_each_kind_and_status() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let table = CommandMetrics::new();
            let inner = service_fn(|req: CommandRequest| async move {
                Ok::<_, Infallible>(match req.command {
                    Command::Ping => Ok(crate::protocol::Reply::Ok),
                    _ => Err(Status::forbidden("no")),
                })
            });
            let mut svc = MetricsLayer::new(table).layer(inner);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let channel = crate::id::ChannelId::new("group:g").expect("channel");
            rt.block_on(async {
                for command in [Command::Ping, Command::Ping, Command::Unsubscribe { channel }] {
                    let _ = (&mut svc).oneshot(request(command)).await;
                }
            });
        });
        let mut counts = std::collections::BTreeMap::new();
        let mut timed = 0;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            match value {
                DebugValue::Counter(n) => {
                    counts.insert(format!("{}{{{}}}", key.key().name(), labels.join(",")), n);
                }
                DebugValue::Histogram(v) => timed += v.len(),
                DebugValue::Gauge(_) => {}
            }
        }
        let expected: std::collections::BTreeMap<String, u64> = [
            ("herald_commands_total{kind=ping,status=ok}".to_owned(), 2),
            ("herald_commands_total{kind=unsub,status=forbidden}".to_owned(), 1),
        ]
        .into();
        assert_eq!(counts, expected);
        assert_eq!(timed, 3);
    }
}
