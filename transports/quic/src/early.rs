//! The 0-RTT policy: until the handshake completes, only replay-safe commands are processed.
//!
//! Data a client sends in 0-RTT can be captured and replayed by an attacker to start another connection
//! (the replay never completes the handshake, which needs the client's keys). Commands whose replay is
//! harmless — `auth`, `sub`, `history`, `ping`, `unsub`: they change no stored state, and their answers go to
//! a connection the attacker cannot read — run at once. Any other frame (`send`, `ack`, `read`, `create`,
//! `typing`, ...) is held, and with it every frame after it, until the handshake completes; a replayed
//! connection never gets there, so held commands never run for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Deserialize;

/// Command types safe to process before the handshake completes.
pub const REPLAY_SAFE: &[&str] = &["auth", "sub", "history", "ping", "unsub"];

/// Whether `frame` may be processed before the handshake completes. Frames that are not a JSON object with
/// a string `type` are safe: the protocol only answers them with an error.
pub fn replay_safe(frame: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Peek<'_>>(frame) {
        Ok(Peek { ty: Some(ty) }) => REPLAY_SAFE.contains(&ty.as_ref()),
        _ => true,
    }
}

/// The handshake of a connection accepted in 0-RTT mode; resolves when it completes (or fails).
pub(crate) type Handshake = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Holds back frames that are not replay-safe while the handshake is incomplete.
pub(crate) struct EarlyGate {
    handshake: Option<Handshake>,
    held: Option<Bytes>,
}

impl std::fmt::Debug for EarlyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyGate")
            .field("pending", &self.handshake.is_some())
            .field("held", &self.held.as_ref().map(Bytes::len))
            .finish()
    }
}

impl EarlyGate {
    /// A gate for a connection whose handshake is complete: lets everything through.
    pub(crate) fn open() -> Self {
        Self { handshake: None, held: None }
    }

    /// A gate waiting for `handshake`.
    pub(crate) fn pending(handshake: Handshake) -> Self {
        Self { handshake: Some(handshake), held: None }
    }

    /// Whether the handshake is still incomplete.
    pub(crate) fn is_pending(&self) -> bool {
        self.handshake.is_some()
    }

    /// Whether a frame is held.
    pub(crate) fn has_held(&self) -> bool {
        self.held.is_some()
    }

    /// Offers a received frame: returns it if it may be processed now, or holds it (returns `None`).
    pub(crate) fn offer(&mut self, frame: Bytes) -> Option<Bytes> {
        if self.handshake.is_none() || replay_safe(&frame) {
            Some(frame)
        } else {
            self.held = Some(frame);
            None
        }
    }

    /// Polls the handshake; once it completes the gate opens for good.
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.handshake.as_mut() {
            None => Poll::Ready(()),
            Some(h) => {
                let ready = h.as_mut().poll(cx);
                if ready.is_ready() {
                    self.handshake = None;
                }
                ready
            }
        }
    }

    /// Waits for the handshake, then returns the held frame. Cancel-safe: the frame stays held until this
    /// completes.
    pub(crate) async fn release(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await;
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Waker;

    use super::*;

    #[test]
    fn replay_safe_set() {
        for safe in [
            r#"{"type":"auth","token":"t"}"#,
            r#"{"type":"sub","channel":"dm:a:b","id":1}"#,
            r#"{"id":2,"type":"history","channel":"dm:a:b"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"unsub","channel":"dm:a:b"}"#,
            "not json",
            r#"{"no":"type"}"#,
        ] {
            assert!(replay_safe(safe.as_bytes()), "{safe}");
        }
        for unsafe_ in [
            r#"{"type":"send","channel":"dm:a:b","body":1}"#,
            r#"{"type":"ack","channel":"dm:a:b","seq":1}"#,
            r#"{"type":"read","channel":"dm:a:b","seq":1}"#,
            r#"{"type":"create","channel":"group:g","members":[]}"#,
            r#"{"type":"typing","channel":"dm:a:b"}"#,
            r#"{"type":"s\u0065nd","channel":"dm:a:b","body":1}"#,
            r#"{"type":"teleport"}"#,
        ] {
            assert!(!replay_safe(unsafe_.as_bytes()), "{unsafe_}");
        }
    }

    #[tokio::test]
    async fn unsafe_frames_wait_for_the_handshake() {
        let (done, handshake) = tokio::sync::oneshot::channel::<()>();
        let mut gate = EarlyGate::pending(Box::pin(async move {
            let _ = handshake.await;
        }));
        let sub = Bytes::from_static(br#"{"type":"sub","channel":"dm:a:b"}"#);
        assert_eq!(gate.offer(sub.clone()), Some(sub), "replay-safe: through at once");
        let send = Bytes::from_static(br#"{"type":"send","channel":"dm:a:b","body":1}"#);
        assert_eq!(gate.offer(send.clone()), None, "held");
        assert!(gate.has_held());
        {
            let mut release = pin!(gate.release());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(release.as_mut().poll(&mut cx).is_pending(), "held until the handshake completes");
        }
        assert!(gate.has_held(), "a cancelled release keeps the frame");
        done.send(()).expect("the gate is waiting");
        assert_eq!(gate.release().await, Some(send));
        assert!(!gate.is_pending());
        let ack = Bytes::from_static(br#"{"type":"ack","channel":"dm:a:b","seq":1}"#);
        assert_eq!(gate.offer(ack.clone()), Some(ack), "after the handshake everything passes");
    }
}
