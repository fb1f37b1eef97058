//! The hub: sessions, channel subscriptions, fan-out, and the command pipeline.
//!
//! ```text
//! frame ─► Hub::dispatch ─► decode ─► [auth, ping handled here]
//!                                   └► tower stack: Trace ► Metrics ► Timeout ► RateLimit ► Authorize ► Engine
//!                                                                                   │ append (Store)
//!                                                                                   ▼ publish (Broker)
//! every node's Hub ◄── Inbox::deliver ◄───────────────────────────────────────────────┘
//!      └► encode once ► offer the same Bytes to every subscribed Session's bounded queue
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

use crate::auth::{Auth, AuthError, Authorizer, Credentials, MembersOnly};
use crate::broker::{Broker, BrokerEvent, Inbox, LocalBroker};
use crate::config::HubConfig;
use crate::detach::Detached;
use crate::driver::CloseReason;
use crate::engine::Engine;
use crate::id::{ChannelId, SessionId, UserId};
use crate::layer::{AuthorizeLayer, MetricsLayer, RateLimitLayer, TimeoutLayer, TraceLayer};
use crate::metered_store::MeteredStore;
use crate::metrics::{AuthStage, EVENT_MESSAGE, EVENT_RECEIPT, EVENT_TYPING, HubMetrics};
use crate::model::{Channel, Message, MessageKind, NewMessage, Principal, now_millis};
use crate::protocol::{self, Command, Reply};
use crate::session::{Offer, QueueLimits, Session};
use crate::status::{Code, Status};
use crate::store::{Store, StoreError};
use crate::trace_context::{ParentLinker, TraceParent};

/// A command on its way through the tower stack: who sent it, on which session, and what it is.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The session it arrived on.
    pub session: Arc<Session>,
    /// The authenticated sender.
    pub principal: Arc<Principal>,
    /// The command id, echoed in the reply.
    pub id: u64,
    /// The command.
    pub command: Command,
    /// The W3C trace context the command belongs to: its own `traceparent` field, else the connection's.
    pub trace_parent: Option<TraceParent>,
}

/// The outcome of a command: a reply, or the status the client gets in an `error` event.
pub type CommandResponse = Result<Reply, Status>;

/// The type-erased command service. Its error type is [`Infallible`]: every failure is a [`Status`].
pub type CommandService = BoxCloneSyncService<CommandRequest, CommandResponse, Infallible>;

const INDEX_SHARDS: usize = 64;
const SEQUENCER_SHARDS: usize = 64;

type Index = HashMap<ChannelId, Vec<Arc<Session>>>;

/// A send waiting in its channel's queue: the message, the span of the command that sent it (the append and the
/// publish stay its children), and where its outcome goes.
struct QueuedSend {
    msg: NewMessage,
    span: tracing::Span,
    reply: tokio::sync::oneshot::Sender<Result<crate::model::Appended, StoreError>>,
}

/// Channels with a send pipeline running, and the sends queued behind the batch in flight.
type Sequencers = HashMap<ChannelId, Vec<QueuedSend>>;

/// Shared state behind [`Hub`]; the engine and the broker inbox reach the hub through it.
pub(crate) struct HubCore {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) auth: Arc<dyn Auth>,
    pub(crate) config: HubConfig,
    pub(crate) metrics: HubMetrics,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Set by [`Hub::shut_down`]: sessions opened afterwards are closed at once with this reason.
    shut_down: std::sync::OnceLock<CloseReason>,
    index: Box<[RwLock<Index>]>,
    sequencers: Box<[Mutex<Sequencers>]>,
    hasher: RandomState,
    next_session: AtomicU64,
}

impl std::fmt::Debug for HubCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCore").field("config", &self.config).finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The task running one channel's send pipeline while it has sends (see [`HubCore::append_and_publish`]).
struct Sequencer {
    core: Arc<HubCore>,
    channel: ChannelId,
    /// Until the pipeline stops normally: on a panic, dropping it unregisters the channel, so that later sends
    /// start a new pipeline and the queued ones fail instead of waiting forever.
    armed: bool,
}

