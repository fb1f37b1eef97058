//! [`Detached`]: runs a future in the caller's task, and moves it to a task of its own only if the caller stops
//! waiting for it before it finished.
//!
//! A send must not be abandoned halfway: its append may be part of a batch holding other senders' messages, and a
//! stored message must be published. Spawning a task for every send guaranteed that, at the price of a task (an
//! allocation, a trip through the scheduler, often a wake-up of another worker thread) per message. With a store
//! that answers at once (the memory store, a cache hit), the whole send completes in its first poll; `Detached`
//! then costs one allocation. Only when the caller's future is dropped while the send is still pending (the
//! connection closed, the command timed out) does the rest of the work go to a task of its own.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The work panicked; the payload is what the panic carried.
pub(crate) struct Panicked(pub(crate) Box<dyn Any + Send>);

impl std::fmt::Debug for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text =
            self.0.downcast_ref::<&str>().copied().or_else(|| self.0.downcast_ref::<String>().map(|s| s.as_str()));
        f.debug_tuple("Panicked").field(&text.unwrap_or("(not a string)")).finish()
    }
}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A future that runs in the task that polls it and, if dropped before it completed, finishes in a task of its
/// own (on the current tokio runtime). A panic of the work is caught and returned as [`Panicked`], as a spawned
/// task's `JoinError` would report it, so that it does not take the caller's task (a whole connection) down.
pub(crate) struct Detached<T: Send + 'static> {
    /// `None` once it completed (or panicked).
    work: Option<BoxFuture<T>>,
}

impl<T: Send + 'static> Detached<T> {
    /// Wraps `work`; nothing runs before the first poll.
    pub(crate) fn new(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self { work: Some(Box::pin(work)) }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Detached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached").field("pending", &self.work.is_some()).finish()
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Taken out while it is polled: if it panics, it is dropped here and never handed to a task by `drop`.
        let Some(mut work) = self.work.take() else {
            // Polled after completion: a caller's bug; never resolves again.
            return Poll::Pending;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => {
                self.work = Some(work);
                Poll::Pending
            }
            Err(payload) => Poll::Ready(Err(Panicked(payload))),
        }
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = work.await;
                });
            }
            // Only outside any runtime (a runtime being torn down drops its tasks, spawned ones included).
            Err(_) => tracing::warn!("pending work dropped outside a tokio runtime; it cannot be finished"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn completes_inline_without_a_task() {
        let value = Detached::new(async { 7 }).await.unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(value, 7);
    }

    #[tokio::test]
    async fn finishes_in_a_task_of_its_own_when_dropped_while_pending() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let flag = finished.clone();
        let mut work = Detached::new(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
            let _ = done_tx.send(());
        });
        // Poll once (pending), then drop the waiter.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut work).poll(cx))).await;
        assert!(first.is_pending());
        drop(work);
        assert!(!finished.load(Ordering::SeqCst));
        let _ = go.send(());
        done_rx.await.unwrap_or_else(|_| panic!("the detached work was dropped instead of finished"));
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_is_returned_not_propagated() {
        let outcome = Detached::new(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        })
        .await;
        let Err(p) = outcome else { panic!("the panic was not reported") };
        assert!(format!("{p}").contains("boom"));
        // A panicked future is not polled again: nothing left to detach.
    }
}
