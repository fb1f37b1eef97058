//! Latency histograms: HDR histograms in microseconds, shipped between processes as base64 of the V2 format.

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Largest latency recorded exactly (60 s, in µs); larger values are recorded as this.
pub const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits, 1 µs to 60 s.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

/// Records `nanos` (rounded to whole microseconds, at least 1, at most [`MAX_MICROS`]).
pub fn record_nanos(h: &mut Histogram<u64>, nanos: u64) {
    let micros = (nanos.saturating_add(500) / 1_000).clamp(1, MAX_MICROS);
    h.saturating_record(micros);
}

/// A histogram's V2 serialization, base64-encoded (to travel in JSON).
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).expect("serializing to a Vec cannot fail");
    STANDARD.encode(bytes)
}

/// Decodes what [`encode`] produced.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = STANDARD.decode(text).map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram does not decode: {e:?}"))
}

/// Merges encoded histograms into one.
pub fn merge_encoded<'a>(parts: impl IntoIterator<Item = &'a str>) -> Result<Histogram<u64>, String> {
    let mut all = new_histogram();
    for p in parts {
        all.add(decode(p)?).map_err(|e| format!("histograms do not merge: {e:?}"))?;
    }
    Ok(all)
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// The summary of `h` (all zero for an empty histogram).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1_000.0,
        }
    }
}

/// A histogram shared by many tasks: a few mutex-guarded shards so that recording rarely contends.
#[derive(Debug)]
pub struct Sharded {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Sharded {
    /// `n` shards (at least 1).
    pub fn new(n: usize) -> Self {
        Self { shards: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect() }
    }

    /// Records `nanos` in shard `key % n`.
    pub fn record(&self, key: usize, nanos: u64) {
        let shard = &self.shards[key % self.shards.len()];
        record_nanos(&mut shard.lock().unwrap_or_else(|p| p.into_inner()), nanos);
    }

    /// All shards merged; the shards are emptied.
    pub fn take(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let mut h = s.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut h = new_histogram();
        for v in [1_000u64, 2_000_000, 3_500_000_000] {
            record_nanos(&mut h, v);
        }
        let back = decode(&encode(&h)).expect("round trip");
        assert_eq!(back.len(), 3);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_tail() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for _ in 0..990 {
            record_nanos(&mut a, 1_000_000); // 1 ms
        }
        for _ in 0..10 {
            record_nanos(&mut b, 100_000_000); // 100 ms
        }
        let merged = merge_encoded([encode(&a).as_str(), encode(&b).as_str()]).expect("merge");
        let l = Latency::of(&merged);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 1.0).abs() < 0.01, "{l:?}");
        assert!((l.p999_ms - 100.0).abs() < 0.1, "{l:?}");
        // The 99th percentile is the last of the 1 ms values: 990 of 1000 are ≤ 1 ms.
        assert!((l.p99_ms - 1.0).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(decode("not base64!").is_err());
        assert!(decode(&STANDARD.encode(b"not a histogram")).is_err());
    }

    #[test]
    fn values_are_clamped() {
        let mut h = new_histogram();
        record_nanos(&mut h, 0);
        record_nanos(&mut h, u64::MAX);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_MICROS && h.max() <= MAX_MICROS + MAX_MICROS / 1000);
    }

    #[test]
    fn sharded_take_merges_and_resets() {
        let s = Sharded::new(4);
        for i in 0..8 {
            s.record(i, 2_000_000);
        }
        assert_eq!(s.take().len(), 8);
        assert_eq!(s.take().len(), 0);
    }
}