impl Sequencer {
    /// Runs batches until none is queued.
    async fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.process(batch).await;
        }
    }

    /// Takes what is queued, or, with nothing queued, unregisters the channel (later sends start a new pipeline).
    fn next_batch(&mut self) -> Option<Vec<QueuedSend>> {
        let mut shard = lock(self.core.sequencer_shard(&self.channel));
        match shard.get_mut(&self.channel) {
            Some(queued) if !queued.is_empty() => Some(std::mem::take(queued)),
            _ => {
                shard.remove(&self.channel);
                self.armed = false;
                None
            }
        }
    }

    /// Appends a batch concurrently, then publishes its new messages in seq order and answers every sender.
    async fn process(&self, mut batch: Vec<QueuedSend>) {
        let core = &self.core;
        if batch.len() == 1
            && let Some(QueuedSend { msg, span, reply }) = batch.pop()
        {
            // The common case (one send in flight on the channel): no `join_all`, no vectors.
            let outcome = core.append_one(msg).instrument(span.clone()).await;
            self.complete(outcome, span, reply).await;
            return;
        }
        let appends = batch.into_iter().map(|QueuedSend { msg, span, reply }| async move {
            let outcome = core.append_one(msg).instrument(span.clone()).await;
            (outcome, span, reply)
        });
        let mut done = futures_util::future::join_all(appends).await;
        // Failures carry no seq; they go first, then the stored messages in seq order.
        done.sort_by_key(|(outcome, ..)| outcome.as_ref().map_or(0, |a| a.message.seq));
        for (outcome, span, reply) in done {
            self.complete(outcome, span, reply).await;
        }
    }

    /// Publishes one appended message (unless it is a duplicate) and answers its sender.
    async fn complete(
        &self,
        outcome: Result<crate::model::Appended, StoreError>,
        span: tracing::Span,
        reply: tokio::sync::oneshot::Sender<Result<crate::model::Appended, StoreError>>,
    ) {
        let core = &self.core;
        let outcome = match outcome {
            Ok(appended) if appended.duplicate => {
                core.metrics.messages_duplicates.increment(1);
                Ok(appended)
            }
            Ok(appended) => {
                let message = Arc::new(appended.message);
                core.publish_stored(message.clone()).instrument(span).await;
                // The local broker does not keep the event, so this is normally a move, not a copy.
                Ok(crate::model::Appended { message: Arc::unwrap_or_clone(message), duplicate: false })
            }
            Err(e) => Err(e),
        };
        // The sender may have gone away; the message is stored and published either way.
        let _ = reply.send(outcome);
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        if self.armed {
            lock(self.core.sequencer_shard(&self.channel)).remove(&self.channel);
        }
    }
}

impl HubCore {
    fn shard_of(&self, channel: &ChannelId, n: usize) -> usize {
        let h = self.hasher.hash_one(channel.as_str());
        (h % n as u64) as usize
    }

    fn index_shard(&self, channel: &ChannelId) -> &RwLock<Index> {
        &self.index[self.shard_of(channel, INDEX_SHARDS)]
    }

    /// Adds `session` to the live-delivery index of `channel` (idempotent).
    pub(crate) fn index_add(&self, channel: &ChannelId, session: &Arc<Session>) {
        let mut shard = write(self.index_shard(channel));
        let list = shard.entry(channel.clone()).or_default();
        if !list.iter().any(|s| Arc::ptr_eq(s, session)) {
            list.push(session.clone());
        }
    }

