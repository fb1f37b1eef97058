//! Per-command deadline.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use super::ResponseFuture;
use crate::hub::{CommandRequest, CommandResponse};
use crate::protocol::CommandKind;
use crate::status::{Code, Status};

/// Fails a command with `timeout` when it runs longer than the deadline.
///
/// `sub` is exempt: its replay streams an arbitrary backlog to a client at the client's pace, and each store
/// read inside it is bounded by the store's own timeouts.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    deadline: Duration,
}

impl TimeoutLayer {
    /// A layer with `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self { deadline }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, deadline: self.deadline }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    deadline: Duration,
}

impl<S> Service<CommandRequest> for Timeout<S>
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
        let exempt = req.command.kind() == CommandKind::Subscribe;
        let deadline = self.deadline;
        let fut = self.inner.call(req);
        Box::pin(async move {
            if exempt {
                return fut.await;
            }
            match tokio::time::timeout(deadline, fut).await {
                Ok(r) => r,
                Err(_) => Ok(Err(Status::new(
                    Code::Timeout,
                    format!("the command did not finish within {} ms", deadline.as_millis()),
                ))),
            }
        })
    }
}
