//! One connection's server-side state: its principal, its bounded outbound queue and its subscriptions.
//!
//! Outgoing frames are [`Bytes`] shared between all recipients of the same event. The queue is bounded in
//! frames and bytes. Live fan-out never waits: when a session's queue is full, the session is dropped from
//! live delivery of every channel it follows and is told to `resync` once its queue has drained (it then
//! resubscribes with `since` and recovers from the log). Replies and replays wait for room instead, so they
//! are never dropped; they are produced by the session's own command, one at a time, which bounds them too.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::driver::CloseReason;
use crate::id::{ChannelId, SessionId};
use crate::model::{Principal, Seq};
use crate::trace_context::TraceParent;

/// Bounds of one session's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most frames queued.
    pub max_frames: usize,
    /// Most bytes queued.
    pub max_bytes: usize,
}

#[derive(Debug, Default)]
struct OutState {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
    close_reason: Option<CloseReason>,
}

/// The state of one subscription of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubState {
    /// Replaying from the log; live events are not delivered, only noted.
    Replaying {
        /// A live message arrived since the last check.
        live_seen: bool,
    },
    /// Live: deliver messages with seq == last + 1.
    Live {
        /// Last seq delivered.
        last: Seq,
    },
    /// Dropped from live delivery after `last` (slow consumer or a gap); a `resync` is due.
    Lagged {
        /// Last seq delivered.
        last: Seq,
    },
}

/// What happened when a live message was offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Not for this session (duplicate, replaying, lagged, not subscribed, closed).
    Done,
    /// Queued.
    Queued,
    /// The session just lagged and must be woken to send its resync.
    Lagged,
    /// An ephemeral event was dropped: the queue is full.
    Dropped,
}

/// The shared state of one session. Held by the hub (for fan-out) and by its connection driver.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    principal: OnceLock<Arc<Principal>>,
    out: Mutex<OutState>,
    limits: QueueLimits,
    /// Wakes the writer (the connection's driver, the only task that waits for it): frames queued, lagged, or
    /// closed. An `AtomicWaker` rather than a `Notify`: one waiter, no lock and no wait list, and waiting holds
    /// no state in the driver's future.
    writer: AtomicWaker,
    /// Wakes a producer waiting for room.
    room: Notify,
    subs: Mutex<HashMap<ChannelId, SubState>>,
    /// A subscription lagged and its `resync` is due. Outside `out` so that the writer checks it after every
    /// write without taking the lock again.
    lagged: AtomicBool,
    /// The trace context of the connection's upgrade request, if it carried one.
    trace_parent: OnceLock<TraceParent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections cannot leave the data half-updated in a way
    // that matters more than losing the session; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queue refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// Over the limits.
    Full,
    /// The session is closed.
    Closed,
}

impl Session {
    pub(crate) fn new(id: SessionId, limits: QueueLimits) -> Self {
        Self {
            id,
            principal: OnceLock::new(),
            out: Mutex::new(OutState::default()),
            limits,
            writer: AtomicWaker::new(),
            room: Notify::new(),
            subs: Mutex::new(HashMap::new()),
            lagged: AtomicBool::new(false),
            trace_parent: OnceLock::new(),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The authenticated principal, if the session has authenticated.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.get()
    }

    /// The trace context the connection was opened with (a `traceparent` header on the upgrade request): the
    /// parent of every command of the session that carries none of its own.
    pub fn trace_parent(&self) -> Option<&TraceParent> {
        self.trace_parent.get()
    }

    /// Sets the connection's trace context (once).
    pub(crate) fn set_trace_parent(&self, tp: TraceParent) {
        let _ = self.trace_parent.set(tp);
    }

    /// Sets the principal; false if the session was already authenticated.
    pub(crate) fn set_principal(&self, p: Arc<Principal>) -> bool {
        self.principal.set(p).is_ok()
    }

    /// Queues `frame` if it fits (a frame always fits an empty queue).
    pub(crate) fn try_push(&self, frame: Bytes) -> Result<(), QueueError> {
        let mut out = lock(&self.out);
        if out.closed {
            return Err(QueueError::Closed);
        }
        let fits = out.frames.is_empty()
            || (out.frames.len() < self.limits.max_frames && out.bytes + frame.len() <= self.limits.max_bytes);
        if !fits {
            return Err(QueueError::Full);
        }
        let was_empty = out.frames.is_empty();
        out.bytes += frame.len();
        out.frames.push_back(frame);
        drop(out);
        if was_empty {
            self.writer.wake();
        }
        Ok(())
    }

    /// Queues `frame`, waiting for room. Returns false if the session closed meanwhile.
    pub(crate) async fn push(&self, frame: Bytes) -> bool {
        loop {
            let room = self.room.notified();
            match self.try_push(frame.clone()) {
                Ok(()) => return true,
                Err(QueueError::Closed) => return false,
                Err(QueueError::Full) => room.await,
            }
        }
    }

    /// Moves every queued frame into `batch`. Returns false when the session is closed and drained.
    pub(crate) fn drain_into(&self, batch: &mut Vec<Bytes>) -> bool {
        let mut out = lock(&self.out);
        let had = !out.frames.is_empty();
        batch.extend(out.frames.drain(..));
        out.bytes = 0;
        // Give back memory after a burst: an idle session should hold no queue buffer.
        if out.frames.capacity() > 64 {
            out.frames.shrink_to(16);
        }
        let open = !out.closed;
        drop(out);
        if had {
            self.room.notify_one();
        }
        open || had
    }

    /// Waits until there is something for the writer: frames, a due resync, or closure. Only one task (the
    /// connection's driver) may wait at a time.
    pub(crate) fn writable(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            // Register first, then look: a frame queued in between wakes the task registered here.
            self.writer.register(cx.waker());
            let out = lock(&self.out);
            if !out.frames.is_empty() || out.closed || self.lagged.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Marks the session closed: producers stop; the writer sends what is queued, then closes the connection
    /// with `reason` (the first reason given wins).
    pub fn close(&self, reason: Option<CloseReason>) {
        let mut out = lock(&self.out);
        out.closed = true;
        if out.close_reason.is_none() {
            out.close_reason = reason;
        }
        drop(out);
        self.writer.wake();
        self.room.notify_one();
    }

    /// The reason given when the session was closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.out).close_reason
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.out).closed
    }

