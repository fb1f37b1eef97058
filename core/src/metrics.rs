//! Metric names, their descriptions, and the handles the hub records with.
//!
//! Herald records metrics through the [`metrics`] facade and installs no recorder itself: the application picks an
//! exporter (the reference server serves Prometheus text at `GET /metrics`). Without a recorder every recording is
//! a no-op. **Install the recorder before building the [`Hub`](crate::Hub)**: the hub registers its handles when it
//! is built, and a handle registered before any recorder stays a no-op.
//!
//! Every name is a constant here and is described in [`describe`] and in `docs/operations.md` (the table there must
//! list every constant). Names follow `herald_<area>_<thing>_<unit>`: counters end in `_total`, durations in
//! `_seconds` (always seconds, as `f64`), sizes in `_bytes`; a gauge counting things has no unit suffix. Label values
//! are drawn from small closed sets (command kinds, status codes, close codes, transport names): never a user id, a
//! channel or anything else a client chooses.
//!
//! Hot paths record through handles registered once ([`metrics::Counter`], [`metrics::Histogram`]), never by looking
//! a name up per event; fan-out adds its delivery count once per event, not once per recipient.
//!
//! ```
//! // An exporter would be installed first; without one these are no-ops.
//! herald_core::metrics::describe();
//! herald_core::metrics::handshake_failed("websocket", "bad_upgrade");
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram};

use crate::auth::AuthError;
use crate::protocol::CommandKind;
use crate::status::Code;

/// Gauge: open connections, by `transport`.
pub const CONNECTIONS_OPEN: &str = "herald_connections_open";
/// Counter: connections opened, by `transport`.
pub const CONNECTIONS_OPENED_TOTAL: &str = "herald_connections_opened_total";
/// Counter: connections closed, by `transport` and close `code` (`"1000"`, `"4001"`, ...).
pub const CONNECTIONS_CLOSED_TOTAL: &str = "herald_connections_closed_total";
/// Counter: connection attempts refused before a session opened (a bad upgrade request), by `transport` and
/// `reason`.
pub const CONNECTIONS_HANDSHAKE_FAILURES_TOTAL: &str = "herald_connections_handshake_failures_total";
/// Counter: credentials refused, by `stage` (`connect`: at the upgrade; `command`: an `auth` command) and
/// `reason` (the [`AuthError`] kind, or `timeout`).
pub const AUTH_FAILURES_TOTAL: &str = "herald_auth_failures_total";
/// Counter: commands handled, by `kind` (the wire type, or `malformed` for a frame that did not decode) and
/// `status` (`ok` or the error code).
pub const COMMANDS_TOTAL: &str = "herald_commands_total";
/// Histogram: time to execute a command through the tower stack, by `kind`.
pub const COMMANDS_DURATION_SECONDS: &str = "herald_commands_duration_seconds";
/// Counter: messages appended to the log (new ones, not deduplicated resends).
pub const MESSAGES_STORED_TOTAL: &str = "herald_messages_stored_total";
/// Counter: sends answered with an already stored message (same client id).
pub const MESSAGES_DUPLICATES_TOTAL: &str = "herald_messages_duplicates_total";
/// Counter: stored messages whose live publish failed (subscribers recover on the next message).
pub const BROKER_PUBLISH_FAILURES_TOTAL: &str = "herald_broker_publish_failures_total";
/// Counter: frames queued to sessions by live fan-out, by `event` (`message`, `receipt`, `typing`).
pub const FANOUT_DELIVERIES_TOTAL: &str = "herald_fanout_deliveries_total";
/// Histogram: fan-out of one message on this node, from the event's arrival at the hub (for the local broker:
/// the publish) until it is queued to the last local recipient.
pub const FANOUT_DURATION_SECONDS: &str = "herald_fanout_duration_seconds";
/// Counter: sessions dropped from live delivery during fan-out (a full queue: slow consumer; or a gap), each
/// then sent a `resync`.
pub const FANOUT_LAGGED_TOTAL: &str = "herald_fanout_lagged_total";
/// Counter: ephemeral events (`receipt`, `typing`) dropped on a full queue, by `event`.
pub const FANOUT_DROPPED_TOTAL: &str = "herald_fanout_dropped_total";
/// Counter: `resync` events sent to clients.
pub const SESSIONS_RESYNCS_TOTAL: &str = "herald_sessions_resyncs_total";
/// Histogram: duration of store operations, by `operation` (the [`Store`](crate::Store) method) and `result`
/// (`ok`, `not_found`, `exists`, `unavailable`, `internal`, `too_large`). Its `_count` counts the operations.
pub const STORE_DURATION_SECONDS: &str = "herald_store_duration_seconds";

