//! A Bloom filter over every client id the main database holds, so that the appender asks the main database's
//! unique index only about client ids that may be there (a resend, or a rare false positive) instead of about
//! every fresh one.
//!
//! The filter never says "absent" for a key that is present: it is built from a scan of the main database's
//! `messages_dedup` index (in a task of its own, on its own read connection) plus the keys the tail held when the
//! scan began, and the appender adds every key it writes while the build runs and after. Until a build completed,
//! the appender asks the database about every key, as before. A filter that has taken in more keys than it was
//! sized for (so its false positives grow) is rebuilt larger the same way, while the old one still answers, up to
//! 128 MiB of bits; beyond that, false positives grow instead of memory.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use tokio::task::JoinHandle;

use crate::tail::{DedupKey, Tail};

/// Bits per key the filter is sized for (with [`PROBES`]: about 1 % false positives at capacity).
const BITS_PER_KEY: usize = 10;
/// Bit positions set per key.
const PROBES: u64 = 7;
/// The least number of keys a filter is sized for (2 MiB of bits).
const MIN_CAPACITY: usize = 1 << 20;
/// The most bits a filter has (128 MiB, about 100 million keys at 1 % false positives): beyond, false positives
/// grow (each one costs a query, as without the filter) instead of memory.
const MAX_BITS: usize = 1 << 30;
/// How long after a failed build another one starts.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Rows the scan inserts per lock of the filter.
const SCAN_CHUNK: usize = 1024;

/// A key's hash (SipHash with fixed keys: the same in every process).
pub(crate) fn hash(channel: &str, sender: &str, client_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (channel, sender, client_id).hash(&mut h);
    h.finish()
}

/// The hash of a dedup key.
pub(crate) fn key_hash(key: &DedupKey) -> u64 {
    hash(key.0.as_str(), key.1.as_str(), key.2.as_str())
}

/// A Bloom filter of key hashes.
#[derive(Debug)]
pub(crate) struct Filter {
    bits: Vec<u64>,
    /// `bits.len() * 64 - 1` (a power of two minus one).
    mask: u64,
    capacity: usize,
    inserted: usize,
}

impl Filter {
    fn new(capacity: usize) -> Self {
        let bits = capacity.max(MIN_CAPACITY).saturating_mul(BITS_PER_KEY).next_power_of_two().min(MAX_BITS);
        Self { bits: vec![0; bits / 64], mask: bits as u64 - 1, capacity: bits / BITS_PER_KEY, inserted: 0 }
    }

    fn probes(&self, hash: u64) -> impl Iterator<Item = u64> + use<> {
        let (mask, h1, h2) = (self.mask, hash, hash.rotate_left(32) | 1);
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    pub(crate) fn insert(&mut self, hash: u64) {
        for bit in self.probes(hash) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }

    /// False only for a key never inserted.
    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.probes(hash).all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Over capacity, and a larger filter is allowed.
    fn full(&self) -> bool {
        self.inserted > self.capacity && self.bits.len() * 64 < MAX_BITS
    }
}

/// A filter being built: the scan fills it while the appender adds what it writes.
#[derive(Debug)]
struct Build {
    filter: Arc<Mutex<Filter>>,
    scan: JoinHandle<Result<(), sqlx::Error>>,
}

/// The appender's filter: the complete one (if any) and the one being built (if any).
#[derive(Debug)]
pub(crate) struct ClientIds {
    ready: Option<Filter>,
    build: Option<Build>,
    /// When the last build failed, and the capacity it had.
    failed: Option<(Instant, usize)>,
    main: SqliteConnectOptions,
}

impl ClientIds {
    pub(crate) fn new(main: SqliteConnectOptions) -> Self {
        Self { ready: None, build: None, failed: None, main }
    }

