//! [`Worker`]: the store's hold on one of its threads (the writer, the appender): the signal that asks the thread to
//! finish, and its join handle.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// A store thread's stop signal and join handle. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(crate) struct Worker {
    /// What the thread is, for the log line if it panicked ("writer", "appender").
    name: &'static str,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Holds `thread`, which finishes when `shutdown` fires (or its sender is dropped).
    pub(crate) fn new(name: &'static str, shutdown: oneshot::Sender<()>, thread: JoinHandle<()>) -> Self {
        Self { name, shutdown: Mutex::new(Some(shutdown)), thread: Mutex::new(Some(thread)) }
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