    /// Removes `session` from the index of `channel`.
    pub(crate) fn index_remove(&self, channel: &ChannelId, session: &Arc<Session>) {
        let mut shard = write(self.index_shard(channel));
        if let Some(list) = shard.get_mut(channel) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                shard.remove(channel);
            }
        }
    }

    fn sequencer_shard(&self, channel: &ChannelId) -> &Mutex<Sequencers> {
        &self.sequencers[self.shard_of(channel, SEQUENCER_SHARDS)]
    }

    /// Appends `msg` and publishes it so that live delivery sees each channel's seqs in order.
    ///
    /// Sends to one channel go through that channel's pipeline: while one batch of appends is in flight, later
    /// sends queue up; the next batch takes all of them at once. A batch's appends run concurrently (a store
    /// with group commit puts them in one transaction), and once all have finished their messages are
    /// published in seq order — the appends of one node to one channel are all in that batch, so their seqs are
    /// exactly the batch's. One hot channel therefore gets the store's batch throughput instead of one append
    /// per store round trip, and channels never wait for each other.
    pub(crate) async fn append_and_publish(
        self: &Arc<Self>,
        msg: NewMessage,
    ) -> Result<crate::model::Appended, StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let channel = msg.channel.clone();
        let send = QueuedSend { msg, span: tracing::Span::current(), reply };
        let start = {
            let mut shard = lock(self.sequencer_shard(&channel));
            match shard.entry(channel.clone()) {
                std::collections::hash_map::Entry::Occupied(mut queued) => {
                    queued.get_mut().push(send);
                    false
                }
                std::collections::hash_map::Entry::Vacant(idle) => {
                    idle.insert(vec![send]);
                    true
                }
            }
        };
        if start {
            // This task starts the pipeline: it runs the first batch itself (with no other send to this channel in
            // flight, that is the common case of a 1:1 conversation, and it costs no task spawn) and hands what
            // queued meanwhile to a task of its own, so that its sender's reply does not wait for later batches.
            // Callers run this `Detached` (see `engine::send` and `Hub::publish`): if they drop it, it finishes
            // in a task of its own, so a batch, which may hold other senders' messages, is never abandoned halfway.
            let mut sequencer = Sequencer { core: self.clone(), channel, armed: true };
            if let Some(batch) = sequencer.next_batch() {
                sequencer.process(batch).await;
                if let Some(batch) = sequencer.next_batch() {
                    tokio::spawn(async move {
                        sequencer.process(batch).await;
                        sequencer.run().await;
                    });
                }
            }
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Internal("the channel's send pipeline stopped before this send finished".into()))
        })
    }

    /// Appends one message; direct and user channels are created on first use.
    async fn append_one(&self, msg: NewMessage) -> Result<crate::model::Appended, StoreError> {
        match self.store.append(msg.clone()).await {
            Err(StoreError::ChannelNotFound(channel)) => {
                let Some((a, b)) = channel.implied_members() else {
                    return Err(StoreError::ChannelNotFound(channel));
                };
                let meta = Channel { id: channel.clone(), created_by: msg.sender.clone(), created_at: msg.ts };
                let members = if a == b { vec![a] } else { vec![a, b] };
                self.store.ensure_channel(meta, &members).await?;
                self.store.append(msg).await
            }
            other => other,
        }
    }

    /// Publishes a freshly stored message (not a duplicate) to the broker.
    async fn publish_stored(&self, message: Arc<Message>) {
        self.metrics.messages_stored.increment(1);
        let span = tracing::debug_span!("publish", channel = %message.channel, seq = message.seq);
        let published = self.broker.publish(BrokerEvent::Message(message.clone())).instrument(span).await;
        if let Err(e) = published {
            // The message is durable; live subscribers detect the gap on the next message and resync.
            self.metrics.publish_failures.increment(1);
            tracing::warn!(channel = %message.channel, seq = message.seq, error = %e,
                "stored message could not be published live");
        }
    }

    /// Delivers an event to this node's subscribers. Metrics are added once per event (not per recipient), from
    /// counts kept in registers.
    fn fan_out(&self, event: BrokerEvent) {
        let started = tokio::time::Instant::now();
        let shard = read(self.index_shard(event.channel()));
        let Some(subscribers) = shard.get(event.channel()) else { return };
        let metrics = &self.metrics;
        match &event {
            BrokerEvent::Message(m) => {
                let _span =
                    tracing::debug_span!("fanout", channel = %m.channel, seq = m.seq, recipients = subscribers.len())
                        .entered();
                let frame = protocol::encode_message(m);
                let (mut queued, mut lagged) = (0u64, 0u64);
                for s in subscribers {
                    match s.offer_message(&m.channel, m.seq, &frame) {
                        Offer::Queued => queued += 1,
                        Offer::Lagged => {
                            lagged += 1;
                            tracing::debug!(session = %s.id(), channel = %m.channel, "slow consumer: resync scheduled");
                        }
                        Offer::Done | Offer::Dropped => {}
                    }
                }
                if queued > 0 {
                    metrics.deliveries[EVENT_MESSAGE].increment(queued);
                }
                if lagged > 0 {
                    metrics.fanout_lagged.increment(lagged);
                }
                metrics.fanout_duration.record(started.elapsed().as_secs_f64());
            }
            BrokerEvent::Receipt { channel, user, kind, seq } => {
                let frame = protocol::encode_receipt(channel, user, *kind, *seq);
                self.offer_ephemeral(subscribers.iter(), channel, &frame, EVENT_RECEIPT);
            }
            BrokerEvent::Typing { channel, user, active } => {
                let frame = protocol::encode_typing(channel, user, *active);
                let others = subscribers.iter().filter(|s| s.principal().is_none_or(|p| p.user != *user));
                self.offer_ephemeral(others, channel, &frame, EVENT_TYPING);
            }
        }
    }

    fn offer_ephemeral<'a>(
        &self,
        to: impl Iterator<Item = &'a Arc<Session>>,
        channel: &ChannelId,
        frame: &Bytes,
        event: usize,
    ) {
        let (mut queued, mut dropped) = (0u64, 0u64);
        for s in to {
            match s.offer_ephemeral(channel, frame) {
                Offer::Queued => queued += 1,
                Offer::Dropped => dropped += 1,
                Offer::Done | Offer::Lagged => {}
            }
        }
        if queued > 0 {
            self.metrics.deliveries[event].increment(queued);
        }
        if dropped > 0 {
            self.metrics.dropped[event].increment(dropped);
        }
    }
}

