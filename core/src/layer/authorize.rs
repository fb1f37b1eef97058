//! Per-channel authorization.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ResponseFuture;
use crate::auth::{Action, Authorizer};
use crate::hub::{CommandRequest, CommandResponse};
use crate::protocol::Command;
use crate::status::Status;

/// The action a command needs on its channel; `None` for commands that need no channel permission.
pub fn action_for(command: &Command) -> Option<Action> {
    match command {
        Command::Subscribe { .. } | Command::History { .. } | Command::Ack { .. } | Command::Read { .. } => {
            Some(Action::Read)
        }
        Command::Send { .. } | Command::Typing { .. } => Some(Action::Write),
        Command::Create { .. } => Some(Action::Create),
        Command::Unsubscribe { .. } | Command::Auth { .. } | Command::Ping => None,
    }
}

/// Applies an [`Authorizer`] to every command that acts on a channel.
#[derive(Clone)]
pub struct AuthorizeLayer {
    authorizer: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for AuthorizeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeLayer").finish_non_exhaustive()
    }
}

impl AuthorizeLayer {
    /// A layer asking `authorizer`.
    pub fn new(authorizer: Arc<dyn Authorizer>) -> Self {
        Self { authorizer }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, authorizer: self.authorizer.clone() }
    }
}

/// The service made by [`AuthorizeLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    authorizer: Arc<dyn Authorizer>,
}

impl<S> std::fmt::Debug for Authorize<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorize").finish_non_exhaustive()
    }
}

impl<S> Service<CommandRequest> for Authorize<S>
where
    S: Service<CommandRequest, Response = CommandResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = CommandResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> ResponseFuture {
        // Take the service that was driven to readiness; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            if let (Some(action), Some(channel)) = (action_for(&req.command), req.command.channel())
                && let Err(e) = authorizer.authorize(&req.principal, action, channel).await
            {
                return Ok(Err(Status::from(e)));
            }
            inner.call(req).await
        })
    }
}
