//! The hub's per-channel send pipeline: concurrent sends to one channel are appended together (so a store with
//! group commit can put them in one transaction) and still published to subscribers in seq order.

use std::sync::Arc;
use std::time::Duration;

use herald::core::id::{ChannelId, ChannelName, UserId};
use herald::core::testkit::protocol::{InProcHarness, InProcRaw, TestClient, TestTokens, dm, text, unique};
use herald::core::{Hub, HubConfig};
use herald_tests::FlakyStore;
use serde_json::{json, value::RawValue};

const SENDERS: usize = 40;

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// A hub with `config` over a store whose appends can be slowed down, and an in-process harness on it.
fn flaky_hub(config: HubConfig) -> (Arc<FlakyStore>, Hub, InProcHarness) {
    let tokens = TestTokens::default();
    let store = Arc::new(FlakyStore::default());
    let hub = herald_tests::hub_over(store.clone(), &tokens, config);
    let h = InProcHarness::new(hub.clone(), tokens);
    (store, hub, h)
}

/// A new topic named after `prefix` with one member, the reader, connected and subscribed to it.
async fn subscribed_topic(hub: &Hub, h: &InProcHarness, prefix: &str) -> (ChannelId, TestClient<InProcRaw>) {
    let reader = unique("reader");
    let topic = ChannelId::topic(&ChannelName::new(unique(prefix)).expect("name"));
    hub.create_channel(topic.clone(), user("ops"), &[user(&reader)]).await.expect("create topic");
    let mut c = TestClient::connect_as(h, &reader).await;
    c.ok(json!({"type": "sub", "channel": topic.as_str()})).await;
    (topic, c)
}

/// alice and bob connected, bob subscribed to their `dm:` channel: (channel, alice, bob).
async fn dm_pair(h: &InProcHarness) -> (String, TestClient<InProcRaw>, TestClient<InProcRaw>) {
    let (a, b) = (unique("alice"), unique("bob"));
    let ch = dm(&a, &b);
    let ca = TestClient::connect_as(h, &a).await;
    let mut cb = TestClient::connect_as(h, &b).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    (ch, ca, cb)
}

/// Forty sends to one channel at once, against a store whose appends each take 20 ms: the appends overlap (one
/// channel is not limited to one append per store round trip), every send gets its own seq, and a subscriber
/// receives the messages exactly once, in seq order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_channel_are_batched_and_delivered_in_seq_order() {
    let (store, hub, h) = flaky_hub(HubConfig::default());
    let (topic, mut c) = subscribed_topic(&hub, &h, "hot").await;

    store.set_append_delay(Duration::from_millis(20));
    let sends: Vec<_> = (0..SENDERS)
        .map(|i| {
            let (hub, topic) = (hub.clone(), topic.clone());
            tokio::spawn(async move {
                let body = Arc::from(RawValue::from_string(format!(r#"{{"n":{i}}}"#)).expect("json"));
                hub.publish(topic, user("ops"), body).await.expect("publish")
            })
        })
        .collect();
    let mut seqs = Vec::with_capacity(SENDERS);
    for send in sends {
        seqs.push(send.await.expect("join").seq);
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=SENDERS as u64).collect();
    assert_eq!(seqs, expected, "every send has its own seq, with no gap");
    assert!(
        store.most_appends_in_flight() > 1,
        "sends to one channel must not wait for each other's store round trip (most in flight: {})",
        store.most_appends_in_flight()
    );

    let delivered: Vec<u64> =
        c.messages(topic.as_str(), SENDERS).await.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(delivered, expected, "live delivery in seq order, each message once");
    c.no_event("message", Duration::from_millis(200)).await;
}

/// A send runs in its connection's task (no task spawned per send) until the store makes it wait. Five sends
/// written at once to a store whose appends each take 30 ms: each is answered exactly once, in order, with
/// consecutive seqs, and the recipient receives the five messages in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_that_wait_for_the_store_are_answered_once_and_delivered_in_order() {
    let (store, _hub, h) = flaky_hub(HubConfig::default());
    let (ch, mut ca, mut cb) = dm_pair(&h).await;

    store.set_append_delay(Duration::from_millis(30));
    // Written back to back, before the first is answered: the server runs them one after the other.
    for i in 1..=5 {
        ca.send_raw(
            json!({"type": "send", "id": 100 + i, "channel": ch, "cid": format!("c{i}"), "body": {"n": i}}).to_string(),
        )
        .await;
    }
    for i in 1..=5u64 {
        let r = ca.event("reply").await;
        assert_eq!((r["id"].as_u64(), r["seq"].as_u64()), (Some(100 + i), Some(i)), "reply {i}: {r}");
    }
    ca.no_event("reply", Duration::from_millis(200)).await;
    ca.no_event("error", Duration::ZERO).await;

    let got: Vec<(u64, u64)> = cb
        .messages(&ch, 5)
        .await
        .iter()
        .map(|m| (m["seq"].as_u64().expect("seq"), m["body"]["n"].as_u64().expect("n")))
        .collect();
    assert_eq!(got, (1..=5).map(|i| (i, i)).collect::<Vec<_>>(), "delivered once each, in seq order");
    cb.no_event("message", Duration::from_millis(100)).await;
}

/// A send whose command times out while its append is still waiting for the store is not abandoned: the client
/// gets `timeout`, and the message is still stored and delivered live once the store answers (the rest of the
/// work moved to a task of its own when the command's future was dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_times_out_mid_append_is_still_stored_and_delivered() {
    let (store, _hub, h) = flaky_hub(HubConfig { command_timeout: Duration::from_millis(50), ..HubConfig::default() });
    let (ch, mut ca, mut cb) = dm_pair(&h).await;

    store.set_append_delay(Duration::from_millis(300));
    ca.err(text(&ch, "slow", "late but kept"), "timeout").await;
    let m = cb.event("message").await;
    assert_eq!((m["seq"].as_u64(), m["cid"].as_str()), (Some(1), Some("slow")), "{m}");

    // Stored exactly once: a resend with the same client id is a duplicate of it.
    store.set_append_delay(Duration::ZERO);
    let again = ca.ok(text(&ch, "slow", "late but kept")).await;
    assert_eq!((again["seq"].as_u64(), again["dup"].as_bool()), (Some(1), Some(true)), "{again}");
    cb.no_event("message", Duration::from_millis(100)).await;
}

