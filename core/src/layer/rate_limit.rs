//! Per-user rate limiting (GCRA token bucket, bounded key map).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::ResponseFuture;
use crate::config::RateLimit;
use crate::hub::{CommandRequest, CommandResponse};
use crate::id::UserId;
use crate::status::{Code, Status};

const SHARDS: usize = 16;

/// A request was refused; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the next request would be allowed.
    pub retry_after: Duration,
}

/// A keyed GCRA limiter: for each key, the "theoretical arrival time" of the next request.
///
/// Memory is bounded: each shard holds at most `max_keys / 16` keys; when a shard is full, keys whose bucket
/// has refilled completely (indistinguishable from a new key) are evicted; if none can be, the request is
/// allowed without being tracked and a warning is logged (fail open: a full table must not lock users out).
#[derive(Debug)]
pub struct KeyedRateLimiter {
    interval: Duration,
    tolerance: Duration,
    per_shard: usize,
    shards: Box<[Mutex<HashMap<UserId, Instant>>]>,
    hasher: RandomState,
}

impl KeyedRateLimiter {
    /// A limiter for `limit`, tracking at most `max_keys` users.
    pub fn new(limit: RateLimit, max_keys: usize) -> Self {
        let per_second = if limit.per_second.is_finite() && limit.per_second > 0.0 { limit.per_second } else { 1.0 };
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Self {
            interval,
            tolerance: interval * limit.burst.max(1).saturating_sub(1),
            per_shard: (max_keys / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one token for `key` at `now`.
    pub fn check(&self, key: &UserId, now: Instant) -> Result<(), RateLimited> {
        let shard = &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let earliest = tat.checked_sub(self.tolerance).unwrap_or(now);
        if earliest > now {
            return Err(RateLimited { retry_after: earliest - now });
        }
        if !map.contains_key(key) && map.len() >= self.per_shard {
            map.retain(|_, t| *t > now);
            if map.len() >= self.per_shard {
                tracing::warn!("rate limiter key table full; request allowed untracked");
                return Ok(());
            }
        }
        map.insert(key.clone(), tat + self.interval);
        Ok(())
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limits each user's command rate; refused commands get `rate_limited` with `retry_after_ms`.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<KeyedRateLimiter>>,
}

impl RateLimitLayer {
    /// A layer for `limit` (`None`, or `per_second <= 0`: no limit), tracking at most `max_keys` users.
    pub fn new(limit: Option<RateLimit>, max_keys: usize) -> Self {
        let limit = limit.filter(|l| l.per_second > 0.0);
        Self { limiter: limit.map(|l| Arc::new(KeyedRateLimiter::new(l, max_keys))) }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService { inner, limiter: self.limiter.clone() }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Option<Arc<KeyedRateLimiter>>,
}

impl<S> Service<CommandRequest> for RateLimitService<S>
where
    S: Service<CommandRequest, Response = CommandResponse, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = CommandResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> ResponseFuture {
        if let Some(limiter) = &self.limiter
            && let Err(limited) = limiter.check(&req.principal.user, Instant::now())
        {
            let ms = u64::try_from(limited.retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
            let status = Status::new(Code::RateLimited, "too many commands").with_retry_after(ms);
            return Box::pin(async move { Ok(Err(status)) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let l = KeyedRateLimiter::new(RateLimit { per_second: 10.0, burst: 3 }, 1000);
        let t0 = Instant::now();
        let a = user("a");
        for _ in 0..3 {
            assert_eq!(l.check(&a, t0), Ok(()));
        }
        let refused = l.check(&a, t0).err().unwrap_or_else(|| panic!("fourth request in a burst of 3 allowed"));
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100));
        // Another user is unaffected.
        assert_eq!(l.check(&user("b"), t0), Ok(()));
        // After one interval, one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(&a, t1), Ok(()));
        assert!(l.check(&a, t1).is_err());
    }

    #[test]
    fn key_table_is_bounded() {
        let l = KeyedRateLimiter::new(RateLimit { per_second: 1.0, burst: 1 }, 16 * 4);
        let t0 = Instant::now();
        for i in 0..1000 {
            let _ = l.check(&user(&format!("u{i}")), t0);
        }
        assert!(l.len() <= 64, "tracked {} keys", l.len());
        // Once buckets have refilled, stale keys are evicted to make room.
        let later = t0 + Duration::from_secs(5);
        for i in 1000..1064 {
            let _ = l.check(&user(&format!("u{i}")), later);
        }
        assert!(l.len() <= 64);
    }
}
