//! The [`Transport`] trait: a listener that feeds connections to the hub.
//!
//! A transport owns its listener; for each connection it adapts the connection to
//! [`driver::Connection`](crate::driver::Connection) and calls [`driver::run`](crate::driver::run). It never
//! interprets frames: decoding, dispatch, acks and resume live in the driver and the hub, once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use async_trait::async_trait;

use crate::hub::Hub;
use crate::store::BoxError;

/// A future that resolves when the server should stop accepting connections.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a transport can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed while serving.
    #[error("transport failed: {0}")]
    Serve(#[source] BoxError),
}

/// A network (or in-process) transport. Object-safe: a configuration picks transports at run time.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs ("websocket", "quic", ...).
    fn name(&self) -> &'static str;

    /// Serves connections for `hub` until `shutdown` resolves; then stops accepting, asks open sessions to
    /// close (`going away`) and returns once they have.
    async fn serve(self: Box<Self>, hub: Hub, shutdown: Shutdown) -> Result<(), TransportError>;
}
