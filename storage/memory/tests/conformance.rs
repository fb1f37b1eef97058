//! Runs the store conformance suite against [`MemoryStore`], plus checks specific to the in-memory store.

use std::sync::Arc;

use herald_core::id::{ChannelId, ChannelName, MessageId, UserId};
use herald_core::model::{Channel, MessageKind, NewMessage, now_millis, null_body};
use herald_core::store::{ReadRange, Store, StoreError};
use herald_core::testkit::store::{parallel_appends, run_all};
use herald_memory::MemoryStore;

#[tokio::test]
async fn conformance_current_thread() {
    run_all(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_multi_thread() {
    run_all(&MemoryStore::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn parallel() {
    parallel_appends(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn suite_runs_twice_against_one_store() {
    let store = MemoryStore::new();
    run_all(&store).await;
    run_all(&store).await;
}

fn group(name: &str) -> ChannelId {
    ChannelId::group(&ChannelName::new(name).expect("valid channel name"))
}

fn message(channel: &ChannelId, sender: &UserId) -> NewMessage {
    NewMessage {
        channel: channel.clone(),
        id: MessageId::generate(),
        sender: sender.clone(),
        client_id: None,
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: null_body(),
    }
}

/// Many channels created and appended to from many OS threads at once: every channel ends up with its own
/// gap-free log.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn many_channels_in_parallel() {
    const CHANNELS: usize = 64;
    const WRITERS_PER_CHANNEL: usize = 4;
    const PER_WRITER: usize = 100;
    let store = Arc::new(MemoryStore::new());
    let owner = UserId::new("owner").expect("valid user id");
    let mut handles = Vec::new();
    for c in 0..CHANNELS {
        for w in 0..WRITERS_PER_CHANNEL {
            let (store, owner) = (Arc::clone(&store), owner.clone());
            handles.push(tokio::spawn(async move {
                let ch = group(&format!("ch-{c}"));
                let meta = Channel { id: ch.clone(), created_by: owner.clone(), created_at: now_millis() };
                store.ensure_channel(meta, &[]).await.expect("ensure_channel");
                let sender = UserId::new(format!("w{w}")).expect("valid user id");
                for _ in 0..PER_WRITER {
                    store.append(message(&ch, &sender)).await.expect("append");
                }
            }));
        }
    }
    for h in handles {
        h.await.expect("writer task panicked");
    }
    let per_channel = WRITERS_PER_CHANNEL * PER_WRITER;
    for c in 0..CHANNELS {
        let ch = group(&format!("ch-{c}"));
        assert_eq!(store.last_seq(&ch).await.expect("last_seq"), per_channel as u64);
        let page = store.read(&ch, ReadRange::After(0), per_channel).await.expect("read");
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=per_channel as u64).collect::<Vec<_>>(), "channel {ch} has a gap-free log");
        assert!(!page.more);
    }
    assert_eq!(
        format!("{store:?}"),
        format!(
            "MemoryStore {{ channels: {CHANNELS}, max_body_bytes: {}, .. }}",
            herald_core::store::DEFAULT_MAX_BODY_BYTES
        )
    );
}

/// The in-memory store refuses cursors in channels that do not exist (the trait leaves this open).
#[tokio::test]
async fn set_cursor_in_unknown_channel_fails() {
    let store = MemoryStore::new();
    let ch = group("nowhere");
    let alice = UserId::new("alice").expect("valid user id");
    let err = store
        .set_cursor(&ch, &alice, herald_core::model::CursorKind::Read, 3)
        .await
        .expect_err("set_cursor in an unknown channel");
    assert!(matches!(err, StoreError::ChannelNotFound(c) if c == ch));
}