/// Receives broker events for a hub without keeping it alive.
struct HubInbox(Weak<HubCore>);

impl Inbox for HubInbox {
    fn deliver(&self, event: BrokerEvent) {
        if let Some(core) = self.0.upgrade() {
            core.fan_out(event);
        }
    }
}

/// How a frame was handled, for the connection driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// Replied successfully.
    Ok,
    /// The frame was malformed or unknown (counts toward the consecutive-error limit).
    Malformed,
    /// The command failed with an error reply (not a protocol fault).
    Failed,
    /// The connection must close with this reason (after the queued frames are sent).
    Close(CloseReason),
}

/// The Herald hub: plug-ins, sessions, subscriptions and the command pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    core: Arc<HubCore>,
    /// Behind an `Arc` so that cloning the hub (once per connection and per command) does not clone the boxed
    /// service stack (an allocation); a command clones it once, to call it.
    service: Arc<CommandService>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("sessions", &self.session_count()).finish_non_exhaustive()
    }
}

/// Builds a [`Hub`].
pub struct HubBuilder {
    store: Arc<dyn Store>,
    auth: Arc<dyn Auth>,
    authorizer: Option<Arc<dyn Authorizer>>,
    broker: Option<Arc<dyn Broker>>,
    config: HubConfig,
    wrap: Vec<Box<dyn FnOnce(CommandService) -> CommandService + Send>>,
    linker: Option<ParentLinker>,
}

impl std::fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// Uses `authorizer` instead of the default [`MembersOnly`].
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Uses `broker` instead of the single-node [`LocalBroker`].
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Wraps the command service in an extra layer of the application's (outermost last).
    ///
    /// ```
    /// # use herald_core::hub::{CommandService, HubBuilder};
    /// fn with_my_layer(b: HubBuilder) -> HubBuilder {
    ///     b.map_service(|inner: CommandService| {
    ///         // e.g. tower::ServiceBuilder::new().layer(my_layer).service(inner).boxed_clone_sync()
    ///         inner
    ///     })
    /// }
    /// ```
    pub fn map_service(mut self, f: impl FnOnce(CommandService) -> CommandService + Send + 'static) -> Self {
        self.wrap.push(Box::new(f));
        self
    }

    /// Links each `command` span that has a W3C trace context (a `traceparent` on the command or on the
    /// connection's upgrade request) to its remote parent; see [`trace_context`](crate::trace_context). Without
    /// a linker the trace context is only recorded as the span's `traceparent` field.
    pub fn trace_parent_linker(mut self, linker: ParentLinker) -> Self {
        self.linker = Some(linker);
        self
    }

    /// Builds the hub and binds it to its broker.
    ///
    /// The store is wrapped in a [`MeteredStore`] (metrics and spans per operation), and the hub's metric
    /// handles are registered now: install a `metrics` recorder before calling this (see
    /// [`metrics`](crate::metrics)).
    pub fn build(self) -> Hub {
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(self.store));
        let broker = self.broker.unwrap_or_else(|| Arc::new(LocalBroker::new()));
        let authorizer = self.authorizer.unwrap_or_else(|| Arc::new(MembersOnly::new(store.clone())));
        let core = Arc::new(HubCore {
            store,
            broker: broker.clone(),
            auth: self.auth,
            sessions: Mutex::new(HashMap::new()),
            shut_down: std::sync::OnceLock::new(),
            index: (0..INDEX_SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sequencers: (0..SEQUENCER_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_session: AtomicU64::new(1),
            config: self.config,
            metrics: HubMetrics::new(),
        });
        broker.bind(Arc::new(HubInbox(Arc::downgrade(&core))));
        let trace = match self.linker {
            Some(linker) => TraceLayer::with_linker(linker),
            None => TraceLayer::new(),
        };
        let stack = ServiceBuilder::new()
            .layer(trace)
            .layer(MetricsLayer::new(core.metrics.commands.clone()))
            .layer(TimeoutLayer::new(core.config.command_timeout))
            .layer(RateLimitLayer::new(core.config.rate_limit, core.config.rate_limit_max_keys))
            .layer(AuthorizeLayer::new(authorizer))
            .service(Engine::new(core.clone()));
        let mut service = CommandService::new(stack);
        for wrap in self.wrap {
            service = wrap(service);
        }
        Hub { core, service: Arc::new(service) }
    }
}