    /// Starts a build for about `expected` keys (the main database's and the tail's) unless one runs. Must be
    /// called on the appender's runtime.
    pub(crate) fn start_build(&mut self, expected: usize, tail: &Tail) {
        if self.build.is_some() {
            return;
        }
        let mut filter = Filter::new(expected.saturating_add(expected / 2));
        // The tail's keys first, then the scan: a key folded in between is in the scan's snapshot.
        for h in tail.dedup_hashes() {
            filter.insert(h);
        }
        let filter = Arc::new(Mutex::new(filter));
        let scan = tokio::spawn(scan(self.main.clone(), filter.clone()));
        self.build = Some(Build { filter, scan });
    }

    /// Takes a finished build; starts a larger one if the complete filter is over capacity.
    pub(crate) async fn poll(&mut self, tail: &Tail) {
        if self.build.as_ref().is_some_and(|b| b.scan.is_finished())
            && let Some(Build { filter, scan }) = self.build.take()
        {
            let filter = match Arc::try_unwrap(filter) {
                Ok(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
                Err(shared) => {
                    // The task still holds its reference for a moment: look again at the next batch.
                    self.build = Some(Build { filter: shared, scan });
                    return;
                }
            };
            // Finished: its result is there without waiting.
            match scan.await {
                Ok(Ok(())) => {
                    tracing::debug!(keys = filter.inserted, "SQLite client id filter ready");
                    self.ready = Some(filter);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "building the SQLite client id filter failed; retried in a minute");
                    self.failed = Some((Instant::now(), filter.capacity));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the SQLite client id filter's scan panicked; retried in a minute");
                    self.failed = Some((Instant::now(), filter.capacity));
                }
            }
        }
        if let Some((at, capacity)) = self.failed
            && at.elapsed() >= RETRY_AFTER
        {
            self.failed = None;
            self.start_build(capacity.saturating_mul(2) / 3, tail);
        }
        if let Some(ready) = &self.ready
            && ready.full()
        {
            // Room for as many again (with the half added by `start_build`: about twice the bits).
            let expected = ready.inserted.saturating_mul(4) / 3;
            self.start_build(expected, tail);
        }
    }

    /// Whether the main database may hold `hash`'s key: true unless a complete filter says it cannot.
    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.ready.as_ref().is_none_or(|f| f.may_contain(hash))
    }

    /// Adds the keys of rows just written to the log (they reach the main database with a later fold).
    pub(crate) fn insert(&mut self, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        if let Some(f) = &mut self.ready {
            for h in hashes {
                f.insert(*h);
            }
        }
        if let Some(build) = &self.build {
            let mut f = build.filter.lock().unwrap_or_else(PoisonError::into_inner);
            for h in hashes {
                f.insert(*h);
            }
        }
    }
}

/// Inserts every client id key of the main database into `filter`.
async fn scan(main: SqliteConnectOptions, filter: Arc<Mutex<Filter>>) -> Result<(), sqlx::Error> {
    use futures_util::TryStreamExt;
    let mut conn = SqliteConnection::connect_with(&main).await?;
    let result = async {
        let mut rows =
            sqlx::query("SELECT channel, sender, client_id FROM messages WHERE client_id IS NOT NULL").fetch(&mut conn);
        let mut chunk = Vec::with_capacity(SCAN_CHUNK);
        while let Some(row) = rows.try_next().await? {
            let (c, s, id): (&str, &str, &str) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            chunk.push(hash(c, s, id));
            if chunk.len() == SCAN_CHUNK {
                let mut f = filter.lock().unwrap_or_else(PoisonError::into_inner);
                chunk.drain(..).for_each(|h| f.insert(h));
            }
        }
        let mut f = filter.lock().unwrap_or_else(PoisonError::into_inner);
        chunk.drain(..).for_each(|h| f.insert(h));
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_always_found_and_few_others_are() {
        let mut f = Filter::new(10_000);
        for i in 0..10_000 {
            f.insert(hash("ch", "s", &format!("in-{i}")));
        }
        assert!((0..10_000).all(|i| f.may_contain(hash("ch", "s", &format!("in-{i}")))));
        let false_positives = (0..100_000).filter(|i| f.may_contain(hash("ch", "s", &format!("out-{i}")))).count();
        assert!(false_positives < 1_000, "{false_positives} false positives in 100,000");
    }
}
