//! One long-poll session: its numbered, bounded event buffer, its reader slot, and the virtual connection that
//! core's driver runs on.
//!
//! ```text
//!  POST /commands ──► mpsc (bounded) ──► LpConnection::recv ──► driver::run ──► Hub (all protocol logic)
//!                                                                   │
//!  GET /events, /sse ◄── readers Notify ◄── event buffer ◄── LpConnection::send (waits for acks when full)
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use herald_core::driver::{CloseReason, ConnError, Connection, Inbound};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};

/// Settings every session of one [`LongPoll`](crate::LongPoll) shares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long a session without a reader lives on.
    pub(crate) linger: Duration,
    /// Most unacknowledged events buffered.
    pub(crate) max_events: usize,
    /// Most unacknowledged bytes buffered.
    pub(crate) max_bytes: usize,
    /// How often the virtual connection reports activity to the driver while the session is present, so that
    /// the driver's idle timeout never fires before the linger does.
    pub(crate) keep_every: Duration,
    /// Commands waiting for the driver.
    pub(crate) command_queue: usize,
}

/// How the client said it will read a session's events, when it opened it (`POST …/sessions?reader=sse`). It
/// only chooses the `transport` label of the session's connection metrics: either reader can read any session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReaderHint {
    /// Long-poll (`GET …/events`), or no hint: label `longpoll`.
    #[default]
    Poll,
    /// Server-Sent Events (`GET …/sse`): label `sse`.
    Sse,
}

impl ReaderHint {
    /// The hint named by the `reader` query parameter of the open request: `sse` or `poll`; anything else (or
    /// nothing) is taken as long-poll.
    pub(crate) fn parse(reader: Option<&str>) -> Self {
        match reader {
            Some(r) if r.eq_ignore_ascii_case("sse") => Self::Sse,
            _ => Self::Poll,
        }
    }

    /// The `transport` label of the connection metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Poll => "longpoll",
            Self::Sse => "sse",
        }
    }
}

/// A session id: 128 bits from the operating system's CSPRNG. It is a bearer capability.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey([u8; 16]);

impl SessionKey {
    /// A fresh random key.
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses the 32 hexadecimal digits of a key (either case).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never log a whole capability.
        write!(f, "SessionKey({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// The mutable state of one session.
#[derive(Debug)]
struct State {
    /// Unacknowledged events, in number order.
    events: VecDeque<(u64, Bytes)>,
    /// Their total size.
    bytes: usize,
    /// The number the next event gets (numbers start at 1).
    next: u64,
    /// Everything up to here was acknowledged.
    acked: u64,
    /// Set once the driver closed the connection.
    closed: Option<CloseReason>,
    /// When it closed.
    closed_at: Option<Instant>,
    /// A close the transport asked for (DELETE, linger expiry, shutdown).
    forced: Option<CloseReason>,
    /// Requests reading events now (held polls, SSE streams).
    readers: usize,
    /// Bumped by every new reader; an older reader that sees a newer generation gives up.
    generation: u64,
    /// The last time a request touched the session.
    last_seen: Instant,
    /// The client saw the end (or deleted the session): nothing is kept any more.
    finished: bool,
}

/// Why an ack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckBeyond {
    /// The highest event number assigned so far.
    pub(crate) last: u64,
}

/// What a reader finds.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Events with a number greater than the reader's cursor.
    pub(crate) events: Vec<(u64, Bytes)>,
    /// The close, once the session is closed.
    pub(crate) closed: Option<CloseReason>,
    /// Whether a newer reader took over.
    pub(crate) replaced: bool,
    /// Whether nothing unacknowledged remains (only meaningful with `closed`).
    pub(crate) drained: bool,
}

/// One long-poll session, shared by its HTTP requests and its virtual connection.
pub(crate) struct LpSession {
    key: SessionKey,
    state: Mutex<State>,
    /// Wakes readers: events appended, closed, replaced.
    readers: Notify,
    /// Wakes the connection side: an ack freed room, a reader came or went, a forced close, the end.
    conn: Notify,
    /// The command queue; a POST holds the lock while it forwards its body, so that bodies do not interleave.
    inbound: tokio::sync::Mutex<mpsc::Sender<Bytes>>,
}

