//! A tracing span per command.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::Instrument;

use super::ResponseFuture;
use crate::hub::{CommandRequest, CommandResponse};
use crate::trace_context::ParentLinker;

/// Runs each command in a `command` span (kind, id, user, session, channel, traceparent) and logs its outcome at
/// debug level. With a [`ParentLinker`], a command with a W3C trace context gets its span linked to the remote
/// parent (see [`trace_context`](crate::trace_context)).
#[derive(Clone, Default)]
pub struct TraceLayer {
    linker: Option<ParentLinker>,
}

impl std::fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer").field("linker", &self.linker.is_some()).finish()
    }
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self { linker: None }
    }

    /// The layer, linking spans of commands with a trace context through `linker`.
    pub fn with_linker(linker: ParentLinker) -> Self {
        Self { linker: Some(linker) }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner, linker: self.linker.clone() }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    linker: Option<ParentLinker>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Trace<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").field("inner", &self.inner).field("linker", &self.linker.is_some()).finish()
    }
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
            traceparent = req.trace_parent.as_ref().map(|t| t.as_str()),
        );
        if let (Some(linker), Some(tp)) = (&self.linker, &req.trace_parent) {
            linker(&span, tp);
        }
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
