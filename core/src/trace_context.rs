//! W3C trace context, carried opaquely.
//!
//! A client may name the trace a command belongs to: a `traceparent` field on a command, or a `traceparent` HTTP
//! header on the connection's upgrade request (it then applies to every command of the connection that has no
//! field of its own). Core does not depend on OpenTelemetry: it validates the value, keeps it as a
//! [`TraceParent`], records it as the `traceparent` field of the `command` span, and hands it to the application's
//! [`ParentLinker`] (see [`HubBuilder::trace_parent_linker`](crate::hub::HubBuilder::trace_parent_linker)), which
//! makes the span a child of the remote one (the reference server does that with `tracing-opentelemetry`). The
//! spans the command causes — store operations, publish, fan-out — are children of the `command` span.
//!
//! ```
//! use herald_core::trace_context::TraceParent;
//! let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
//! assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert!(tp.sampled());
//! assert!(TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
//! ```

use std::fmt;
use std::sync::Arc;

/// A validated W3C `traceparent` value (`version-traceid-parentid-flags`, lowercase hex).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceParent(Arc<str>);

/// Links a span to the remote parent a [`TraceParent`] names. Called right after the `command` span is created,
/// before it is entered.
pub type ParentLinker = Arc<dyn Fn(&tracing::Span, &TraceParent) + Send + Sync>;

/// The length of a version `00` traceparent.
const LEN: usize = 55;

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceParent {
    /// Parses a `traceparent` value. `None` when it is not valid, which callers treat as absent (as the W3C
    /// specification asks): a trace id or parent id of all zeros, upper-case hex, version `ff`, a version `00`
    /// value of another length. A later version's value is accepted if it starts with the version `00` fields,
    /// and only those are kept.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.len() < LEN || !value.is_char_boundary(LEN) {
            return None;
        }
        let (head, rest) = value.split_at(LEN);
        let version = &head[..2];
        if !is_lower_hex(version) || version == "ff" || (version == "00" && !rest.is_empty()) {
            return None;
        }
        if !rest.is_empty() && !rest.starts_with('-') {
            return None;
        }
        let b = head.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let (trace_id, parent_id, flags) = (&head[3..35], &head[36..52], &head[53..55]);
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if !is_lower_hex(trace_id) || !is_lower_hex(parent_id) || !is_lower_hex(flags) {
            return None;
        }
        if zero(trace_id) || zero(parent_id) {
            return None;
        }
        Some(Self(Arc::from(head)))
    }

    /// The value, as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The 16 hex digits of the parent span's id.
    pub fn parent_id(&self) -> &str {
        &self.0[36..52]
    }

    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.0[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({})", self.0)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_values() {
        let tp = TraceParent::parse(VALID).expect("valid");
        assert_eq!(tp.as_str(), VALID);
        assert_eq!(tp.parent_id(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert!(!TraceParent::parse(&VALID.replace("-01", "-00")).expect("valid").sampled());
        // A later version may append fields; the known ones are kept.
        let future = format!("{}-extra", VALID.replacen("00", "01", 1));
        assert_eq!(TraceParent::parse(&future).expect("valid").as_str(), VALID.replacen("00", "01", 1));
    }

    #[test]
    fn refuses_invalid_values() {
        let cases = [
            String::new(),
            "garbage".into(),
            VALID[..54].into(),
            format!("{VALID}-x"),
            VALID.to_uppercase(),
            VALID.replacen("00", "ff", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01".into(),
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}1".into(),
        ];
        for bad in &cases {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