impl fmt::Debug for LpSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LpSession").field("key", &self.key).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LpSession {
    /// The session id.
    pub(crate) fn key(&self) -> SessionKey {
        self.key
    }

    /// The command queue.
    pub(crate) fn inbound(&self) -> &tokio::sync::Mutex<mpsc::Sender<Bytes>> {
        &self.inbound
    }

    /// Records that a request touched the session (resets the linger).
    pub(crate) fn touch(&self) {
        lock(&self.state).last_seen = Instant::now();
        self.conn.notify_one();
    }

    /// Drops every event numbered `n` or lower. An `n` beyond the last assigned number is refused.
    pub(crate) fn ack(&self, n: u64) -> Result<(), AckBeyond> {
        let mut st = lock(&self.state);
        let last = st.next - 1;
        if n > last {
            return Err(AckBeyond { last });
        }
        if n <= st.acked {
            return Ok(());
        }
        st.acked = n;
        let mut freed = false;
        while let Some((number, frame)) = st.events.front() {
            if *number > n {
                break;
            }
            st.bytes -= frame.len();
            st.events.pop_front();
            freed = true;
        }
        if st.events.capacity() > 64 && st.events.len() < 16 {
            st.events.shrink_to(16);
        }
        drop(st);
        if freed {
            self.conn.notify_one();
        }
        Ok(())
    }

    /// Registers a new reader, replacing any current one.
    pub(crate) fn attach(self: &Arc<Self>) -> Reader {
        let generation = {
            let mut st = lock(&self.state);
            st.readers += 1;
            st.generation += 1;
            st.last_seen = Instant::now();
            st.generation
        };
        self.readers.notify_waiters();
        self.conn.notify_one();
        Reader { session: self.clone(), generation }
    }

    /// The events after `cursor`, the close state, and whether the reader of `generation` was replaced.
    pub(crate) fn snapshot(&self, cursor: u64, generation: Option<u64>) -> Snapshot {
        let st = lock(&self.state);
        Snapshot {
            events: st.events.iter().filter(|(n, _)| *n > cursor).cloned().collect(),
            closed: st.closed,
            replaced: generation.is_some_and(|g| g != st.generation),
            drained: st.events.is_empty(),
        }
    }

    /// The close state (`None` while open).
    pub(crate) fn closed(&self) -> Option<CloseReason> {
        lock(&self.state).closed
    }

    /// Whether the session was finished (deleted or fully read after its close).
    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// A future that completes at the next reader wake-up. Call `enable` on it before checking the state.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.readers.notified()
    }

    /// Asks the driver to end the session with `reason` (the first reason asked for wins).
    pub(crate) fn force_close(&self, reason: CloseReason) {
        let mut st = lock(&self.state);
        if st.forced.is_none() {
            st.forced = Some(reason);
        }
        drop(st);
        self.conn.notify_one();
    }

    /// Marks the session finished: nothing more will be read from it.
    pub(crate) fn finish(&self) {
        lock(&self.state).finished = true;
        self.conn.notify_one();
        self.readers.notify_waiters();
    }

    /// The deadline of the linger when no reader is attached, measured from `since` or the last request.
    fn linger_at(st: &State, settings: &Settings) -> Option<Instant> {
        (st.readers == 0).then(|| st.last_seen.max(st.closed_at.unwrap_or(st.last_seen)) + settings.linger)
    }
}

/// A request reading events. Dropping it detaches the reader and restarts the linger.
#[derive(Debug)]
pub(crate) struct Reader {
    session: Arc<LpSession>,
    generation: u64,
}

impl Reader {
    /// The reader's generation (compare with [`Snapshot::replaced`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The session read.
    pub(crate) fn session(&self) -> &Arc<LpSession> {
        &self.session
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = lock(&self.session.state);
        st.readers = st.readers.saturating_sub(1);
        st.last_seen = Instant::now();
        drop(st);
        self.session.conn.notify_one();
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateError {
    /// The session limit is reached.
    Full,
    /// The server is shutting down.
    ShuttingDown,
    /// The random number generator failed.
    Rng,
}

/// Every session of one [`LongPoll`](crate::LongPoll), bounded in number.
#[derive(Debug)]
pub(crate) struct Registry {
    map: Mutex<HashMap<SessionKey, Arc<LpSession>>>,
    max: usize,
    closing: AtomicBool,
    /// Connection drivers still running (a deleted session's driver may still be finishing).
    drivers: AtomicUsize,
    /// Wakes [`Registry::wait_empty`].
    changed: Notify,
}

impl Registry {
    /// A registry holding at most `max` sessions.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            closing: AtomicBool::new(false),
            drivers: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// Creates a session and its virtual connection, labelled for metrics after `hint`.
    pub(crate) fn create(
        self: &Arc<Self>,
        settings: &Arc<Settings>,
        hint: ReaderHint,
    ) -> Result<(Arc<LpSession>, LpConnection, DriverGuard), CreateError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(CreateError::ShuttingDown);
        }
        let key = SessionKey::generate().map_err(|_| CreateError::Rng)?;
        let (tx, rx) = mpsc::channel(settings.command_queue.max(1));
        let now = Instant::now();
        let session = Arc::new(LpSession {
            key,
            state: Mutex::new(State {
                events: VecDeque::new(),
                bytes: 0,
                next: 1,
                acked: 0,
                closed: None,
                closed_at: None,
                forced: None,
                readers: 0,
                generation: 0,
                last_seen: now,
                finished: false,
            }),
            readers: Notify::new(),
            conn: Notify::new(),
            inbound: tokio::sync::Mutex::new(tx),
        });
        {
            let mut map = lock(&self.map);
            if map.len() >= self.max {
                return Err(CreateError::Full);
            }
            // 128 random bits do not collide in practice; refuse rather than overwrite if they ever do.
            if map.contains_key(&key) {
                return Err(CreateError::Rng);
            }
            map.insert(key, session.clone());
        }
        self.drivers.fetch_add(1, Ordering::AcqRel);
        let conn = LpConnection {
            session: session.clone(),
            rx,
            registry: self.clone(),
            settings: settings.clone(),
            next_keep: now + settings.keep_every,
            transport: hint.label(),
        };
        let guard = DriverGuard { registry: self.clone(), session: session.clone() };
        Ok((session, conn, guard))
    }