/// The values of the `transport` label of the connection metrics: what each transport's
/// [`Connection::transport`](crate::driver::Connection::transport) returns. `websocket` (herald-websocket);
/// `quic` and `webtransport` (herald-quic, native and WebTransport sessions); `longpoll` and `sse`
/// (herald-longpoll, by the reader announced when the session opens); `inproc` (the testkit's in-process
/// transport); `unknown` (a transport that does not override the method).
pub const TRANSPORTS: &[&str] = &["websocket", "quic", "webtransport", "longpoll", "sse", "inproc", "unknown"];

/// Every metric name, with its kind, for exporters that configure per-metric options.
pub const ALL: &[(&str, MetricKind)] = &[
    (CONNECTIONS_OPEN, MetricKind::Gauge),
    (CONNECTIONS_OPENED_TOTAL, MetricKind::Counter),
    (CONNECTIONS_CLOSED_TOTAL, MetricKind::Counter),
    (CONNECTIONS_HANDSHAKE_FAILURES_TOTAL, MetricKind::Counter),
    (AUTH_FAILURES_TOTAL, MetricKind::Counter),
    (COMMANDS_TOTAL, MetricKind::Counter),
    (COMMANDS_DURATION_SECONDS, MetricKind::Histogram),
    (MESSAGES_STORED_TOTAL, MetricKind::Counter),
    (MESSAGES_DUPLICATES_TOTAL, MetricKind::Counter),
    (BROKER_PUBLISH_FAILURES_TOTAL, MetricKind::Counter),
    (FANOUT_DELIVERIES_TOTAL, MetricKind::Counter),
    (FANOUT_DURATION_SECONDS, MetricKind::Histogram),
    (FANOUT_LAGGED_TOTAL, MetricKind::Counter),
    (FANOUT_DROPPED_TOTAL, MetricKind::Counter),
    (SESSIONS_RESYNCS_TOTAL, MetricKind::Counter),
    (STORE_DURATION_SECONDS, MetricKind::Histogram),
];

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution.
    Histogram,
}

/// Suggested histogram buckets (upper bounds, in seconds) per histogram: fan-out is measured in microseconds,
/// commands and store operations in milliseconds.
pub fn buckets(name: &str) -> &'static [f64] {
    const FAST: &[f64] = &[
        0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01,
        0.025, 0.1,
    ];
    const SLOW: &[f64] = &[
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0,
    ];
    if name == FANOUT_DURATION_SECONDS { FAST } else { SLOW }
}

/// Registers the description and unit of every metric with the installed recorder (call once, after installing
/// it; exporters print them as `# HELP` lines).
pub fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Open connections, by transport.");
    describe_counter!(CONNECTIONS_OPENED_TOTAL, Unit::Count, "Connections opened, by transport.");
    describe_counter!(CONNECTIONS_CLOSED_TOTAL, Unit::Count, "Connections closed, by transport and close code.");
    describe_counter!(
        CONNECTIONS_HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "Connection attempts refused before a session opened, by transport and reason."
    );
    describe_counter!(AUTH_FAILURES_TOTAL, Unit::Count, "Credentials refused, by stage (connect, command) and reason.");
    describe_counter!(COMMANDS_TOTAL, Unit::Count, "Commands handled, by kind and status (ok or the error code).");
    describe_histogram!(
        COMMANDS_DURATION_SECONDS,
        Unit::Seconds,
        "Command execution time in the tower stack, by kind."
    );
    describe_counter!(MESSAGES_STORED_TOTAL, Unit::Count, "Messages appended to the log.");
    describe_counter!(MESSAGES_DUPLICATES_TOTAL, Unit::Count, "Sends answered with an already stored message.");
    describe_counter!(BROKER_PUBLISH_FAILURES_TOTAL, Unit::Count, "Stored messages whose live publish failed.");
    describe_counter!(FANOUT_DELIVERIES_TOTAL, Unit::Count, "Frames queued to sessions by live fan-out, by event.");
    describe_histogram!(
        FANOUT_DURATION_SECONDS,
        Unit::Seconds,
        "Fan-out of one message: arrival at the hub until queued to the last local recipient."
    );
    describe_counter!(FANOUT_LAGGED_TOTAL, Unit::Count, "Sessions dropped from live delivery (slow consumer or gap).");
    describe_counter!(FANOUT_DROPPED_TOTAL, Unit::Count, "Ephemeral events dropped on a full queue, by event.");
    describe_counter!(SESSIONS_RESYNCS_TOTAL, Unit::Count, "Resync events sent to clients.");
    describe_histogram!(STORE_DURATION_SECONDS, Unit::Seconds, "Store operation time, by operation and result.");
}

/// Counts a connection attempt a transport refused before it could open a session (for example a malformed
/// upgrade request). `reason` is a short snake_case constant chosen by the transport.
pub fn handshake_failed(transport: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_HANDSHAKE_FAILURES_TOTAL, "transport" => transport, "reason" => reason).increment(1);
}

