//! The in-process transport: a connection made of two channels, driven by the same
//! [`driver::run`] as every network transport.
//!
//! Tests, benchmarks and server-side bots use it to take exactly the path a network client takes.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::auth::Credentials;
use crate::driver::{self, CloseReason, ConnError, Connection, Inbound};
use crate::hub::Hub;

/// What the server side of an in-process connection sends to the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerItem {
    /// One protocol frame.
    Frame(Bytes),
    /// The server closed the connection.
    Close(CloseReason),
}

/// The server side of an in-process connection.
#[derive(Debug)]
pub struct InProcConnection {
    rx: mpsc::Receiver<Inbound>,
    tx: mpsc::Sender<ServerItem>,
}

impl Connection for InProcConnection {
    async fn recv(&mut self) -> Option<Result<Inbound, ConnError>> {
        self.rx.recv().await.map(Ok)
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        for f in frames {
            self.tx.send(ServerItem::Frame(f.clone())).await.map_err(|e| ConnError::Io(Box::new(e)))?;
        }
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        Ok(())
    }

    async fn close(self, reason: CloseReason) {
        let _ = self.tx.send(ServerItem::Close(reason)).await;
    }

    fn transport(&self) -> &'static str {
        "inproc"
    }
}

/// The client side of an in-process connection.
#[derive(Debug)]
pub struct InProcClient {
    tx: mpsc::Sender<Inbound>,
    rx: mpsc::Receiver<ServerItem>,
}

impl InProcClient {
    /// Sends one frame to the server. False when the connection is gone.
    pub async fn send(&self, frame: impl Into<Bytes>) -> bool {
        self.tx.send(Inbound::Frame(frame.into())).await.is_ok()
    }

    /// Sends a non-frame item (for tests of unsupported frame types).
    pub async fn send_item(&self, item: Inbound) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// Receives the next item; `None` when the server side is gone.
    pub async fn recv(&mut self) -> Option<ServerItem> {
        self.rx.recv().await
    }
}

/// Opens an in-process connection to `hub`, optionally authenticated at connect time.
///
/// The server side runs on a spawned task; dropping the client ends it.
pub fn connect(hub: &Hub, credentials: Option<Credentials>) -> InProcClient {
    let (client_tx, server_rx) = mpsc::channel(64);
    let (server_tx, client_rx) = mpsc::channel(256);
    let conn = InProcConnection { rx: server_rx, tx: server_tx };
    tokio::spawn(driver::run(hub.clone(), conn, credentials));
    InProcClient { tx: client_tx, rx: client_rx }
}
