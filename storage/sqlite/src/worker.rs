//! [`Worker`]: the store's hold on one of its threads (the writer, the appender): the signal that asks the thread to
//! finish, and its join handle.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::OpenError;

/// A store thread's stop signal and join handle. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(crate) struct Worker {
    /// What the thread is, for the log line if it panicked ("writer", "appender").
    name: &'static str,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Runs `body` on a thread named `herald-sqlite-<name>` and waits until it reports itself ready (or failed to
    /// start) on the sender it is given. The receiver it is given fires when the worker is asked to stop.
    pub(crate) async fn spawn(
        name: &'static str,
        body: impl FnOnce(oneshot::Receiver<()>, oneshot::Sender<Result<(), OpenError>>) + Send + 'static,
    ) -> Result<Self, OpenError> {
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("herald-sqlite-{name}"))
            .spawn(move || body(shutdown_rx, ready_tx))
            .map_err(|e| OpenError::Writer(e.to_string()))?;
        // Held while waiting: on a failed start, dropping it joins the thread.
        let worker = Self { name, shutdown: Mutex::new(Some(shutdown_tx)), thread: Mutex::new(Some(thread)) };
        match ready_rx.await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Writer(format!("the {name} thread stopped during start-up"))),
        }
    }

    /// Asks the thread to finish (once; later calls do nothing).
    pub(crate) fn stop(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = tx.send(());
        }
    }

    /// The thread, unless it was taken already.
    pub(crate) fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The current-thread runtime a store thread runs its connection on; on failure, reports it on `ready` (the thread
/// then has nothing to do but return).
pub(crate) fn runtime(
    name: &str,
    ready: oneshot::Sender<Result<(), OpenError>>,
) -> Option<(tokio::runtime::Runtime, oneshot::Sender<Result<(), OpenError>>)> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Some((rt, ready)),
        Err(e) => {
            let _ = ready.send(Err(OpenError::Writer(format!("cannot build the {name}'s runtime: {e}"))));
            None
        }
    }
}

impl Drop for Worker {
    /// Stops the thread and waits for it: it finishes what is queued and closes its database. Blocks the dropping
    /// thread for at most about one batch.
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.take_thread()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite {} thread panicked", self.name);
        }
    }
}