/// The `reason` label of an authentication failure.
pub fn auth_failure_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Malformed(_) => "malformed",
        AuthError::BadSignature => "bad_signature",
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::InvalidClaim(_) => "invalid_claim",
        AuthError::Unknown => "unknown",
        AuthError::Unavailable => "unavailable",
    }
}

/// Where credentials were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AuthStage {
    /// At the upgrade (a header or a query parameter).
    Connect,
    /// In an `auth` command.
    Command,
}

/// The command kinds as label values, in [`kind_index`] order; the last one is for frames that did not decode.
const KINDS: [&str; 11] =
    ["auth", "sub", "unsub", "send", "ack", "history", "read", "typing", "create", "ping", "malformed"];
const MALFORMED: usize = KINDS.len() - 1;

fn kind_index(kind: CommandKind) -> usize {
    match kind {
        CommandKind::Auth => 0,
        CommandKind::Subscribe => 1,
        CommandKind::Unsubscribe => 2,
        CommandKind::Send => 3,
        CommandKind::Ack => 4,
        CommandKind::History => 5,
        CommandKind::Read => 6,
        CommandKind::Typing => 7,
        CommandKind::Create => 8,
        CommandKind::Ping => 9,
    }
}

/// The statuses as label values: `ok`, then every [`Code`] in [`status_index`] order.
const STATUSES: [&str; 13] = [
    "ok",
    "bad_request",
    "unknown_command",
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "limit_exceeded",
    "rate_limited",
    "timeout",
    "unavailable",
    "internal",
];

fn status_index(outcome: Result<(), Code>) -> usize {
    match outcome {
        Ok(()) => 0,
        Err(code) => match code {
            Code::BadRequest => 1,
            Code::UnknownCommand => 2,
            Code::Unauthenticated => 3,
            Code::Forbidden => 4,
            Code::NotFound => 5,
            Code::Conflict => 6,
            Code::TooLarge => 7,
            Code::LimitExceeded => 8,
            Code::RateLimited => 9,
            Code::Timeout => 10,
            Code::Unavailable => 11,
            Code::Internal => 12,
        },
    }
}

/// Per-command counters and durations: a fixed table of lazily registered handles, so that recording a command
/// is two array lookups and two atomic updates, and only the (kind, status) pairs that occur are exported.
#[derive(Clone)]
pub struct CommandMetrics {
    inner: Arc<CommandTable>,
}

struct CommandTable {
    counts: [[OnceLock<Counter>; STATUSES.len()]; KINDS.len()],
    durations: [OnceLock<Histogram>; KINDS.len()],
}

impl std::fmt::Debug for CommandMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandMetrics").finish_non_exhaustive()
    }
}

impl Default for CommandMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandMetrics {
    /// An empty table; handles are registered with the installed recorder on first use.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(CommandTable {
                counts: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
                durations: std::array::from_fn(|_| OnceLock::new()),
            }),
        }
    }

    fn count_at(&self, kind: usize, status: usize) {
        self.inner.counts[kind][status]
            .get_or_init(|| counter!(COMMANDS_TOTAL, "kind" => KINDS[kind], "status" => STATUSES[status]))
            .increment(1);
    }

    /// Counts a command of `kind` with its outcome (`Ok` or the error code).
    pub fn count(&self, kind: CommandKind, outcome: Result<(), Code>) {
        self.count_at(kind_index(kind), status_index(outcome));
    }

    /// Counts a command and records how long the stack took to execute it.
    pub fn record(&self, kind: CommandKind, outcome: Result<(), Code>, elapsed: Duration) {
        let k = kind_index(kind);
        self.count_at(k, status_index(outcome));
        self.inner.durations[k]
            .get_or_init(|| metrics::histogram!(COMMANDS_DURATION_SECONDS, "kind" => KINDS[k]))
            .record(elapsed.as_secs_f64());
    }

    /// Counts a frame that did not decode into a command.
    pub fn count_malformed(&self, code: Code) {
        self.count_at(MALFORMED, status_index(Err(code)));
    }
}

/// Indexes of [`HubMetrics::deliveries`] and [`HubMetrics::dropped`].
pub(crate) const EVENT_MESSAGE: usize = 0;
pub(crate) const EVENT_RECEIPT: usize = 1;
pub(crate) const EVENT_TYPING: usize = 2;

