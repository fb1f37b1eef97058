//! A tracing span per command.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::Instrument;

use super::ResponseFuture;
use crate::hub::{CommandRequest, CommandResponse};

/// Runs each command in a `command` span (kind, id, user, session) and logs its outcome at debug level.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<CommandRequest> for Trace<S>
where
    S: Service<CommandRequest, Response = CommandResponse, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = CommandResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> ResponseFuture {
        let span = tracing::debug_span!(
            "command",
            kind = req.command.kind().as_str(),
            id = req.id,
            user = %req.principal.user,
            session = %req.session.id(),
            channel = req.command.channel().map(|c| c.as_str()),
        );
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let started = tokio::time::Instant::now();
                let result = fut.await;
                let elapsed_us = started.elapsed().as_micros() as u64;
                match &result {
                    Ok(Ok(_)) => tracing::debug!(elapsed_us, "ok"),
                    Ok(Err(status)) => {
                        tracing::debug!(elapsed_us, code = %status.code, message = %status.message, "failed")
                    }
                    Err(never) => match *never {},
                }
                result
            }
            .instrument(span),
        )
    }
}
