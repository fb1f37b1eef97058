//! Tower layers of the command pipeline.
//!
//! Every layer wraps a `Service<CommandRequest, Response = CommandResponse, Error = Infallible>` and keeps that
//! shape: a failure becomes `Ok(Err(Status))`, never a service error, so the connection driver can always
//! answer the client. The hub stacks them as Trace ► Metrics ► Timeout ► RateLimit ► Authorize ► Engine; an
//! application adds its own with [`HubBuilder::map_service`](crate::hub::HubBuilder::map_service).

mod authorize;
pub mod metrics;
mod rate_limit;
mod timeout;
mod trace;

pub use authorize::{Authorize, AuthorizeLayer, action_for};
pub use metrics::{Metrics, MetricsLayer};
pub use rate_limit::{KeyedRateLimiter, RateLimitLayer, RateLimitService, RateLimited};
pub use timeout::{Timeout, TimeoutLayer};
pub use trace::{Trace, TraceLayer};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use crate::hub::CommandResponse;

/// The boxed future every layer here returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<CommandResponse, Infallible>> + Send>>;
