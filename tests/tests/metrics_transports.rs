//! The connection metrics carry the transport's label: one connection over each of WebSocket, native QUIC,
//! WebTransport, long-poll and SSE against one hub, counted open, opened and closed (1000) per `transport`.
//! One test per binary: it installs the process-wide recorder.

use std::time::Duration;

use herald::core::HubConfig;
use herald::core::metrics::TRANSPORTS;
use herald::core::testkit::protocol::{TestTokens, unique};
use herald_tests::metrics::Totals;
use herald_tests::xport::{Peer, Servers, Via};
use serde_json::json;

/// Reading the connection series.
trait Connections {
    /// The connection series, sorted (for messages and exact comparisons).
    fn connections(&mut self) -> Vec<(String, f64)>;

    /// Waits (up to 20 s) until the connection series are exactly `want`.
    async fn connections_become(&mut self, what: &str, want: &[(String, f64)]);
}

impl Connections for Totals {
    fn connections(&mut self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .take()
            .iter()
            .filter(|(k, _)| k.starts_with("herald_connections_"))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    }

    /// Waits (up to 20 s) until the connection series are exactly `want`. Closes are counted by the server
    /// after the client has gone, so there is no client-side event to await.
    async fn connections_become(&mut self, what: &str, want: &[(String, f64)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.connections();
            if got == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: connection metrics\n got {got:?}\nwant {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn series(name: &str, labels: &str, value: f64) -> (String, f64) {
    (format!("{name}{{{labels}}}"), value)
}

fn sorted(mut v: Vec<(String, f64)>) -> Vec<(String, f64)> {
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_by_transport_label() {
    let mut totals = Totals::install();

    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    let servers = Servers::start(hub, tokens).await;
    for via in Via::ALL {
        assert!(TRANSPORTS.contains(&via.label()), "{via} is in the label table");
    }

    // One connection over each transport: each is counted open under its own label, and nothing else is.
    let mut peers = Vec::new();
    for via in Via::ALL {
        let mut p = Peer::connect(&servers, via, &unique(via.label())).await;
        p.ok(json!({"type": "ping"})).await;
        peers.push(p);
    }
    let open: Vec<(String, f64)> = Via::ALL
        .iter()
        .flat_map(|via| {
            let l = format!("transport={}", via.label());
            [series("herald_connections_open", &l, 1.0), series("herald_connections_opened_total", &l, 1.0)]
        })
        .collect();
    assert_eq!(totals.connections(), sorted(open.clone()), "one open connection per transport");

    // A second long-poll session announced as SSE but read by polling keeps the label it was opened with.
    let lp_as_sse = servers.connect(Via::Sse, Some(servers.tokens.token(&unique("sse-polled")))).await;
    let mut want = open;
    for (k, v) in &mut want {
        if k.ends_with("{transport=sse}") {
            *v = 2.0;
        }
    }
    assert_eq!(totals.connections(), sorted(want), "a second sse session");
    lp_as_sse.close().await;

    // Each closes normally from the client side: the gauge goes back to 0 and the close is counted with 1000.
    for p in peers {
        p.close().await;
    }
    let closed: Vec<(String, f64)> = Via::ALL
        .iter()
        .flat_map(|via| {
            let l = format!("transport={}", via.label());
            let n = if *via == Via::Sse { 2.0 } else { 1.0 };
            [
                series("herald_connections_open", &l, 0.0),
                series("herald_connections_opened_total", &l, n),
                series("herald_connections_closed_total", &format!("{l},code=1000"), n),
            ]
        })
        .collect();
    totals.connections_become("after every client closed", &sorted(closed.clone())).await;

    // A WebTransport request for a path the server does not serve is refused before any session opens: it is
    // counted as a handshake failure of the QUIC listener (native or WebTransport is not known at that point).
    let mut wrong = servers.quic.server.wt_url(None);
    wrong.set_path("/not-webtransport");
    let token = servers.tokens.token(&unique("lost"));
    let refused = servers.webtransport().connect(&wrong, Some(&token)).await;
    assert!(refused.is_err(), "a WebTransport request to an unserved path is refused");
    let mut want = closed;
    want.push(series("herald_connections_handshake_failures_total", "transport=quic,reason=setup_failed", 1.0));
    totals.connections_become("after a refused WebTransport request", &sorted(want)).await;
}
