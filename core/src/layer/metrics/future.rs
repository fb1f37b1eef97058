//! The response future of [`Metrics`](super::Metrics).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::hub::CommandResponse;
use crate::metrics::CommandMetrics;
use crate::protocol::CommandKind;

pin_project! {
    /// Records the command's outcome and duration when the inner future completes. Not boxed: the metrics layer
    /// adds no allocation per command.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        table: CommandMetrics,
        kind: CommandKind,
        started: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, table: CommandMetrics, kind: CommandKind, started: Instant) -> Self {
        Self { inner, table, kind, started }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<CommandResponse, Infallible>>,
{
    type Output = Result<CommandResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let outcome = match &result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.code),
            Err(never) => match *never {},
        };
        this.table.record(*this.kind, outcome, this.started.elapsed());
        Poll::Ready(result)
    }
}
