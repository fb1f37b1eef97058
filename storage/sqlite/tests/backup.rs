//! Online backup of the SQLite store: a copy taken while the store serves holds everything acknowledged before
//! it, including messages not yet folded, and opens as a store of its own.

mod common;

use common::{group, message, temp, user};
use std::time::Duration;

use herald_core::model::{Channel, now_millis};
use herald_core::store::{ReadRange, Store};
use herald_sqlite::{SqliteConfig, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_holds_every_acknowledged_message_and_opens_as_a_store() {
    let dir = temp();
    let path = dir.path().join("live").join("herald.db");
    // No fold unless asked: the messages are in the append log only when the backup starts.
    let config =
        SqliteConfig { fold_interval: Duration::from_secs(3600), fold_rows: 1 << 30, ..SqliteConfig::new(&path) };
    let store = SqliteStore::open(config).await.expect("open");
    let ch = group("backed-up");
    let alice = user("alice");
    let meta = Channel { id: ch.clone(), created_by: alice.clone(), created_at: now_millis() };
    store.create_channel(meta, std::slice::from_ref(&alice)).await.expect("create_channel");
    for i in 0..50 {
        let body = format!("{{\"n\":{i}}}");
        store.append(message(&ch, &alice, Some(&format!("c{i}")), &body)).await.expect("append");
    }
    assert_eq!(store.unfolded(), 50, "the messages wait in the append log");

    // Appends go on while the backup runs.
    let writer = {
        let (store, ch, alice) = (std::sync::Arc::new(()), ch.clone(), alice.clone());
        let _ = store;
        (ch, alice)
    };
    let copy = dir.path().join("copy").join("herald.db");
    std::fs::create_dir_all(copy.parent().expect("a parent")).expect("mkdir");
    let (backup, late) = tokio::join!(store.backup(&copy), async {
        let mut late = 0;
        for i in 50..80 {
            let body = format!("{{\"n\":{i}}}");
            store.append(message(&writer.0, &writer.1, Some(&format!("c{i}")), &body)).await.expect("append");
            late += 1;
        }
        late
    });
    backup.expect("backup");
    assert_eq!(late, 30);

    // A second backup to the same file is refused with a clear error, and the first copy is untouched.
    let again = store.backup(&copy).await.expect_err("the copy exists");
    assert!(again.to_string().contains("backup to"), "{again}");
    store.close().await;

    let restored = SqliteStore::open(SqliteConfig::new(&copy)).await.expect("the copy opens as a store");
    let page = restored.read(&ch, ReadRange::After(0), 1000).await.expect("read");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert!(seqs.len() >= 50, "every message acknowledged before the backup is in it: {seqs:?}");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order, no gap, no duplicate");
    assert!(restored.is_member(&ch, &alice).await.expect("is_member"), "membership is in the copy");
    // A resend of a backed-up client id is recognised as a duplicate in the restored store.
    let again = restored.append(message(&ch, &alice, Some("c0"), "{\"n\":0}")).await.expect("resend");
    assert!(again.duplicate, "c0 was stored before the backup");
    assert_eq!(again.message.seq, 1);
    // New appends in the restored store continue the sequence and survive its restart.
    let next = restored.append(message(&ch, &alice, Some("after"), "{\"n\":-1}")).await.expect("append");
    assert_eq!(next.message.seq, seqs.len() as u64 + 1);
    restored.close().await;
    let reopened = SqliteStore::open(SqliteConfig::new(&copy)).await.expect("reopen");
    let page = reopened.read(&ch, ReadRange::After(0), 1000).await.expect("read");
    assert_eq!(page.messages.len(), seqs.len() + 1);
    reopened.close().await;
}
