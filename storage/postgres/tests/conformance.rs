//! The store conformance suite against [`PgStore`] on the test database (`HERALD_TEST_DATABASE_URL`), each test
//! in a fresh schema of its own.

mod common;

use std::sync::Arc;

use common::TestSchema;
use herald_core::store::Store;
use herald_core::testkit::store::{parallel_appends, run_all, run_durable};
use herald_postgres::{PgConfig, PgStore};

async fn connect(config: PgConfig) -> PgStore {
    PgStore::connect(config).await.expect("connect to the test database")
}

#[tokio::test]
async fn conformance_current_thread() {
    let Some(schema) = TestSchema::new("conformance_current_thread") else { return };
    run_all(&connect(schema.config()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_multi_thread() {
    let Some(schema) = TestSchema::new("conformance_multi_thread") else { return };
    let store = connect(schema.config()).await;
    run_all(&store).await;
    // The suite names its channels uniquely, so it runs again on the same schema.
    run_all(&store).await;
}

/// Tiny batches and queues, several writers: every code path of batching (full batches, queue back-pressure,
/// channels spread over writers) with the same results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_tiny_batches() {
    let Some(schema) = TestSchema::new("conformance_tiny_batches") else { return };
    let config = PgConfig { writers: 3, batch_max_messages: 2, queue_max_messages: 3, ..schema.config() };
    run_all(&connect(config).await).await;
}

/// One writer and big batches: many channels in one transaction.
#[tokio::test]
async fn conformance_one_writer() {
    let Some(schema) = TestSchema::new("conformance_one_writer") else { return };
    let config = PgConfig { writers: 1, pool_size: 2, ..schema.config() };
    run_all(&connect(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn parallel() {
    let Some(schema) = TestSchema::new("parallel") else { return };
    parallel_appends(Arc::new(connect(schema.config()).await)).await;
}

/// Reopening a new `PgStore` on the same schema finds everything, the duplicate index included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable() {
    let Some(schema) = TestSchema::new("durable") else { return };
    let config = schema.config();
    run_durable(|| {
        let config = config.clone();
        async move { Arc::new(connect(config).await) as Arc<dyn Store> }
    })
    .await;
}

/// A small body limit is honoured (the suite checks TooLarge at the limit the store reports).
#[tokio::test]
async fn conformance_small_body_limit() {
    let Some(schema) = TestSchema::new("conformance_small_body_limit") else { return };
    let config = PgConfig { max_body_bytes: 100 * 1024, ..schema.config() };
    let store = connect(config).await;
    assert_eq!(store.max_body_bytes(), 100 * 1024);
    run_all(&store).await;
}
