//! The protocol conformance suite over native QUIC and WebTransport on loopback.

use std::sync::Arc;

use herald_core::testkit::protocol::{self, TestTokens};
use herald_core::{Hub, HubConfig};
use herald_memory::MemoryStore;
use herald_quic::testkit::{Flavour, QuicHarness};

async fn start(flavour: Flavour) -> QuicHarness {
    let tokens = TestTokens::default();
    let hub = Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(HubConfig::default()).build();
    QuicHarness::start(hub, tokens, flavour).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_native_quic() {
    let h = start(Flavour::Native).await;
    protocol::run_all(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_webtransport_with_header_token() {
    let h = start(Flavour::WebTransportHeader).await;
    protocol::run_all(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_webtransport_with_query_token() {
    let h = start(Flavour::WebTransportQuery).await;
    protocol::run_all(&h).await;
}
