//! The protocol conformance suite over long-poll and over SSE, over h2c, TLS + HTTP/2 and cleartext HTTP/1.1.

mod common;

use herald_core::HubConfig;
use herald_core::testkit::protocol;
use herald_longpoll::LpConfig;
use herald_longpoll::client::LpClient;
use herald_longpoll::testkit::{LpHarness, Reading};

async fn over_tls(reading: Reading) {
    let (hub, tokens) = common::hub(HubConfig::default());
    let max_frame = hub.config().limits.max_frame_bytes;
    let server = common::Server::start(hub, LpConfig::default(), true).await;
    let client = LpClient::with_http(server.h2(), server.base());
    let opened = client.open(Some(&tokens.token("alpn-check"))).await.expect("open");
    assert_eq!(opened.version, reqwest::Version::HTTP_2, "ALPN negotiated HTTP/2");
    protocol::run_all(&LpHarness::new(client, tokens, max_frame, reading)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_long_poll_h2c() {
    let (hub, tokens) = common::hub(HubConfig::default());
    protocol::run_all(&LpHarness::start_h2c(hub, tokens, Reading::Poll).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_sse_h2c() {
    let (hub, tokens) = common::hub(HubConfig::default());
    protocol::run_all(&LpHarness::start_h2c(hub, tokens, Reading::Sse).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_long_poll_tls_http2() {
    over_tls(Reading::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_sse_tls_http2() {
    over_tls(Reading::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_suite_passes_over_long_poll_http1() {
    let (hub, tokens) = common::hub(HubConfig::default());
    let max_frame = hub.config().limits.max_frame_bytes;
    let server = common::Server::start(hub, LpConfig::default(), false).await;
    let client = LpClient::with_http(server.h1(), server.base());
    protocol::run_all(&LpHarness::new(client, tokens, max_frame, Reading::Poll)).await;
}
