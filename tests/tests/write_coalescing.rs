//! Write coalescing (`HubConfig::write_coalescing`): a connection that wrote recently holds what is queued for
//! it until one window after that write and sends it all in one `Connection::send`, in order; a connection that
//! has been quiet, and a command's reply, go out at once. Runs on tokio's paused clock: the times are exact.

use std::time::Duration;

use bytes::Bytes;
use herald::core::HubConfig;
use herald::core::auth::Credentials;
use herald::core::driver::{self, CloseReason, ConnError, Connection, Inbound};
use herald::core::id::{ChannelId, UserId};
use herald::core::testkit::protocol::TestTokens;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_millis(50);

/// A connection that reports every `send` call (its time and its frames) to the test.
struct Recording {
    inbound: mpsc::Receiver<Inbound>,
    sends: mpsc::UnboundedSender<(Instant, Vec<Bytes>)>,
}

impl Connection for Recording {
    async fn recv(&mut self) -> Option<Result<Inbound, ConnError>> {
        self.inbound.recv().await.map(Ok)
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ConnError> {
        let _ = self.sends.send((Instant::now(), frames.to_vec()));
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), ConnError> {
        Ok(())
    }

    async fn close(self, _reason: CloseReason) {}
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

fn json(frame: &Bytes) -> Value {
    serde_json::from_slice(frame).expect("frames are JSON")
}

struct Setup {
    hub: herald::core::Hub,
    channel: ChannelId,
    inbound: mpsc::Sender<Inbound>,
    sends: mpsc::UnboundedReceiver<(Instant, Vec<Bytes>)>,
}

/// A hub with `window`, a group `group:g` with bob as a member, and bob connected and subscribed to it.
async fn setup(window: Duration) -> Setup {
    let tokens = TestTokens::default();
    let config = HubConfig { write_coalescing: window, rate_limit: None, ..HubConfig::default() };
    let hub = herald_tests::memory_hub(&tokens, config);
    let channel = ChannelId::new("group:g").expect("channel id");
    hub.create_channel(channel.clone(), user("app"), &[user("bob")]).await.expect("create group");
    let (inbound, rx) = mpsc::channel(16);
    let (tx, mut sends) = mpsc::unbounded_channel();
    let conn = Recording { inbound: rx, sends: tx };
    tokio::spawn(driver::run(hub.clone(), conn, Some(Credentials::Bearer(tokens.token("bob")))));
    let (_, hello) = sends.recv().await.expect("hello");
    assert_eq!(json(&hello[0])["type"], "hello");
    let sub = r#"{"type":"sub","id":1,"channel":"group:g"}"#;
    inbound.send(Inbound::Frame(Bytes::from_static(sub.as_bytes()))).await.expect("send sub");
    let (_, reply) = sends.recv().await.expect("sub reply");
    assert_eq!(json(&reply[0])["id"], 1, "{:?}", reply);
    Setup { hub, channel, inbound, sends }
}

async fn publish(s: &Setup, n: u64) {
    let body = RawValue::from_string(format!("{{\"n\":{n}}}")).expect("body");
    s.hub.publish(s.channel.clone(), user("app"), body.into()).await.expect("publish");
}

fn seqs(frames: &[Bytes]) -> Vec<u64> {
    frames
        .iter()
        .map(json)
        .map(|v| {
            assert_eq!(v["type"], "message", "{v}");
            v["seq"].as_u64().expect("seq")
        })
        .collect()
}

/// Five messages 5 ms apart, right after a write: one `send` carrying all five in seq order, one window after
/// that write. Then, after a quiet spell, a message goes out at once.
#[tokio::test(start_paused = true)]
async fn frames_arriving_within_the_window_go_out_in_one_send_in_order() {
    let mut s = setup(WINDOW).await;
    let wrote = Instant::now();
    for n in 1..=5 {
        publish(&s, n).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (at, frames) = s.sends.recv().await.expect("the coalesced write");
    assert_eq!(seqs(&frames), vec![1, 2, 3, 4, 5], "one send, in order");
    assert!(at >= wrote + WINDOW, "held until the window ended: {:?}", at - wrote);

    tokio::time::sleep(WINDOW * 2).await;
    let quiet = Instant::now();
    publish(&s, 6).await;
    let (at, frames) = s.sends.recv().await.expect("the next write");
    assert_eq!(seqs(&frames), vec![6]);
    assert_eq!(at, quiet, "a connection that was quiet for a window writes at once");
    drop(s.inbound);
}

/// A command's reply is not held, even right after a write.
#[tokio::test(start_paused = true)]
async fn a_reply_goes_out_at_once() {
    let mut s = setup(WINDOW).await;
    publish(&s, 1).await;
    let ping = Bytes::from_static(br#"{"type":"ping","id":7}"#);
    let sent = Instant::now();
    s.inbound.send(Inbound::Frame(ping)).await.expect("send ping");
    let mut got = Vec::new();
    while !got.iter().any(|f: &Bytes| json(f)["id"] == 7) {
        let (at, frames) = s.sends.recv().await.expect("a write");
        assert_eq!(at, sent, "nothing waits for the window while a reply is due");
        got.extend(frames);
    }
    assert_eq!(json(&got[0])["seq"], 1, "the message queued before the reply is written before it");
}

/// Without coalescing, each message is written as soon as it arrives: the first test's five messages take five
/// writes.
#[tokio::test(start_paused = true)]
async fn without_a_window_each_message_is_written_on_arrival() {
    let mut s = setup(Duration::ZERO).await;
    for n in 1..=5 {
        publish(&s, n).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 1..=5 {
        let (_, frames) = s.sends.recv().await.expect("a write");
        assert_eq!(seqs(&frames), vec![n]);
    }
}