/// The handles the hub records with, registered when the hub is built.
pub(crate) struct HubMetrics {
    pub(crate) commands: CommandMetrics,
    pub(crate) messages_stored: Counter,
    pub(crate) messages_duplicates: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) deliveries: [Counter; 3],
    pub(crate) fanout_duration: Histogram,
    pub(crate) fanout_lagged: Counter,
    pub(crate) dropped: [Counter; 3],
    pub(crate) resyncs: Counter,
    /// Per transport: (open gauge, opened counter). Looked up once per connection, not per frame.
    connections: Mutex<HashMap<&'static str, (Gauge, Counter)>>,
    /// Per (transport, close code).
    closed: Mutex<HashMap<(&'static str, u16), Counter>>,
    /// Per (stage, reason).
    auth_failures: Mutex<HashMap<(AuthStage, &'static str), Counter>>,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HubMetrics {
    pub(crate) fn new() -> Self {
        let events = ["message", "receipt", "typing"];
        Self {
            commands: CommandMetrics::new(),
            messages_stored: counter!(MESSAGES_STORED_TOTAL),
            messages_duplicates: counter!(MESSAGES_DUPLICATES_TOTAL),
            publish_failures: counter!(BROKER_PUBLISH_FAILURES_TOTAL),
            deliveries: events.map(|e| counter!(FANOUT_DELIVERIES_TOTAL, "event" => e)),
            fanout_duration: metrics::histogram!(FANOUT_DURATION_SECONDS),
            fanout_lagged: counter!(FANOUT_LAGGED_TOTAL),
            // Messages are never dropped (a full queue lags the session instead).
            dropped: events.map(|e| match e {
                "message" => Counter::noop(),
                e => counter!(FANOUT_DROPPED_TOTAL, "event" => e),
            }),
            resyncs: counter!(SESSIONS_RESYNCS_TOTAL),
            connections: Mutex::new(HashMap::new()),
            closed: Mutex::new(HashMap::new()),
            auth_failures: Mutex::new(HashMap::new()),
        }
    }

    /// A connection of `transport` opened.
    pub(crate) fn connection_opened(&self, transport: &'static str) {
        let mut map = lock(&self.connections);
        let (open, opened) = map.entry(transport).or_insert_with(|| {
            (
                metrics::gauge!(CONNECTIONS_OPEN, "transport" => transport),
                counter!(CONNECTIONS_OPENED_TOTAL, "transport" => transport),
            )
        });
        open.increment(1.0);
        opened.increment(1);
    }

    /// A connection of `transport` closed with `code`.
    pub(crate) fn connection_closed(&self, transport: &'static str, code: u16) {
        if let Some((open, _)) = lock(&self.connections).get(transport) {
            open.decrement(1.0);
        }
        lock(&self.closed)
            .entry((transport, code))
            .or_insert_with(|| counter!(CONNECTIONS_CLOSED_TOTAL, "transport" => transport, "code" => code.to_string()))
            .increment(1);
    }

    /// Credentials were refused at `stage`; `reason` is [`auth_failure_reason`] or `timeout`.
    pub(crate) fn auth_failed(&self, stage: AuthStage, reason: &'static str) {
        lock(&self.auth_failures)
            .entry((stage, reason))
            .or_insert_with(|| {
                let stage = match stage {
                    AuthStage::Connect => "connect",
                    AuthStage::Command => "command",
                };
                counter!(AUTH_FAILURES_TOTAL, "stage" => stage, "reason" => reason)
            })
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_tables_match_the_wire_names() {
        for (i, kind) in [
            CommandKind::Auth,
            CommandKind::Subscribe,
            CommandKind::Unsubscribe,
            CommandKind::Send,
            CommandKind::Ack,
            CommandKind::History,
            CommandKind::Read,
            CommandKind::Typing,
            CommandKind::Create,
            CommandKind::Ping,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(kind_index(kind), i);
            assert_eq!(KINDS[i], kind.as_str());
        }
        for code in [
            Code::BadRequest,
            Code::UnknownCommand,
            Code::Unauthenticated,
            Code::Forbidden,
            Code::NotFound,
            Code::Conflict,
            Code::TooLarge,
            Code::LimitExceeded,
            Code::RateLimited,
            Code::Timeout,
            Code::Unavailable,
            Code::Internal,
        ] {
            assert_eq!(STATUSES[status_index(Err(code))], code.as_str());
        }
    }

    #[test]
    fn names_follow_the_convention() {
        for (name, kind) in ALL {
            assert!(name.starts_with("herald_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            match kind {
                MetricKind::Counter => assert!(name.ends_with("_total"), "{name}"),
                MetricKind::Histogram => assert!(name.ends_with("_seconds") || name.ends_with("_bytes"), "{name}"),
                MetricKind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }

    #[test]
    fn operations_doc_lists_every_transport_label() {
        let doc = include_str!("../../docs/operations.md");
        for t in TRANSPORTS {
            assert!(t.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{t}");
            assert!(doc.contains(&format!("| `{t}` |")), "docs/operations.md does not list the transport label {t}");
        }
    }

    #[test]
    fn operations_doc_lists_every_metric() {
        let doc = include_str!("../../docs/operations.md");
        for (name, _) in ALL {
            assert!(doc.contains(&format!("`{name}`")), "docs/operations.md does not list {name}");
        }
    }
}
