//! Cheap scans of delivered frames: find the few numbers a receiver needs without parsing the JSON.
//!
//! The load tools put a marker object in every message body, `{"hb_n":<index>,"hb_t":<intended unix ns>,
//! "pad":"…"}`, and the server (Herald, Mosquitto, Socket.IO) sends the body back byte for byte, so the
//! receiver only has to find `"hb_n":` and `"hb_t":` in the frame.

/// The key of the message index in a bench body.
pub const KEY_N: &str = "\"hb_n\":";
/// The key of the intended send time (Unix nanoseconds) in a bench body.
pub const KEY_T: &str = "\"hb_t\":";

/// A bench message body of exactly `size` bytes when `size` is large enough (at least the bare markers).
///
/// ```
/// let b = herald_bench::scan::body(7, 1_700_000_000_000_000_000, 100);
/// assert_eq!(b.len(), 100);
/// assert_eq!(herald_bench::scan::marks(b.as_bytes()), Some((7, 1_700_000_000_000_000_000)));
/// ```
pub fn body(n: u64, t_ns: u64, size: usize) -> String {
    let mut out = Vec::with_capacity(size.max(64));
    body_into(&mut out, n, t_ns, size);
    // Only ASCII was written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the bytes of [`body`]`(n, t_ns, size)` to `out`, without allocating beyond `out`'s growth.
///
/// ```
/// let mut out = b"prefix".to_vec();
/// herald_bench::scan::body_into(&mut out, 7, 42, 100);
/// assert_eq!(&out[6..], herald_bench::scan::body(7, 42, 100).as_bytes());
/// ```
pub fn body_into(out: &mut Vec<u8>, n: u64, t_ns: u64, size: usize) {
    use std::io::Write;
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{{{KEY_N}{n},{KEY_T}{t_ns},\"pad\":\"");
    let bare = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(bare), b'x');
    out.extend_from_slice(b"\"}");
}

/// The unsigned integer right after the first `key` in `frame`, if any.
pub fn field_u64(frame: &[u8], key: &str) -> Option<u64> {
    let at = find(frame, key.as_bytes())? + key.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    std::str::from_utf8(&frame[at..at + digits]).ok()?.parse().ok()
}

/// `(index, intended ns)` from a frame that carries a bench body.
pub fn marks(frame: &[u8]) -> Option<(u64, u64)> {
    Some((field_u64(frame, KEY_N)?, field_u64(frame, KEY_T)?))
}

/// The position of the first occurrence of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    let first = needle[0];
    let last_start = haystack.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        // Jump to the next candidate first byte.
        let off = haystack[i..=last_start].iter().position(|&b| b == first)?;
        i += off;
        if &haystack[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_marks_in_a_herald_message_event() {
        let frame = br#"{"type":"message","channel":"group:bench","seq":9,"mid":"0192","from":"u0","kind":"message","ts":1730000000000,"body":{"hb_n":41,"hb_t":1730000000000123456,"pad":"xx"}}"#;
        assert_eq!(marks(frame), Some((41, 1_730_000_000_000_123_456)));
    }

    #[test]
    fn ts_is_not_mistaken_for_the_marker() {
        assert_eq!(field_u64(br#"{"ts":5,"hb_t":6}"#, KEY_T), Some(6));
        assert_eq!(field_u64(br#"{"ts":5}"#, KEY_T), None);
    }

    #[test]
    fn rejects_missing_or_malformed_numbers() {
        assert_eq!(field_u64(br#"{"hb_n":"7"}"#, KEY_N), None);
        assert_eq!(field_u64(br#"{"hb_n":}"#, KEY_N), None);
        assert_eq!(field_u64(br#"{"hb_n":99999999999999999999999}"#, KEY_N), None);
        assert_eq!(field_u64(b"", KEY_N), None);
        assert_eq!(marks(br#"{"hb_n":1}"#), None);
    }

    #[test]
    fn body_has_the_requested_size_and_is_json() {
        for size in [0, 10, 64, 100, 1000] {
            let b = body(3, 4, size);
            assert!(b.len() >= size);
            if size >= 40 {
                assert_eq!(b.len(), size);
            }
            let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
            assert_eq!(v["hb_n"], 3);
        }
    }

    #[test]
    fn find_works_at_the_edges() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"abc", b"c"), Some(2));
        assert_eq!(find(b"aaa", b"b"), None);
    }
}