/// `Hub::publish` dropped by its caller while the append waits for the store: the message is still stored and
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_publish_dropped_mid_append_is_still_delivered() {
    let (store, hub, h) = flaky_hub(HubConfig::default());
    let (topic, mut c) = subscribed_topic(&hub, &h, "news").await;

    store.set_append_delay(Duration::from_millis(200));
    let body = Arc::from(RawValue::from_string(r#"{"n":1}"#.to_owned()).expect("json"));
    let gave_up = tokio::time::timeout(Duration::from_millis(20), hub.publish(topic.clone(), user("ops"), body)).await;
    assert!(gave_up.is_err(), "the publish finished before the store answered");
    let m = c.event("message").await;
    assert_eq!((m["seq"].as_u64(), m["body"]["n"].as_u64()), (Some(1), Some(1)), "{m}");
}

/// The driver writes a command's reply itself, after whatever the command queued: a sender that follows its
/// channel receives its own `message` event before the `reply` to its `send`, and subscribing replays the log
/// before the `sub` reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_follows_what_its_command_queued() {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    let h = InProcHarness::new(hub, tokens);
    let (a, b) = (unique("alice"), unique("bob"));
    let ch = dm(&a, &b);
    let mut ca = TestClient::connect_as(&h, &a).await;
    ca.ok(json!({"type": "sub", "channel": ch})).await;
    for i in 1..=3u64 {
        let sent = ca.ok(text(&ch, &format!("c{i}"), "hi")).await;
        assert_eq!(sent["seq"].as_u64(), Some(i));
        let own = ca.backlog().iter().filter(|v| v["type"] == "message" && v["seq"] == json!(i)).count();
        assert_eq!(own, 1, "the sender's own message {i} arrives once, before the reply: {:?}", ca.backlog());
    }
    let mut cb = TestClient::connect_as(&h, &b).await;
    let sub = cb.ok(json!({"type": "sub", "channel": ch, "since": 0})).await;
    assert_eq!(sub["seq"].as_u64(), Some(3));
    let replayed: Vec<u64> = cb.backlog().iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(replayed, vec![1, 2, 3], "the replay precedes the `sub` reply");
}