impl Hub {
    /// Starts building a hub over `store`, authenticating with `auth`.
    pub fn builder(store: Arc<dyn Store>, auth: Arc<dyn Auth>) -> HubBuilder {
        HubBuilder {
            store,
            auth,
            authorizer: None,
            broker: None,
            config: HubConfig::default(),
            wrap: Vec::new(),
            linker: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.core.config
    }

    /// The hub's metric handles.
    pub(crate) fn metrics(&self) -> &HubMetrics {
        &self.core.metrics
    }

    /// The store (wrapped in a [`MeteredStore`]).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// Number of open sessions on this node.
    pub fn session_count(&self) -> usize {
        lock(&self.core.sessions).len()
    }

    /// Checks credentials with the configured [`Auth`].
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        self.core.auth.authenticate(credentials).await
    }

    /// Opens a session (called by connection drivers).
    pub fn open_session(&self) -> Arc<Session> {
        let id = SessionId(self.core.next_session.fetch_add(1, Ordering::Relaxed));
        let limits = &self.core.config.limits;
        let session = Arc::new(Session::new(
            id,
            QueueLimits { max_frames: limits.outbound_max_frames, max_bytes: limits.outbound_max_bytes },
        ));
        lock(&self.core.sessions).insert(id, session.clone());
        // Read after the insert: either `shut_down`'s pass over the registry saw this session, or its mark is
        // visible here (the registry's lock orders the two).
        if let Some(reason) = self.core.shut_down.get() {
            session.close(Some(*reason));
        }
        session
    }

    /// Closes a session: removes it from every channel and from the registry.
    pub fn close_session(&self, session: &Arc<Session>) {
        session.close(None);
        for channel in session.channels() {
            self.core.index_remove(&channel, session);
        }
        lock(&self.core.sessions).remove(&session.id());
    }

    /// Removes a subscription from the live index (after a `resync`).
    pub(crate) fn drop_subscription(&self, channel: &ChannelId, session: &Arc<Session>) {
        self.core.index_remove(channel, session);
    }

    /// Asks every open session to close with `reason`. Sessions opened afterwards are not affected; on shutdown
    /// use [`shut_down`](Self::shut_down).
    pub fn close_all(&self, reason: CloseReason) {
        let sessions: Vec<_> = lock(&self.core.sessions).values().cloned().collect();
        for s in sessions {
            s.close(Some(reason));
        }
    }

    /// The node is going away: closes every open session with `reason`, and every session opened from now on as
    /// soon as it opens (a connection that was still completing its handshake when the listener stopped gets a
    /// close with `reason`, not a working session). Only the first call's reason is kept.
    pub fn shut_down(&self, reason: CloseReason) {
        let _ = self.core.shut_down.set(reason);
        self.close_all(*self.core.shut_down.get().unwrap_or(&reason));
    }

    /// Whether [`shut_down`](Self::shut_down) was called.
    pub fn is_shut_down(&self) -> bool {
        self.core.shut_down.get().is_some()
    }

    /// Handles one inbound frame of `session`: decodes it, runs it, and queues the reply or error.
    pub async fn dispatch(&self, session: &Arc<Session>, frame: &[u8]) -> Dispatched {
        let (outcome, reply) = self.dispatch_frame(session, frame).await;
        session.push(reply).await;
        outcome
    }