    // --- subscriptions -------------------------------------------------------------------------------------

    /// Number of subscriptions.
    pub(crate) fn subscription_count(&self) -> usize {
        lock(&self.subs).len()
    }

    /// Whether the session follows `channel` (in any state).
    pub(crate) fn is_subscribed(&self, channel: &ChannelId) -> bool {
        lock(&self.subs).contains_key(channel)
    }

    /// Starts (or restarts) a subscription in the replaying state.
    pub(crate) fn begin_replay(&self, channel: ChannelId) {
        lock(&self.subs).insert(channel, SubState::Replaying { live_seen: false });
    }

    /// Ends a replay that reached `last`: goes live when no live message arrived meanwhile and returns true;
    /// otherwise clears the note and returns false (the caller reads the log again). `None` when the
    /// subscription is gone (unsubscribed or lagged meanwhile).
    pub(crate) fn try_go_live(&self, channel: &ChannelId, last: Seq) -> Option<bool> {
        let mut subs = lock(&self.subs);
        let state = subs.get_mut(channel)?;
        match *state {
            SubState::Replaying { live_seen: false } => {
                *state = SubState::Live { last };
                Some(true)
            }
            SubState::Replaying { live_seen: true } => {
                *state = SubState::Replaying { live_seen: false };
                Some(false)
            }
            SubState::Live { .. } | SubState::Lagged { .. } => None,
        }
    }

    /// Removes a subscription; true if it existed.
    pub(crate) fn remove_subscription(&self, channel: &ChannelId) -> bool {
        lock(&self.subs).remove(channel).is_some()
    }

    /// Every channel the session follows.
    pub(crate) fn channels(&self) -> Vec<ChannelId> {
        lock(&self.subs).keys().cloned().collect()
    }

    /// Offers a live message. Delivers it when it is the next one in order; skips duplicates; on a full
    /// queue or a gap, stops live delivery and schedules a resync.
    pub(crate) fn offer_message(&self, channel: &ChannelId, seq: Seq, frame: &Bytes) -> Offer {
        let mut subs = lock(&self.subs);
        let Some(state) = subs.get_mut(channel) else { return Offer::Done };
        match *state {
            SubState::Replaying { .. } => {
                *state = SubState::Replaying { live_seen: true };
                Offer::Done
            }
            SubState::Lagged { .. } => Offer::Done,
            SubState::Live { last } if seq <= last => Offer::Done,
            SubState::Live { last } if seq == last + 1 => match self.try_push(frame.clone()) {
                Ok(()) => {
                    *state = SubState::Live { last: seq };
                    Offer::Queued
                }
                Err(QueueError::Closed) => Offer::Done,
                Err(QueueError::Full) => {
                    // Slow consumer: stop live delivery everywhere; the client recovers from the log.
                    for s in subs.values_mut() {
                        if let SubState::Live { last } = *s {
                            *s = SubState::Lagged { last };
                        }
                    }
                    self.mark_lagged()
                }
            },
            SubState::Live { last } => {
                // A gap: a publish was lost on the way. Only this channel needs recovery.
                *state = SubState::Lagged { last };
                self.mark_lagged()
            }
        }
    }

    fn mark_lagged(&self) -> Offer {
        self.lagged.store(true, Ordering::Release);
        self.writer.wake();
        Offer::Lagged
    }