    /// The session with `key`, unless it is unknown or finished.
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Arc<LpSession>> {
        lock(&self.map).get(key).filter(|s| !s.is_finished()).cloned()
    }

    /// Removes a session.
    pub(crate) fn remove(&self, key: &SessionKey) {
        lock(&self.map).remove(key);
        self.changed.notify_waiters();
    }

    /// Sessions held (open ones and closed ones whose last events are still waiting to be read).
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Refuses new sessions and asks every session to close with `reason`.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        self.closing.store(true, Ordering::Release);
        let sessions: Vec<_> = lock(&self.map).values().cloned().collect();
        for s in sessions {
            s.force_close(reason);
        }
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits until no session and no driver is left, or `deadline` passes. True when empty.
    pub(crate) async fn wait_empty(&self, deadline: Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.len() == 0 && self.drivers.load(Ordering::Acquire) == 0 {
                return true;
            }
            tokio::select! {
                () = changed => {}
                () = sleep_until(deadline) => return false,
            }
        }
    }
}

/// Held by the task running a session's driver: when the task ends, however it ends (a panic included), the
/// session is finished and forgotten.
#[derive(Debug)]
pub(crate) struct DriverGuard {
    registry: Arc<Registry>,
    session: Arc<LpSession>,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.session.finish();
        self.registry.remove(&self.session.key);
        self.registry.drivers.fetch_sub(1, Ordering::AcqRel);
        self.registry.changed.notify_waiters();
    }
}

/// The virtual connection of one session, as core's driver sees it.
///
/// - `recv`: the commands POSTed, in order; activity while the session is present; the end when the linger
///   expires, the session is deleted or the server shuts down.
/// - `send`: appends numbered events to the bounded buffer, waiting for acknowledgements when it is full (the
///   driver then stops draining the core session queue, which makes live fan-out lag into a `resync`).
/// - `close`: records the close for readers, then keeps the session readable until the client has read
///   everything or the linger expires.
#[derive(Debug)]
pub(crate) struct LpConnection {
    session: Arc<LpSession>,
    rx: mpsc::Receiver<Bytes>,
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    next_keep: Instant,
    /// The metrics label, chosen when the session was opened ([`ReaderHint`]).
    transport: &'static str,
}

impl LpConnection {
    /// Checks the linger and forced closes; `Err(())` when the connection must end now, else the next deadline.
    fn check(&self, st: &mut State, now: Instant) -> Result<Option<Instant>, ()> {
        if st.forced.is_some() || st.finished {
            return Err(());
        }
        match LpSession::linger_at(st, &self.settings) {
            Some(at) if now >= at => {
                st.forced = Some(CloseReason::IdleTimeout);
                Err(())
            }
            other => Ok(other),
        }
    }
}

