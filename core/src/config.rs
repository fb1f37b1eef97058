//! Hub configuration: limits on every input, timeouts, rate limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits on client input and per-session resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted frame in bytes; a larger frame closes the connection (close code 1009).
    pub max_frame_bytes: usize,
    /// Largest accepted message body (its JSON text) in bytes.
    pub max_body_bytes: usize,
    /// Most channels one session may subscribe to.
    pub max_subscriptions: usize,
    /// History page size when the client gives no `limit`.
    pub history_default: u32,
    /// Largest history page; larger `limit`s are capped to it.
    pub history_max: u32,
    /// Most members a group may be created with.
    pub max_group_members: usize,
    /// Most frames waiting in one session's outbound queue.
    pub outbound_max_frames: usize,
    /// Most bytes waiting in one session's outbound queue.
    pub outbound_max_bytes: usize,
    /// Messages read from the store per page while replaying a subscription.
    pub replay_page: usize,
    /// Consecutive malformed frames (not JSON, unknown command, invalid field) after which the connection is
    /// closed (1008). A well-formed command that fails (for example `forbidden`) resets the count.
    pub max_consecutive_errors: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 32 * 1024,
            max_subscriptions: 512,
            history_default: 50,
            history_max: 200,
            max_group_members: 1000,
            outbound_max_frames: 1024,
            outbound_max_bytes: 1024 * 1024,
            replay_page: 256,
            max_consecutive_errors: 20,
        }
    }
}

/// A per-user rate limit: a token bucket refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained commands per second.
    pub per_second: f64,
    /// Commands allowed in a burst.
    pub burst: u32,
}

/// Everything the hub needs to know that is not a plug-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Input limits.
    pub limits: Limits,
    /// A connection that has not authenticated within this time is closed (4003).
    #[serde(rename = "auth_timeout_ms", with = "millis")]
    pub auth_timeout: Duration,
    /// A connection from which nothing arrived within this time is closed (4000).
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// How often the transport sends a keep-alive ping (a WebSocket ping frame, for example).
    #[serde(rename = "heartbeat_interval_ms", with = "millis")]
    pub heartbeat_interval: Duration,
    /// Deadline for one command (replays of `sub` excepted).
    #[serde(rename = "command_timeout_ms", with = "millis")]
    pub command_timeout: Duration,
    /// Per-user command rate limit; `None` or `per_second = 0` (the form a TOML file can express) disables it.
    pub rate_limit: Option<RateLimit>,
    /// Most distinct users tracked by the rate limiter at once.
    pub rate_limit_max_keys: usize,
    /// Write coalescing: a connection that wrote less than this long ago waits until this long after that
    /// write before writing again, so that the frames arriving meanwhile go out in one write (one system
    /// call, one TCP segment) instead of one each. Only a connection receiving a stream of frames faster than
    /// one per window is delayed, and by at most the window; a connection that has been quiet writes at once.
    /// Zero (the default) disables it: every frame is written on arrival, which keeps 1:1 latency lowest; a
    /// deployment that fans out to large groups trades a few milliseconds of latency for fewer writes by setting
    /// 10–20 ms (measured in `docs/benchmarks.md`, scenarios B and C).
    #[serde(rename = "write_coalescing_ms", with = "millis")]
    pub write_coalescing: Duration,
}

/// The default [`HubConfig::write_coalescing`] window, ms.
pub const WRITE_COALESCING_MS: u64 = 0;

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(25),
            command_timeout: Duration::from_secs(10),
            rate_limit: Some(RateLimit { per_second: 50.0, burst: 100 }),
            rate_limit_max_keys: 100_000,
            write_coalescing: Duration::from_millis(WRITE_COALESCING_MS),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
