//! Connection lifecycle, limits and failure handling, over the in-process transport (same driver and hub as
//! the network transports, but with full control over the client's reading pace).

use std::sync::Arc;
use std::time::Duration;

use herald::core::config::RateLimit;
use herald::core::id::{ChannelId, ChannelName, UserId};
use herald::core::testkit::protocol::{Harness, InProcHarness, TestClient, TestTokens, dm, text, unique};
use herald::core::{Hub, HubConfig};
use serde_json::{Value, json, value::RawValue};

fn inproc(config: HubConfig) -> (InProcHarness, Hub) {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, config);
    (InProcHarness::new(hub.clone(), tokens), hub)
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// A subscriber that stops reading is dropped from live delivery with a bounded queue, told to resync, and
/// recovers every message from the log by seq.
#[tokio::test]
async fn a_slow_consumer_is_told_to_resync_and_recovers_from_the_log() {
    let mut config = HubConfig::default();
    config.limits.outbound_max_frames = 8;
    config.rate_limit = None;
    let (h, _hub) = inproc(config);
    let (a, b) = (unique("fast"), unique("slow"));
    let ch = dm(&a, &b);
    let mut fast = TestClient::connect_as(&h, &a).await;
    let mut slow = TestClient::connect_as(&h, &b).await;
    slow.ok(json!({"type": "sub", "channel": ch})).await;
    // The slow client reads nothing while 600 messages are sent (more than its queue plus the
    // in-process channel's 256 slots can hold).
    const N: u64 = 600;
    for i in 0..N {
        fast.ok(text(&ch, &format!("m{i}"), &format!("{i}"))).await;
    }
    // Reading now: a prefix of the messages in order, then a resync naming the last one delivered.
    let resync = slow.event("resync").await;
    assert_eq!(resync["channel"], json!(ch));
    let last = resync["seq"].as_u64().expect("resync.seq");
    assert!(last < N, "live delivery stopped early ({last})");
    let delivered: Vec<u64> = slow.backlog().iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(delivered, (1..=last).collect::<Vec<_>>(), "in order and without gaps up to the resync");
    slow.messages(&ch, last as usize).await;
    // Resubscribe from the last seq: exactly the rest.
    let sub = slow.ok(json!({"type": "sub", "channel": ch, "since": last})).await;
    assert_eq!(sub["seq"], json!(N));
    let rest = slow.messages(&ch, (N - last) as usize).await;
    let seqs: Vec<u64> = rest.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (last + 1..=N).collect::<Vec<_>>());
    // And live again.
    fast.ok(text(&ch, "after", "live")).await;
    assert_eq!(slow.messages(&ch, 1).await[0]["seq"], json!(N + 1));
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_with_4003() {
    let (h, _hub) = inproc(HubConfig { auth_timeout: Duration::from_millis(200), ..HubConfig::default() });
    let mut c = TestClient::connect(&h, None).await;
    let e = c.event("error").await;
    assert_eq!(e["code"], json!("unauthenticated"));
    assert_eq!(c.close_code().await, Some(4003));
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_4000() {
    let (h, _hub) = inproc(HubConfig { idle_timeout: Duration::from_millis(300), ..HubConfig::default() });
    let mut c = TestClient::connect_as(&h, &unique("quiet")).await;
    // Activity keeps it open...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.ok(json!({"type": "ping"})).await;
    }
    // ...silence closes it.
    assert_eq!(c.close_code().await, Some(4000));
}

#[tokio::test]
async fn a_session_is_closed_with_4002_when_its_token_expires() {
    // No leeway, so that the session ends at the token's exp.
    let tokens = TestTokens::default();
    let auth = tokens.auth().leeway(Duration::ZERO);
    let store = Arc::new(herald::memory::MemoryStore::new());
    let hub = Hub::builder(store, Arc::new(auth)).build();
    let h = InProcHarness::new(hub, tokens);
    let a = unique("brief");
    let exp = herald::core::model::now_millis() / 1000 + 2;
    let mut c = TestClient::connect(&h, Some(h.tokens().token_expiring(&a, exp))).await;
    assert_eq!(c.hello["user"], json!(a));
    c.ok(json!({"type": "ping"})).await;
    let code = tokio::time::timeout(Duration::from_secs(5), c.close_code()).await.expect("closed in time");
    assert_eq!(code, Some(4002));
}

#[tokio::test]
async fn too_many_malformed_frames_close_with_1008() {
    let (h, hub) = inproc(HubConfig::default());
    let mut c = TestClient::connect_as(&h, &unique("noisy")).await;
    for _ in 0..hub.config().limits.max_consecutive_errors {
        c.send_raw("{{{").await;
    }
    assert_eq!(c.close_code().await, Some(1008));
}