impl Connection for LpConnection {
    async fn recv(&mut self) -> Option<Result<Inbound, ConnError>> {
        loop {
            let wake = self.session.conn.notified();
            let now = Instant::now();
            let linger_at = {
                let mut st = lock(&self.session.state);
                match self.check(&mut st, now) {
                    Ok(at) => at,
                    Err(()) => return None,
                }
            };
            // The session is present (a reader is attached or the linger runs): keep the driver's idle timer
            // from firing; the linger is what ends an abandoned long-poll session.
            if now >= self.next_keep {
                self.next_keep = now + self.settings.keep_every;
                return Some(Ok(Inbound::Activity));
            }
            let deadline = linger_at.map_or(self.next_keep, |at| at.min(self.next_keep));
            tokio::select! {
                frame = self.rx.recv() => return frame.map(|f| Ok(Inbound::Frame(f))),
                () = wake => {}
                () = sleep_until(deadline) => {}
            }
        }
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        let mut rest = frames;
        while !rest.is_empty() {
            let wake = self.session.conn.notified();
            let now = Instant::now();
            let (appended, deadline) = {
                let mut st = lock(&self.session.state);
                let deadline = match self.check(&mut st, now) {
                    Ok(at) => at,
                    Err(()) => return Err(ConnError::Io("the long-poll session ended".into())),
                };
                let mut appended = 0;
                for frame in rest {
                    // A frame always fits into an empty buffer.
                    let fits = st.events.is_empty()
                        || (st.events.len() < self.settings.max_events
                            && st.bytes + frame.len() <= self.settings.max_bytes);
                    if !fits {
                        break;
                    }
                    let n = st.next;
                    st.next += 1;
                    st.bytes += frame.len();
                    st.events.push_back((n, frame.clone()));
                    appended += 1;
                }
                (appended, deadline)
            };
            if appended > 0 {
                self.session.readers.notify_waiters();
                rest = &rest[appended..];
                continue;
            }
            // Full: wait for an ack (or the end). Backpressure reaches core's session queue from here.
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = wake => {}
                        () = sleep_until(at) => {}
                    }
                }
                None => wake.await,
            }
        }
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        // SSE streams send their own keep-alive comments; held polls need none.
        Ok(())
    }

    /// `longpoll` or `sse`, as the open request announced (`?reader=sse`). The driver reads it once, when the
    /// session starts, before any reader is attached, so it cannot follow a client that later changes readers:
    /// a session keeps the label it was opened with.
    fn transport(&self) -> &'static str {
        self.transport
    }

    async fn close(self, reason: CloseReason) {
        let Self { session, rx, registry, settings, .. } = self;
        // Commands posted from now on are refused; queued ones are dropped with the queue.
        drop(rx);
        let reason = {
            let mut st = lock(&session.state);
            // The driver reports `Normal` when the transport ended the session; report why it did instead.
            let reason = match (reason, st.forced) {
                (CloseReason::Normal, Some(forced)) => forced,
                (reason, _) => reason,
            };
            st.closed = Some(reason);
            st.closed_at = Some(Instant::now());
            reason
        };
        session.readers.notify_waiters();
        if reason == CloseReason::AuthTimeout && lock(&session.state).readers == 0 {
            // Opened without credentials and abandoned: nobody is there to read the close, and keeping it would let
            // a flood of unauthenticated opens hold the session limit for a linger longer.
            session.finish();
            registry.remove(&session.key);
            return;
        }
        // Keep the session readable until the client has read the rest and the close, or the linger expires.
        loop {
            let wake = session.conn.notified();
            let deadline = {
                let st = lock(&session.state);
                if st.finished || registry.is_closing() {
                    break;
                }
                match LpSession::linger_at(&st, &settings) {
                    Some(at) if Instant::now() >= at => break,
                    other => other,
                }
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = wake => {}
                        () = sleep_until(at) => {}
                    }
                }
                None => wake.await,
            }
        }
        session.finish();
        registry.remove(&session.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let k = SessionKey::generate().expect("rng");
        let text = k.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(SessionKey::parse(&text), Some(k));
        assert_eq!(SessionKey::parse(&text.to_uppercase()), Some(k));
        assert_eq!(SessionKey::parse(&text[..31]), None);
        assert_eq!(SessionKey::parse(&format!("{}g", &text[..31])), None);
        assert_eq!(SessionKey::parse("é1234567890123456789012345678901"), None);
        assert_ne!(SessionKey::generate().expect("rng"), k);
        assert!(!format!("{k:?}").contains(&text), "debug output hides the capability");
    }

    #[test]
    fn reader_hints_pick_the_metrics_label() {
        assert_eq!(ReaderHint::parse(Some("sse")).label(), "sse");
        assert_eq!(ReaderHint::parse(Some("SSE")).label(), "sse");
        assert_eq!(ReaderHint::parse(Some("poll")).label(), "longpoll");
        assert_eq!(ReaderHint::parse(None).label(), "longpoll");
        assert_eq!(ReaderHint::parse(Some("websocket")).label(), "longpoll", "unknown values count as long-poll");
        for hint in [ReaderHint::Poll, ReaderHint::Sse] {
            assert!(herald_core::metrics::TRANSPORTS.contains(&hint.label()), "{hint:?} is in core's label table");
        }
    }
}
