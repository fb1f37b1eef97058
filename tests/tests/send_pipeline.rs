//! The hub's per-channel send pipeline: concurrent sends to one channel are appended together (so a store with
//! group commit can put them in one transaction) and still published to subscribers in seq order.

use std::sync::Arc;
use std::time::Duration;

use herald::core::HubConfig;
use herald::core::id::{ChannelId, ChannelName, UserId};
use herald::core::testkit::protocol::{InProcHarness, TestClient, TestTokens, unique};
use herald_tests::FlakyStore;
use serde_json::{json, value::RawValue};

const SENDERS: usize = 40;

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// Forty sends to one channel at once, against a store whose appends each take 20 ms: the appends overlap (one
/// channel is not limited to one append per store round trip), every send gets its own seq, and a subscriber
/// receives the messages exactly once, in seq order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_channel_are_batched_and_delivered_in_seq_order() {
    let tokens = TestTokens::default();
    let store = Arc::new(FlakyStore::default());
    let hub = herald_tests::hub_over(store.clone(), &tokens, HubConfig::default());
    let h = InProcHarness::new(hub.clone(), tokens);

    let reader = unique("reader");
    let topic = ChannelId::topic(&ChannelName::new(unique("hot")).expect("name"));
    hub.create_channel(topic.clone(), user("ops"), &[user(&reader)]).await.expect("create topic");
    let mut c = TestClient::connect_as(&h, &reader).await;
    c.ok(json!({"type": "sub", "channel": topic.as_str()})).await;

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
