//! The store conformance suite through [`MeteredStore`], the decorator every hub puts around its store: metering
//! must not change what the store does.

use std::sync::Arc;

use herald_core::metered_store::MeteredStore;
use herald_core::testkit::store::{parallel_appends, run_all};
use herald_memory::MemoryStore;

#[tokio::test]
async fn conformance_through_the_decorator() {
    run_all(&MeteredStore::new(Arc::new(MemoryStore::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_through_the_decorator() {
    parallel_appends(Arc::new(MeteredStore::new(Arc::new(MemoryStore::new())))).await;
}