    /// Handles one inbound frame of `session` like [`dispatch`](Self::dispatch), but returns the reply (or error)
    /// frame instead of queueing it. The connection driver writes it itself, right after whatever the command
    /// queued (replayed messages, the sender's own message when it follows the channel), in the same write: no
    /// wake-up of its own task for its own reply.
    pub(crate) async fn dispatch_frame(&self, session: &Arc<Session>, frame: &[u8]) -> (Dispatched, Bytes) {
        let commands = &self.core.metrics.commands;
        let protocol::Decoded { id, command, trace_parent } = match protocol::decode_frame(frame) {
            Ok(c) => c,
            Err(e) => {
                commands.count_malformed(e.status.code);
                return (Dispatched::Malformed, protocol::encode_error(e.id, &e.status));
            }
        };
        let reply = |r: Result<Reply, Status>| -> Bytes {
            match r {
                Ok(reply) => protocol::encode_reply(id, &reply),
                Err(status) => protocol::encode_error(Some(id), &status),
            }
        };
        match command {
            Command::Ping => {
                commands.count(protocol::CommandKind::Ping, Ok(()));
                (Dispatched::Ok, reply(Ok(Reply::Ok)))
            }
            Command::Auth { token } => {
                let (result, outcome) = self.authenticate_session(session, token).await;
                commands.count(protocol::CommandKind::Auth, result.as_ref().map(|_| ()).map_err(|s| s.code));
                (outcome, reply(result))
            }
            command => {
                let Some(principal) = session.principal().cloned() else {
                    commands.count(command.kind(), Err(Code::Unauthenticated));
                    let status = Status::new(Code::Unauthenticated, "authenticate first (send an `auth` command)");
                    return (Dispatched::Failed, reply(Err(status)));
                };
                let trace_parent = trace_parent.or_else(|| session.trace_parent().cloned());
                let request = CommandRequest { session: session.clone(), principal, id, command, trace_parent };
                let result = match CommandService::clone(&self.service).oneshot(request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let outcome = if result.is_ok() { Dispatched::Ok } else { Dispatched::Failed };
                (outcome, reply(result))
            }
        }
    }

    async fn authenticate_session(&self, session: &Arc<Session>, token: String) -> (CommandResponse, Dispatched) {
        if session.principal().is_some() {
            return (Err(Status::bad_request("the session is already authenticated")), Dispatched::Failed);
        }
        let timeout = self.core.config.command_timeout;
        match tokio::time::timeout(timeout, self.authenticate(&Credentials::Bearer(token))).await {
            Ok(Ok(principal)) => {
                let reply = Reply::Authenticated {
                    user: principal.user.clone(),
                    session: session.id(),
                    expires_at: principal.expires_at,
                };
                session.set_principal(Arc::new(principal));
                (Ok(reply), Dispatched::Ok)
            }
            Ok(Err(e)) => {
                self.core.metrics.auth_failed(AuthStage::Command, crate::metrics::auth_failure_reason(&e));
                let reason = CloseReason::for_auth_error(&e);
                (Err(e.into()), Dispatched::Close(reason))
            }
            Err(_) => {
                self.core.metrics.auth_failed(AuthStage::Command, "timeout");
                (Err(Status::new(Code::Timeout, "authentication timed out")), Dispatched::Failed)
            }
        }
    }

    /// Authenticates `session` with an already verified principal (credentials checked at connect time).
    pub fn set_principal(&self, session: &Session, principal: Principal) -> bool {
        session.set_principal(Arc::new(principal))
    }

    // --- application-side API ----------------------------------------------------------------------------

    /// Creates a channel with members (application side: no authorization check).
    pub async fn create_channel(
        &self,
        channel: ChannelId,
        created_by: UserId,
        members: &[UserId],
    ) -> Result<(), StoreError> {
        let meta = Channel { id: channel, created_by, created_at: now_millis() };
        self.core.store.create_channel(meta, members).await
    }

    /// Adds members to a channel (application side).
    pub async fn add_members(&self, channel: &ChannelId, users: &[UserId]) -> Result<(), StoreError> {
        self.core.store.add_members(channel, users).await
    }

    /// Publishes a `system` message from the application to any channel (topics, user channels, groups),
    /// bypassing client authorization. The channel must exist, except direct and user channels.
    pub async fn publish(
        &self,
        channel: ChannelId,
        sender: UserId,
        body: crate::model::Body,
    ) -> Result<Message, StoreError> {
        let msg = NewMessage {
            channel,
            id: crate::id::MessageId::generate(),
            sender,
            client_id: None,
            kind: MessageKind::System,
            refers: None,
            ts: now_millis(),
            body,
        };
        // Detached, like a client's send: dropping this future must not abandon a batch of the channel's send
        // pipeline halfway (the rest then finishes in a task of its own).
        let core = self.core.clone();
        let appended = Detached::new(async move { core.append_and_publish(msg).await }.in_current_span())
            .await
            .map_err(|e| StoreError::Internal(format!("the publish failed: {e}").into()))??;
        Ok(appended.message)
    }
}
