//! Runs the store conformance suite against [`SqliteStore`] on a fresh database in a temporary directory.

use std::path::Path;
use std::sync::Arc;

use herald_core::store::Store;
use herald_core::testkit::store::{parallel_appends, run_all, run_durable};
use herald_sqlite::{SqliteConfig, SqliteStore};

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path)).await.expect("open the SQLite store")
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

#[tokio::test]
async fn conformance_current_thread() {
    let dir = temp();
    run_all(&open(&dir.path().join("herald.db")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_multi_thread() {
    let dir = temp();
    run_all(&open(&dir.path().join("herald.db")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn parallel() {
    let dir = temp();
    parallel_appends(Arc::new(open(&dir.path().join("herald.db")).await)).await;
}

#[tokio::test]
async fn suite_runs_twice_against_one_database() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    run_all(&open(&path).await).await;
    // A second store on the same (now populated) file: the suite's fresh channels do not collide.
    run_all(&open(&path).await).await;
}

/// The durable checks: each `open` is a new store on the same file; the previous one was dropped (which waits
/// for its writer), so the lock is free again.
#[tokio::test]
async fn durable_current_thread() {
    let dir = temp();
    let path = dir.path().join("nested").join("dir").join("herald.db");
    run_durable(|| {
        let path = path.clone();
        async move { Arc::new(open(&path).await) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_multi_thread() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    run_durable(|| {
        let path = path.clone();
        async move { Arc::new(open(&path).await) as Arc<dyn Store> }
    })
    .await;
}

/// The suite with tiny batches, a tiny queue and a tiny channel cache: every path through the writer (cache
/// misses, cleared caches, many small transactions) must keep the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_with_tiny_limits() {
    let dir = temp();
    let config = SqliteConfig {
        read_pool_size: 1,
        batch_max: 3,
        queue_bound: 2,
        channel_cache: 2,
        max_body_bytes: 100_000,
        ..SqliteConfig::new(dir.path().join("herald.db"))
    };
    let store = Arc::new(SqliteStore::open(config).await.expect("open"));
    run_all(&*store).await;
    parallel_appends(store).await;
}