    /// Offers an ephemeral event (typing, receipt): queued only to live subscribers with room; dropped otherwise.
    pub(crate) fn offer_ephemeral(&self, channel: &ChannelId, frame: &Bytes) -> Offer {
        let live = matches!(lock(&self.subs).get(channel), Some(SubState::Live { .. }));
        if !live {
            return Offer::Done;
        }
        match self.try_push(frame.clone()) {
            Ok(()) => Offer::Queued,
            Err(QueueError::Full) => Offer::Dropped,
            Err(QueueError::Closed) => Offer::Done,
        }
    }

    /// Takes the subscriptions that lagged: removes them and returns each with its last delivered seq.
    pub(crate) fn take_lagged(&self) -> Vec<(ChannelId, Seq)> {
        if !self.lagged.load(Ordering::Acquire) || !self.lagged.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut subs = lock(&self.subs);
        let mut lagged = Vec::new();
        subs.retain(|c, s| match *s {
            SubState::Lagged { last } => {
                lagged.push((c.clone(), last));
                false
            }
            _ => true,
        });
        lagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(max_frames: usize) -> Session {
        Session::new(SessionId(1), QueueLimits { max_frames, max_bytes: 1 << 20 })
    }

    fn ch(s: &str) -> ChannelId {
        ChannelId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn live_delivery_is_in_order_without_duplicates() {
        let s = session(16);
        let c = ch("group:g");
        s.begin_replay(c.clone());
        assert_eq!(s.try_go_live(&c, 3), Some(true));
        let f = Bytes::from_static(b"x");
        assert_eq!(s.offer_message(&c, 3, &f), Offer::Done); // duplicate of the replay
        assert_eq!(s.offer_message(&c, 4, &f), Offer::Queued);
        assert_eq!(s.offer_message(&c, 4, &f), Offer::Done); // duplicate
        let mut batch = Vec::new();
        assert!(s.drain_into(&mut batch));
        assert_eq!(batch.len(), 1);
        // A gap stops live delivery of that channel and schedules a resync from the last delivered seq.
        assert_eq!(s.offer_message(&c, 6, &f), Offer::Lagged);
        assert_eq!(s.take_lagged(), vec![(c.clone(), 4)]);
        assert!(!s.is_subscribed(&c));
    }

    #[test]
    fn a_live_message_during_replay_forces_another_read() {
        let s = session(16);
        let c = ch("group:g");
        s.begin_replay(c.clone());
        assert_eq!(s.offer_message(&c, 1, &Bytes::from_static(b"x")), Offer::Done);
        assert_eq!(s.try_go_live(&c, 0), Some(false));
        assert_eq!(s.try_go_live(&c, 1), Some(true));
        let mut batch = Vec::new();
        s.drain_into(&mut batch);
        assert!(batch.is_empty(), "nothing is delivered live while replaying");
    }

    #[test]
    fn a_full_queue_lags_every_live_subscription() {
        let s = session(2);
        let (a, b) = (ch("group:a"), ch("group:b"));
        for c in [&a, &b] {
            s.begin_replay(c.clone());
            assert_eq!(s.try_go_live(c, 0), Some(true));
        }
        let f = Bytes::from_static(b"x");
        assert_eq!(s.offer_message(&a, 1, &f), Offer::Queued);
        assert_eq!(s.offer_message(&a, 2, &f), Offer::Queued);
        assert_eq!(s.offer_message(&a, 3, &f), Offer::Lagged);
        assert_eq!(s.offer_message(&b, 1, &f), Offer::Done, "lagged: nothing more is queued");
        let mut lagged = s.take_lagged();
        lagged.sort();
        assert_eq!(lagged, vec![(a.clone(), 2), (b, 0)]);
        // Ephemeral events are dropped on a full queue.
        assert_eq!(s.offer_ephemeral(&a, &f), Offer::Done, "no longer live");
        let mut batch = Vec::new();
        s.drain_into(&mut batch);
        assert_eq!(batch.len(), 2, "the queue never grew past its bound");
    }

    #[test]
    fn ephemeral_events_are_dropped_on_a_full_queue() {
        let s = session(1);
        let c = ch("dm:a:b");
        let f = Bytes::from_static(b"x");
        assert_eq!(s.offer_ephemeral(&c, &f), Offer::Done, "not subscribed");
        s.begin_replay(c.clone());
        assert_eq!(s.try_go_live(&c, 0), Some(true));
        assert_eq!(s.offer_ephemeral(&c, &f), Offer::Queued);
        assert_eq!(s.offer_ephemeral(&c, &f), Offer::Dropped);
        assert!(s.is_subscribed(&c), "a dropped ephemeral event does not end live delivery");
    }

    #[tokio::test]
    async fn push_waits_for_room() {
        let s = Arc::new(session(1));
        assert!(s.push(Bytes::from_static(b"a")).await);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.push(Bytes::from_static(b"b")).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut batch = Vec::new();
        s.drain_into(&mut batch);
        assert!(waiter.await.unwrap_or(false));
        s.drain_into(&mut batch);
        assert_eq!(batch, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    }
}
