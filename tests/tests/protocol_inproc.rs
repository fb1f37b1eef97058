//! The protocol conformance suite over the in-process transport: the same suite as over WebSocket.

use herald::core::HubConfig;
use herald::core::testkit::protocol::{self, InProcHarness, TestTokens};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_in_process() {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    protocol::run_all(&InProcHarness::new(hub, tokens)).await;
}