#[tokio::test]
async fn commands_beyond_the_rate_limit_are_refused_with_a_retry_hint() {
    let rate_limit = Some(RateLimit { per_second: 2.0, burst: 3 });
    let (h, _hub) = inproc(HubConfig { rate_limit, ..HubConfig::default() });
    let (a, b) = (unique("rapid"), unique("other"));
    let mut c = TestClient::connect_as(&h, &a).await;
    for _ in 0..3 {
        c.ok(json!({"type": "typing", "channel": dm(&a, &b)})).await;
    }
    let e = c.err(json!({"type": "typing", "channel": dm(&a, &b)}), "rate_limited").await;
    let retry = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 0 && retry <= 500, "retry hint {retry}");
    tokio::time::sleep(Duration::from_millis(retry + 20)).await;
    c.ok(json!({"type": "typing", "channel": dm(&a, &b)})).await;
}

#[tokio::test]
async fn subscriptions_per_session_are_limited() {
    let mut config = HubConfig::default();
    config.limits.max_subscriptions = 2;
    let (h, _hub) = inproc(config);
    let a = unique("many");
    let mut c = TestClient::connect_as(&h, &a).await;
    c.ok(json!({"type": "sub", "channel": dm(&a, "p1")})).await;
    c.ok(json!({"type": "sub", "channel": dm(&a, "p2")})).await;
    c.ok(json!({"type": "sub", "channel": dm(&a, "p2"), "since": 0})).await; // resubscribing is not a new one
    c.err(json!({"type": "sub", "channel": dm(&a, "p3")}), "limit_exceeded").await;
    c.ok(json!({"type": "unsub", "channel": dm(&a, "p1")})).await;
    c.ok(json!({"type": "sub", "channel": dm(&a, "p3")})).await;
}

/// A message that was not stored is never acknowledged: with the store down, `send` fails with
/// `unavailable` and nothing is delivered; once it is back, the retried send is stored exactly once.
#[tokio::test]
async fn with_the_store_down_nothing_is_acknowledged_and_a_retry_succeeds_later() {
    let tokens = TestTokens::default();
    let store = Arc::new(herald_tests::FlakyStore::default());
    let hub = herald_tests::hub_over(store.clone(), &tokens, HubConfig::default());
    let h = InProcHarness::new(hub, tokens);
    let (a, b) = (unique("alice"), unique("bob"));
    let ch = dm(&a, &b);
    let mut ca = TestClient::connect_as(&h, &a).await;
    let mut cb = TestClient::connect_as(&h, &b).await;
    cb.ok(json!({"type": "sub", "channel": ch})).await;
    ca.ok(text(&ch, "first", "1")).await;
    store.set_down(true);
    let e = ca.err(text(&ch, "second", "2"), "unavailable").await;
    assert!(e["retry_after_ms"].as_u64().is_some());
    cb.err(json!({"type": "history", "channel": ch}), "unavailable").await;
    store.set_down(false);
    let r = ca.ok(text(&ch, "second", "2")).await;
    assert_eq!((r["seq"].clone(), r["dup"].clone()), (json!(2), json!(false)));
    let got = cb.messages(&ch, 2).await;
    assert_eq!(got.iter().map(|m| m["cid"].clone()).collect::<Vec<_>>(), vec![json!("first"), json!("second")]);
}

/// The application publishes to a topic: members receive a `system` message; clients cannot publish there.
#[tokio::test]
async fn the_application_publishes_to_a_topic_its_members_read() {
    let (h, hub) = inproc(HubConfig::default());
    let (reader, outsider) = (unique("reader"), unique("outsider"));
    let name = ChannelName::new(unique("alerts")).expect("name");
    let topic = ChannelId::topic(&name);
    hub.create_channel(topic.clone(), user("ops"), &[user(&reader)]).await.expect("create topic");
    let mut c = TestClient::connect_as(&h, &reader).await;
    c.ok(json!({"type": "sub", "channel": topic.as_str()})).await;
    c.err(text(topic.as_str(), "x", "no"), "forbidden").await;
    let body: Arc<RawValue> = Arc::from(RawValue::from_string(r#"{"alert":"disk full"}"#.into()).expect("json"));
    let stored = hub.publish(topic.clone(), user("ops"), body).await.expect("publish");
    assert_eq!(stored.seq, 1);
    let m = c.messages(topic.as_str(), 1).await;
    assert_eq!((m[0]["kind"].clone(), m[0]["from"].clone()), (json!("system"), json!("ops")));
    assert_eq!(m[0]["body"], json!({"alert": "disk full"}));
    let mut o = TestClient::connect_as(&h, &outsider).await;
    o.err(json!({"type": "sub", "channel": topic.as_str()}), "forbidden").await;
    let _: Value = c.ok(json!({"type": "read", "channel": topic.as_str(), "seq": 1})).await;
}
