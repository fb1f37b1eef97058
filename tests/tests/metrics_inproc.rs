//! Hub metrics recorded in process (no exporter): slow-consumer resyncs, fan-out deliveries and the connection
//! gauge of the in-process transport. One test per binary: it installs the process-wide recorder.

use herald::core::HubConfig;
use herald::core::testkit::protocol::{InProcHarness, TestClient, TestTokens, dm, text, unique};
use herald_tests::metrics::Totals;
use serde_json::json;

#[tokio::test]
async fn slow_consumers_resyncs_and_connections_are_counted() {
    let mut totals = Totals::install();

    let mut config = HubConfig::default();
    config.limits.outbound_max_frames = 8;
    config.rate_limit = None;
    // Every write on arrival: the slow client's driver then blocks in its first full write and keeps the session in
    // the channel's index, so that every one of the N fan-outs finds a subscriber and is timed (with a coalescing
    // window, the driver drops the lagged subscription sooner and the later fan-outs find no one to time).
    config.write_coalescing = std::time::Duration::ZERO;
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, config);
    let h = InProcHarness::new(hub, tokens);
    let (a, b) = (unique("fast"), unique("slow"));
    let ch = dm(&a, &b);
    let mut fast = TestClient::connect_as(&h, &a).await;
    let mut slow = TestClient::connect_as(&h, &b).await;
    let open = "herald_connections_open{transport=inproc}";
    assert_eq!(totals.take().get(open), Some(&2.0));
    slow.ok(json!({"type": "sub", "channel": ch})).await;
    // The slow client reads nothing while more is sent than its queue and the in-process channel hold.
    const N: u64 = 600;
    for i in 0..N {
        fast.ok(text(&ch, &format!("m{i}"), &format!("{i}"))).await;
    }
    let resync = slow.event("resync").await;
    let last = resync["seq"].as_u64().expect("resync.seq");

    let v = totals.take().clone();
    let get = |k: &str| v.get(k).copied().unwrap_or(0.0);
    assert_eq!(get("herald_messages_stored_total{}"), N as f64);
    assert_eq!(get("herald_fanout_lagged_total{}"), 1.0, "{v:?}");
    assert_eq!(get("herald_sessions_resyncs_total{}"), 1.0, "{v:?}");
    // Every message queued live before the lag was delivered: exactly the prefix up to the resync's seq.
    assert_eq!(get("herald_fanout_deliveries_total{event=message}"), last as f64, "{v:?}");
    assert_eq!(get("herald_fanout_duration_seconds{}:count"), N as f64, "{v:?}");
    assert_eq!(get("herald_commands_total{kind=send,status=ok}"), N as f64, "{v:?}");
    assert_eq!(get("herald_store_duration_seconds{operation=append,result=ok}:count"), N as f64, "{v:?}");

    // Both clients leave: the drivers see the end of their streams and close normally.
    drop((fast, slow));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = totals.take();
        let closed = v.get("herald_connections_closed_total{transport=inproc,code=1000}").copied();
        if closed == Some(2.0) {
            assert_eq!(v.get(open), Some(&0.0), "{v:?}");
            assert_eq!(v.get("herald_connections_opened_total{transport=inproc}"), Some(&2.0), "{v:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the connections were not counted closed: {v:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
