//! The store conformance suite.
//!
//! Every [`Store`] implementation runs these checks from its own tests, the way every object_store backend
//! runs the same integration functions (`storage/memory/tests/conformance.rs` is a working example; `MyStore`
//! below stands for your store):
//!
//! ```text
//! #[tokio::test]
//! async fn conformance() {
//!     herald_core::testkit::store::run_all(&MyStore::new()).await;
//! }
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
//! async fn parallel() {
//!     herald_core::testkit::store::parallel_appends(std::sync::Arc::new(MyStore::new())).await;
//! }
//! ```
//!
//! Each check is a plain `async fn` taking `&dyn Store`; it panics with a message naming the broken rule when
//! the store gets a value wrong. Every check creates its own channels, named with a fresh UUIDv7, so the suite
//! can run repeatedly, and from several processes at once, against one shared persistent database.
//!
//! The checks taking `&dyn Store` run their concurrent work inside one task (interleaved with
//! [`join_all`]), which gives a backend doing I/O many requests in flight at once. [`parallel_appends`]
//! takes an `Arc<dyn Store>` and spawns tasks, so on a multi-thread runtime it also exercises true
//! parallelism (which matters for in-process stores).

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::value::RawValue;

use crate::id::{ChannelId, ChannelKind, ChannelName, ClientMsgId, MessageId, UserId};
use crate::model::{Appended, Body, Channel, CursorKind, Message, MessageKind, NewMessage, Seq, now_millis, null_body};
use crate::store::{ReadRange, Store, StoreError};

/// Tasks in the concurrency checks.
const TASKS: usize = 8;
/// Appends per task in the concurrency checks.
const PER_TASK: usize = 200;

/// Runs every check of the suite that takes `&dyn Store`, one after another.
///
/// [`parallel_appends`] is not included, as it needs an `Arc`; call it separately.
pub async fn run_all(store: &dyn Store) {
    append_assigns_consecutive_seqs(store).await;
    append_to_unknown_channel_fails(store).await;
    idempotent_append(store).await;
    read_after(store).await;
    read_before(store).await;
    read_unknown_channel_is_empty(store).await;
    get_by_seq(store).await;
    last_seq_tracks_the_log(store).await;
    create_channel_rejects_existing(store).await;
    ensure_channel_returns_the_first(store).await;
    membership(store).await;
    cursors_only_move_forward(store).await;
    body_bytes_preserved(store).await;
    kinds_and_refers_preserved(store).await;
    concurrent_appends(store).await;
    concurrent_duplicate_appends(store).await;
    concurrent_appends_many_channels(store).await;
    paging_edges(store).await;
    oversize_body_refused(store).await;
}

/// The checks that need a store which survives a restart: `open` must return a new store instance on the same
/// durable data each time it is called (a reopened file, the same database schema). Each check drops the store it
/// wrote with before opening the next one.
///
/// ```text
/// #[tokio::test]
/// async fn durable() {
///     let dir = tempfile::tempdir().unwrap();
///     herald_core::testkit::store::run_durable(|| async { Arc::new(MyStore::open(dir.path()).await.unwrap()) as _ }).await;
/// }
/// ```
pub async fn run_durable<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    survives_restart(&open).await;
    dedup_survives_restart(&open).await;
}

/// `append` assigns 1, 2, 3, ... per channel and returns the stored message unchanged but for its seq;
/// `get` and `last_seq` agree with it.
pub async fn append_assigns_consecutive_seqs(store: &dyn Store) {
    let ch = create(store, "seq", &[]).await;
    assert_eq!(last_seq(store, &ch).await, 0, "a new channel must have last_seq 0");
    let alice = user("alice");
    for expected in 1..=5 {
        let client_id = format!("seq-{expected}");
        let msg = new_message(&ch, &alice, Some(&client_id), &format!(r#"{{"n":{expected}}}"#));
        let appended = append(store, msg.clone()).await;
        assert!(!appended.duplicate, "a first append must not be reported as a duplicate");
        assert_eq!(
            appended.message,
            msg.into_message(expected),
            "append must return the message as given, with the next seq ({expected})"
        );
        assert_eq!(last_seq(store, &ch).await, expected, "last_seq must be the seq of the newest append");
        assert_eq!(
            get(store, &ch, expected).await.as_ref(),
            Some(&appended.message),
            "get must return the message append stored at seq {expected}"
        );
    }

    let other = create(store, "seq-other", &[]).await;
    let first = append(store, new_message(&other, &alice, None, "1")).await;
    assert_eq!(first.message.seq, 1, "seqs are per channel: a second channel starts at 1");
    assert_eq!(last_seq(store, &ch).await, 5, "appending to another channel must not change this one");
}

/// `append` to a channel that does not exist fails with [`StoreError::ChannelNotFound`] and creates nothing.
pub async fn append_to_unknown_channel_fails(store: &dyn Store) {
    let ch = unique_channel("no-such-channel");
    let err = store
        .append(new_message(&ch, &user("alice"), Some("c-1"), "{}"))
        .await
        .expect_err("append to a channel that does not exist must fail");
    assert!(
        matches!(&err, StoreError::ChannelNotFound(c) if *c == ch),
        "append to an unknown channel must fail with ChannelNotFound({ch}), got {err:?}"
    );
    assert_eq!(channel(store, &ch).await, None, "a failed append must not create the channel");
    assert_eq!(last_seq(store, &ch).await, 0, "a failed append must not store anything");
}

/// The idempotency rule: a second append with the same `(channel, sender, client_id)` stores nothing and
/// returns the original with `duplicate = true`; another sender, another channel or another client id is a
/// different message, and a message without a client id is never deduplicated.
pub async fn idempotent_append(store: &dyn Store) {
    let ch = create(store, "dedup", &[]).await;
    let other_ch = create(store, "dedup-other", &[]).await;
    let (alice, bob) = (user("alice"), user("bob"));

    let first = new_message(&ch, &alice, Some("c-1"), r#"{"text":"first"}"#);
    let original = append(store, first.clone()).await;
    assert!(!original.duplicate, "the first append of a client id is not a duplicate");
    assert_eq!(original.message, first.clone().into_message(1), "the first append stores the message at seq 1");

    for attempt in 0..2 {
        let mut retry = new_message(&ch, &alice, Some("c-1"), r#"{"text":"a retry with another body"}"#);
        retry.ts = first.ts + 1000;
        let again = append(store, retry).await;
        assert!(again.duplicate, "a retry with the same (channel, sender, client_id) must be a duplicate ({attempt})");
        assert_eq!(
            again.message, original.message,
            "a duplicate must return the original message (seq, id, ts, body), not the retry"
        );
        assert_eq!(again.message.body.get(), first.body.get(), "a duplicate must return the original body");
    }
    assert_eq!(last_seq(store, &ch).await, 1, "a duplicate must store nothing");
    let page = read(store, &ch, ReadRange::After(0), 10).await;
    assert_eq!(page.messages, vec![original.message.clone()], "after duplicates the log holds only the original");

    let from_bob = append(store, new_message(&ch, &bob, Some("c-1"), r#"{"from":"bob"}"#)).await;
    assert!(!from_bob.duplicate, "the same client id from another sender is a different message");
    assert_eq!(from_bob.message.seq, 2, "a duplicate must not use up a seq");
    assert_eq!(from_bob.message.sender, bob, "the message from the other sender must be stored as its own");
    let bob_again = append(store, new_message(&ch, &bob, Some("c-1"), r#"{"from":"bob, again"}"#)).await;
    assert!(bob_again.duplicate, "the other sender's retry is a duplicate of its own message");
    assert_eq!(bob_again.message, from_bob.message, "the other sender's retry returns its own original");

    let elsewhere = append(store, new_message(&other_ch, &alice, Some("c-1"), r#"{"in":"other"}"#)).await;
    assert!(!elsewhere.duplicate, "the same client id in another channel is a different message");
    assert_eq!(elsewhere.message.seq, 1, "the message in the other channel gets that channel's first seq");

    let plain_a = append(store, new_message(&ch, &alice, None, r#"{"text":"first"}"#)).await;
    let plain_b = append(store, new_message(&ch, &alice, None, r#"{"text":"first"}"#)).await;
    assert!(
        !plain_a.duplicate && !plain_b.duplicate,
        "messages without a client id are never duplicates, even with equal bodies"
    );
    assert_eq!((plain_a.message.seq, plain_b.message.seq), (3, 4), "messages without a client id are all stored");

    let next = append(store, new_message(&ch, &alice, Some("c-2"), "{}")).await;
    assert!(!next.duplicate, "another client id from the same sender is a different message");
    assert_eq!(next.message.seq, 5, "another client id gets the next seq");
    assert_eq!(last_seq(store, &ch).await, 5, "the log holds exactly the five distinct messages");
}

/// `read(After(n))`: messages with `seq > n`, ascending, at most `limit`, with `more` true exactly when the
/// range holds messages beyond the page.
pub async fn read_after(store: &dyn Store) {
    let (ch, all) = channel_with_messages(store, "read-after", 10).await;
    let cases: [(Seq, usize, RangeInclusive<Seq>, bool); 11] = [
        (0, 100, 1..=10, false),
        (0, 10, 1..=10, false),
        (0, 11, 1..=10, false),
        (0, 3, 1..=3, true),
        (3, 3, 4..=6, true),
        (7, 3, 8..=10, false),
        (8, 3, 9..=10, false),
        (9, 1, 10..=10, false),
        (10, 5, empty(), false),
        (1000, 5, empty(), false),
        (Seq::MAX, 5, empty(), false),
    ];
    for (after, limit, expected, more) in cases {
        check_read(store, &ch, &all, ReadRange::After(after), limit, expected, more).await;
    }

    // Forward paging walks the whole log in order.
    let mut collected = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = read(store, &ch, ReadRange::After(after), 4).await;
        pages += 1;
        assert!(pages <= 3, "forward paging over 10 messages by 4 must end after 3 pages");
        collected.extend(page.messages.iter().cloned());
        match page.messages.last() {
            Some(last) if page.more => after = last.seq,
            _ => break,
        }
    }
    assert_eq!(pages, 3, "forward paging over 10 messages by 4 takes 3 pages");
    assert_eq!(collected, all, "forward paging must return every message once, in order");
}

/// `read(Before(n))`: the newest `limit` messages with `seq < n`, returned ascending, with `more` true exactly
/// when older messages remain in the range.
pub async fn read_before(store: &dyn Store) {
    let (ch, all) = channel_with_messages(store, "read-before", 10).await;
    let cases: [(Seq, usize, RangeInclusive<Seq>, bool); 13] = [
        (11, 100, 1..=10, false),
        (11, 10, 1..=10, false),
        (11, 3, 8..=10, true),
        (Seq::MAX, 3, 8..=10, true),
        (Seq::MAX, 100, 1..=10, false),
        (50, 2, 9..=10, true),
        (8, 3, 5..=7, true),
        (5, 4, 1..=4, false),
        (4, 3, 1..=3, false),
        (3, 5, 1..=2, false),
        (2, 1, 1..=1, false),
        (1, 5, empty(), false),
        (0, 5, empty(), false),
    ];
    for (before, limit, expected, more) in cases {
        check_read(store, &ch, &all, ReadRange::Before(before), limit, expected, more).await;
    }

    // Backward paging walks the whole log, newest page first.
    let mut pages_seen = Vec::new();
    let mut before = last_seq(store, &ch).await + 1;
    loop {
        let page = read(store, &ch, ReadRange::Before(before), 4).await;
        assert!(pages_seen.len() < 3, "backward paging over 10 messages by 4 must end after 3 pages");
        let first = page.messages.first().map(|m| m.seq);
        let more = page.more;
        pages_seen.push(page.messages);
        match first {
            Some(first) if more => before = first,
            _ => break,
        }
    }
    let seqs: Vec<Vec<Seq>> = pages_seen.iter().map(|p| p.iter().map(|m| m.seq).collect()).collect();
    assert_eq!(seqs, vec![vec![7, 8, 9, 10], vec![3, 4, 5, 6], vec![1, 2]], "backward paging by 4 over 10 messages");
    let collected: Vec<Message> = pages_seen.into_iter().rev().flatten().collect();
    assert_eq!(collected, all, "backward paging must return every message once");
}

/// Reading a channel that does not exist is empty, not an error; so are `get`, `last_seq`, `members`,
/// `is_member`, `channel` and `cursor` on it.
pub async fn read_unknown_channel_is_empty(store: &dyn Store) {
    let ch = unique_channel("no-such-read");
    let alice = user("alice");
    for range in [ReadRange::After(0), ReadRange::Before(Seq::MAX)] {
        let page = read(store, &ch, range, 10).await;
        assert!(page.messages.is_empty(), "reading an unknown channel ({range:?}) must return no messages");
        assert!(!page.more, "reading an unknown channel ({range:?}) must report more = false");
    }
    assert_eq!(get(store, &ch, 1).await, None, "get on an unknown channel must be None");
    assert_eq!(last_seq(store, &ch).await, 0, "last_seq of an unknown channel must be 0");
    assert_eq!(channel(store, &ch).await, None, "channel() of an unknown channel must be None");
    assert_eq!(members(store, &ch).await, Vec::<UserId>::new(), "an unknown channel has no members");
    assert!(!is_member(store, &ch, &alice).await, "nobody is a member of an unknown channel");
    assert_eq!(cursor(store, &ch, &alice, CursorKind::Read).await, 0, "a cursor in an unknown channel is 0");
}

/// `get` returns exactly the stored message for each seq, and `None` for 0 and beyond the end.
pub async fn get_by_seq(store: &dyn Store) {
    let (ch, all) = channel_with_messages(store, "get", 5).await;
    for m in &all {
        assert_eq!(get(store, &ch, m.seq).await.as_ref(), Some(m), "get({}) must return the stored message", m.seq);
    }
    for seq in [0, 6, 1000, Seq::MAX] {
        assert_eq!(get(store, &ch, seq).await, None, "get({seq}) must be None in a channel of 5 messages");
    }
}

/// `last_seq` is 0 for an empty or unknown channel and the newest seq otherwise; duplicates do not move it.
pub async fn last_seq_tracks_the_log(store: &dyn Store) {
    let ch = create(store, "last-seq", &[]).await;
    assert_eq!(last_seq(store, &ch).await, 0, "last_seq of an empty channel must be 0");
    assert_eq!(last_seq(store, &unique_channel("no-such-last")).await, 0, "last_seq of an unknown channel is 0");
    let alice = user("alice");
    for n in 1..=3 {
        append(store, new_message(&ch, &alice, Some(&format!("ls-{n}")), "{}")).await;
    }
    assert_eq!(last_seq(store, &ch).await, 3, "last_seq after three appends must be 3");
    let dup = append(store, new_message(&ch, &alice, Some("ls-2"), "{}")).await;
    assert!(dup.duplicate, "re-sending client id ls-2 must be a duplicate");
    assert_eq!(last_seq(store, &ch).await, 3, "a duplicate must not move last_seq");
}

/// `create_channel` stores the channel and its members; creating it again fails with
/// [`StoreError::ChannelExists`] and changes nothing. Channel kinds other than groups work too.
pub async fn create_channel_rejects_existing(store: &dyn Store) {
    let (alice, bob) = (user("alice"), user("bob"));
    let id = unique_channel("create");
    let meta = Channel { id: id.clone(), created_by: alice.clone(), created_at: now_millis() };
    store.create_channel(meta.clone(), std::slice::from_ref(&alice)).await.expect("create_channel of a new channel");
    assert_eq!(channel(store, &id).await, Some(meta.clone()), "channel() must return the created channel");
    assert_eq!(members(store, &id).await, vec![alice.clone()], "create_channel must store the initial members");

    let second = Channel { id: id.clone(), created_by: bob.clone(), created_at: meta.created_at + 1000 };
    let err = store
        .create_channel(second, std::slice::from_ref(&bob))
        .await
        .expect_err("create_channel of an existing channel must fail");
    assert!(
        matches!(&err, StoreError::ChannelExists(c) if *c == id),
        "create_channel of an existing channel must fail with ChannelExists({id}), got {err:?}"
    );
    assert_eq!(channel(store, &id).await, Some(meta), "a failed create_channel must not change the channel");
    assert_eq!(members(store, &id).await, vec![alice], "a failed create_channel must not add members");

    let suffix = unique_suffix();
    let (a, b) = (user(&format!("a{suffix}")), user(&format!("b{suffix}")));
    let dm = ChannelId::direct(&a, &b).expect("two distinct users make a direct channel");
    let dm_meta = Channel { id: dm.clone(), created_by: a.clone(), created_at: now_millis() };
    store.create_channel(dm_meta.clone(), &[b.clone(), a.clone()]).await.expect("create_channel of a direct channel");
    let stored = channel(store, &dm).await.expect("the direct channel must exist after create_channel");
    assert_eq!(stored, dm_meta, "channel() must return the direct channel as created");
    assert_eq!(stored.kind(), ChannelKind::Direct, "a direct channel must keep its kind");
    assert_eq!(members(store, &dm).await, vec![a, b], "the direct channel's members, sorted");
}

/// `ensure_channel` creates the channel the first time and afterwards returns the stored (first) channel
/// without changing it or its members, also when many callers race.
pub async fn ensure_channel_returns_the_first(store: &dyn Store) {
    let (alice, bob) = (user("alice"), user("bob"));
    let id = unique_channel("ensure");
    let first = Channel { id: id.clone(), created_by: alice.clone(), created_at: now_millis() };
    let got = store.ensure_channel(first.clone(), std::slice::from_ref(&alice)).await.expect("ensure_channel (new)");
    assert_eq!(got, first, "ensure_channel of a new channel must return it");
    let later = Channel { id: id.clone(), created_by: bob.clone(), created_at: first.created_at + 1000 };
    let got = store.ensure_channel(later, std::slice::from_ref(&bob)).await.expect("ensure_channel (existing)");
    assert_eq!(got, first, "ensure_channel of an existing channel must return the stored (first) channel");
    assert_eq!(channel(store, &id).await, Some(first.clone()), "ensure_channel must not change an existing channel");
    assert_eq!(
        members(store, &id).await,
        vec![alice.clone()],
        "ensure_channel must not add members to an existing one"
    );
    let err = store.create_channel(first, &[]).await.expect_err("create_channel after ensure_channel must fail");
    assert!(matches!(err, StoreError::ChannelExists(_)), "create_channel after ensure_channel: {err:?}");

    let created = create(store, "ensure-created", std::slice::from_ref(&bob)).await;
    let stored = channel(store, &created).await.expect("the created channel must exist");
    let other = Channel { id: created.clone(), created_by: alice.clone(), created_at: stored.created_at + 1 };
    let got = store.ensure_channel(other, &[]).await.expect("ensure_channel of a channel made by create_channel");
    assert_eq!(got, stored, "ensure_channel must return the channel create_channel stored");

    let raced = unique_channel("ensure-race");
    let base = now_millis();
    let attempts = (0..16).map(|i| {
        let meta = Channel { id: raced.clone(), created_by: user(&format!("racer-{i}")), created_at: base + i };
        async move { store.ensure_channel(meta, &[]).await.expect("concurrent ensure_channel") }
    });
    let results = join_all(attempts).await;
    let stored = channel(store, &raced).await.expect("the raced channel must exist");
    for got in results {
        assert_eq!(got, stored, "every concurrent ensure_channel must return the one stored channel");
    }
}

/// Membership: sorted by [`UserId`]'s order (bytes), idempotent adds and removes, and
/// [`StoreError::ChannelNotFound`] for changes to an unknown channel.
pub async fn membership(store: &dyn Store) {
    let names = ["carol", "Zed", "alice", "bob.2", "bob-1", "bob"];
    let users: Vec<UserId> = names.iter().map(|n| user(n)).collect();
    let initial = &users[..3];
    let ch = create(store, "members", initial).await;
    let mut expected = initial.to_vec();
    expected.sort();
    assert_eq!(
        members(store, &ch).await,
        expected,
        "members must be sorted by UserId's order, which is byte order (a SQL backend needs a binary collation)"
    );
    for u in initial {
        assert!(is_member(store, &ch, u).await, "{u} was an initial member");
    }
    let dave = user("dave");
    assert!(!is_member(store, &ch, &dave).await, "dave was never added");

    let mut adding = users[3..].to_vec();
    adding.push(users[0].clone());
    adding.push(users[4].clone());
    store.add_members(&ch, &adding).await.expect("add_members with repeats and existing members");
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(members(store, &ch).await, expected, "add_members is idempotent and members stay sorted");
    store.add_members(&ch, &[]).await.expect("add_members of nobody");
    assert_eq!(members(store, &ch).await, expected, "add_members of nobody changes nothing");

    let bob = user("bob");
    store.remove_member(&ch, &bob).await.expect("remove_member of a member");
    assert!(!is_member(store, &ch, &bob).await, "bob was removed");
    store.remove_member(&ch, &bob).await.expect("remove_member is idempotent");
    store.remove_member(&ch, &dave).await.expect("remove_member of a non-member succeeds");
    expected.retain(|u| *u != bob);
    assert_eq!(members(store, &ch).await, expected, "members after removing bob");
    store.add_members(&ch, std::slice::from_ref(&bob)).await.expect("add_members of a removed member");
    assert!(is_member(store, &ch, &bob).await, "bob was added back");

    let unknown = unique_channel("no-such-members");
    let err =
        store.add_members(&unknown, std::slice::from_ref(&bob)).await.expect_err("add_members to unknown channel");
    assert!(
        matches!(&err, StoreError::ChannelNotFound(c) if *c == unknown),
        "add_members to an unknown channel must fail with ChannelNotFound({unknown}), got {err:?}"
    );
    let err = store.remove_member(&unknown, &bob).await.expect_err("remove_member from an unknown channel");
    assert!(
        matches!(&err, StoreError::ChannelNotFound(c) if *c == unknown),
        "remove_member from an unknown channel must fail with ChannelNotFound({unknown}), got {err:?}"
    );
    assert_eq!(channel(store, &unknown).await, None, "add_members must not create a channel");
    assert!(!is_member(store, &unknown, &bob).await, "is_member of an unknown channel is false");
    assert_eq!(members(store, &unknown).await, Vec::<UserId>::new(), "an unknown channel has no members");
}

/// Cursors start at 0, only move forward, `set_cursor` returns the effective value, and cursors are
/// independent per kind, per user and per channel, also under concurrent updates.
pub async fn cursors_only_move_forward(store: &dyn Store) {
    let (ch, _) = channel_with_messages(store, "cursors", 10).await;
    let (other, _) = channel_with_messages(store, "cursors-other", 10).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (read_k, delivered) = (CursorKind::Read, CursorKind::Delivered);

    assert_eq!(cursor(store, &ch, &alice, read_k).await, 0, "a cursor never set is 0");
    assert_eq!(set_cursor(store, &ch, &alice, read_k, 5).await, 5, "set_cursor forward returns the new value");
    assert_eq!(cursor(store, &ch, &alice, read_k).await, 5, "the cursor holds the value set");
    assert_eq!(set_cursor(store, &ch, &alice, read_k, 3).await, 5, "set_cursor backward must return the kept value");
    assert_eq!(cursor(store, &ch, &alice, read_k).await, 5, "a cursor must never move backward");
    assert_eq!(set_cursor(store, &ch, &alice, read_k, 5).await, 5, "set_cursor to the same value keeps it");
    assert_eq!(set_cursor(store, &ch, &alice, read_k, 8).await, 8, "set_cursor forward again");

    assert_eq!(cursor(store, &ch, &alice, delivered).await, 0, "cursor kinds are independent");
    assert_eq!(set_cursor(store, &ch, &alice, delivered, 10).await, 10, "set the delivered cursor");
    assert_eq!(cursor(store, &ch, &alice, read_k).await, 8, "setting one kind must not move the other");
    assert_eq!(cursor(store, &ch, &bob, read_k).await, 0, "cursors are per user");
    assert_eq!(cursor(store, &ch, &bob, delivered).await, 0, "cursors are per user");
    assert_eq!(cursor(store, &other, &alice, read_k).await, 0, "cursors are per channel");

    let mut order: Vec<Seq> = (1..=10).collect();
    order.reverse();
    order.rotate_left(3);
    let updates = order.iter().map(|&seq| {
        let (ch, bob) = (&ch, &bob);
        async move { (seq, store.set_cursor(ch, bob, read_k, seq).await.expect("concurrent set_cursor")) }
    });
    for (requested, effective) in join_all(updates).await {
        assert!(effective >= requested, "set_cursor({requested}) returned {effective}, below the value requested");
    }
    assert_eq!(cursor(store, &ch, &bob, read_k).await, 10, "after concurrent updates the cursor is the maximum");
}

/// Bodies are kept as the exact bytes given: whitespace, key order, duplicate keys, escapes and number
/// spellings survive `append`, `get` and `read` unchanged.
pub async fn body_bytes_preserved(store: &dyn Store) {
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(64 * 1024));
    let bodies = [
        r#"{"b":1,  "a":[1,2]}"#,
        r#"{ "a" : 1 , "a" : 2 }"#,
        r#"{"text":"caf\u00e9 café 😀 \"quoted\" \\ \n\t","n":1.50,"e":1E+2,"z":-0.0,"big":123456789012345678901234567890}"#,
        "\"just a string\"",
        "null",
        "true",
        "[ 1 ,2 ,\n 3 ]",
        "{}",
        "[]",
        "0",
        big.as_str(),
    ];
    let ch = create(store, "bodies", &[]).await;
    let alice = user("alice");
    for (i, json) in bodies.iter().enumerate() {
        let appended = append(store, new_message(&ch, &alice, None, json)).await;
        assert_eq!(appended.message.body.get(), *json, "append must return body #{i} byte for byte");
        let stored = get(store, &ch, appended.message.seq).await.expect("get of a message just appended");
        assert_eq!(stored.body.get(), *json, "get must return body #{i} byte for byte");
    }
    let page = read(store, &ch, ReadRange::After(0), bodies.len()).await;
    let got: Vec<&str> = page.messages.iter().map(|m| m.body.get()).collect();
    assert_eq!(got, bodies, "read must return every body byte for byte");
}

/// Edits, recalls and system messages keep their kind, `refers`, client id and body.
pub async fn kinds_and_refers_preserved(store: &dyn Store) {
    let ch = create(store, "kinds", &[]).await;
    let alice = user("alice");
    let original = new_message(&ch, &alice, Some("k-1"), r#"{"text":"helo"}"#);
    let mut edit = new_message(&ch, &alice, Some("k-2"), r#"{"text":"hello"}"#);
    edit.kind = MessageKind::Edit;
    edit.refers = Some(1);
    let mut recall = new_message(&ch, &alice, None, "null");
    recall.kind = MessageKind::Recall;
    recall.refers = Some(1);
    recall.body = null_body();
    let mut system = new_message(&ch, &user("system"), None, r#"{"event":"joined","user":"bob"}"#);
    system.kind = MessageKind::System;

    let sent = [original, edit, recall, system];
    let mut expected = Vec::new();
    for (i, msg) in sent.into_iter().enumerate() {
        let want = msg.clone().into_message(i as Seq + 1);
        let appended = append(store, msg).await;
        assert_eq!(appended.message, want, "append must store kind, refers and client id as given");
        expected.push(want);
    }
    let page = read(store, &ch, ReadRange::After(0), 10).await;
    assert_eq!(page.messages, expected, "read must return kind, refers and client id as stored");
    let kinds: Vec<(MessageKind, Option<Seq>)> = page.messages.iter().map(|m| (m.kind, m.refers)).collect();
    assert_eq!(
        kinds,
        vec![
            (MessageKind::Message, None),
            (MessageKind::Edit, Some(1)),
            (MessageKind::Recall, Some(1)),
            (MessageKind::System, None)
        ],
        "kinds and refers, in order"
    );
}

/// `TASKS` x `PER_TASK` (8 x 200) appends in flight at once to one channel get exactly the seqs 1..=1600,
/// without gaps or duplicates, each task's own appends in increasing order, and the log matches what every
/// append returned.
pub async fn concurrent_appends(store: &dyn Store) {
    let ch = create(store, "concurrent", &[]).await;
    let batches = (0..TASKS).map(|task| append_batch(store, &ch, task, PER_TASK));
    let results = join_all(batches).await;
    check_concurrent_appends(store, &ch, results).await;
}

/// Many appends with the same `(channel, sender, client_id)` in flight at once store exactly one message per
/// sender, and every one of them returns that message.
pub async fn concurrent_duplicate_appends(store: &dyn Store) {
    const SENDERS: usize = 4;
    const ATTEMPTS: usize = 16;
    let ch = create(store, "concurrent-dedup", &[]).await;
    let attempts = (0..SENDERS * ATTEMPTS).map(|i| {
        let sender = user(&format!("sender-{}", i % SENDERS));
        let msg = new_message(&ch, &sender, Some("same-client-id"), &format!(r#"{{"attempt":{i}}}"#));
        async move { store.append(msg).await.expect("concurrent append with one client id") }
    });
    let results: Vec<Appended> = join_all(attempts).await;
    check_concurrent_duplicates(store, &ch, &results, SENDERS).await;
}

/// [`concurrent_appends`] and [`concurrent_duplicate_appends`] with spawned tasks, so that on a multi-thread
/// runtime the appends also run in parallel. Needs a Tokio runtime.
pub async fn parallel_appends(store: Arc<dyn Store>) {
    const SENDERS: usize = 4;
    const ATTEMPTS: usize = 16;

    let ch = create(&*store, "parallel", &[]).await;
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, ch) = (Arc::clone(&store), ch.clone());
            tokio::spawn(async move { append_batch(&*store, &ch, task, PER_TASK).await })
        })
        .collect();
    let mut results = Vec::with_capacity(TASKS);
    for handle in handles {
        results.push(handle.await.expect("an appending task panicked"));
    }
    check_concurrent_appends(&*store, &ch, results).await;

    let ch = create(&*store, "parallel-dedup", &[]).await;
    let handles: Vec<_> = (0..SENDERS * ATTEMPTS)
        .map(|i| {
            let store = Arc::clone(&store);
            let msg = new_message(
                &ch,
                &user(&format!("sender-{}", i % SENDERS)),
                Some("same-client-id"),
                &format!(r#"{{"attempt":{i}}}"#),
            );
            tokio::spawn(async move { store.append(msg).await.expect("parallel append with one client id") })
        })
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("an appending task panicked"));
    }
    check_concurrent_duplicates(&*store, &ch, &results, SENDERS).await;
}

/// Appends to many channels at once: `CHANNELS` (50) channels, each written by `WRITERS` (4) interleaved
/// writers. Every channel ends with its own log 1..=n without gaps or duplicates, each writer's appends get
/// increasing seqs, and no message lands in another channel.
pub async fn concurrent_appends_many_channels(store: &dyn Store) {
    const CHANNELS: usize = 50;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 10;
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(create(store, "many-channels", &[]).await);
    }
    let writers = channels.iter().flat_map(|ch| (0..WRITERS).map(move |w| (ch, w))).map(|(ch, w)| async move {
        let sender = user(&format!("writer-{w}"));
        let mut seqs = Vec::with_capacity(PER_WRITER);
        for i in 0..PER_WRITER {
            let msg = new_message(ch, &sender, Some(&format!("mc{w}-{i}")), &format!(r#"{{"w":{w},"i":{i}}}"#));
            let appended = store.append(msg).await.expect("append to one of many channels");
            assert_eq!(&appended.message.channel, ch, "append must store the message in its own channel");
            assert!(!appended.duplicate, "distinct client ids must never be duplicates");
            seqs.push(appended.message.seq);
            tokio::task::yield_now().await;
        }
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "one writer's appends must get increasing seqs: {seqs:?}");
        (ch.clone(), seqs)
    });
    let results = join_all(writers).await;
    let mut per_channel: BTreeMap<ChannelId, Vec<Seq>> = BTreeMap::new();
    for (ch, seqs) in results {
        per_channel.entry(ch).or_default().extend(seqs);
    }
    let total = (WRITERS * PER_WRITER) as Seq;
    for (ch, mut seqs) in per_channel {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "channel {ch} must get exactly the seqs 1..={total}");
        let page = read(store, &ch, ReadRange::After(0), 1000).await;
        let stored: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(stored, seqs, "channel {ch}'s log must hold exactly its own {total} messages");
        assert!(page.messages.iter().all(|m| m.channel == ch), "channel {ch}'s log holds only its messages");
    }
}

/// Paging at the edges: a page size that divides the log exactly ends without an empty extra page, a page
/// as large as the log is one page with `more = false`, single-message and empty logs, and reads starting
/// exactly at either end.
pub async fn paging_edges(store: &dyn Store) {
    let (ch, all) = channel_with_messages(store, "paging-edges", 12).await;
    // Forward by 4 over 12: exactly three pages, the last with more = false.
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = read(store, &ch, ReadRange::After(after), 4).await;
        assert!(
            pages.len() < 3,
            "forward paging by 4 over 12 messages must end after 3 pages, not return an empty 4th"
        );
        let seqs: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
        pages.push(seqs);
        match page.messages.last() {
            Some(last) if page.more => after = last.seq,
            _ => break,
        }
    }
    assert_eq!(pages, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 11, 12]], "forward pages by 4 over 12");
    // Backward by 4 over 12: three pages, the oldest with more = false.
    let mut before = Seq::MAX;
    let mut pages = Vec::new();
    loop {
        let page = read(store, &ch, ReadRange::Before(before), 4).await;
        assert!(pages.len() < 3, "backward paging by 4 over 12 messages must end after 3 pages");
        pages.push(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>());
        match page.messages.first() {
            Some(first) if page.more => before = first.seq,
            _ => break,
        }
    }
    assert_eq!(pages, vec![vec![9, 10, 11, 12], vec![5, 6, 7, 8], vec![1, 2, 3, 4]], "backward pages by 4 over 12");
    // One page exactly as large as the log.
    for range in [ReadRange::After(0), ReadRange::Before(13), ReadRange::Before(Seq::MAX)] {
        let page = read(store, &ch, range, 12).await;
        assert_eq!(page.messages, all, "read({range:?}, limit 12) over 12 messages returns all of them");
        assert!(!page.more, "read({range:?}, limit 12) over 12 messages: more must be false");
    }
    // Starting at the edges.
    let page = read(store, &ch, ReadRange::After(11), 1).await;
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![12], "read(After(11), 1)");
    assert!(!page.more, "read(After(11), 1) reads the newest message: more must be false");
    let page = read(store, &ch, ReadRange::Before(2), 1).await;
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1], "read(Before(2), 1)");
    assert!(!page.more, "read(Before(2), 1) reads the oldest message: more must be false");
    let page = read(store, &ch, ReadRange::After(12), 100).await;
    assert!(page.messages.is_empty() && !page.more, "read(After(head)) must be empty with more = false");

    // A log of one message, and an existing but empty log.
    let (one, one_all) = channel_with_messages(store, "paging-one", 1).await;
    for range in [ReadRange::After(0), ReadRange::Before(2), ReadRange::Before(Seq::MAX)] {
        for limit in [1, 2, 100] {
            let page = read(store, &one, range, limit).await;
            assert_eq!(page.messages, one_all, "read({range:?}, {limit}) of a one-message log");
            assert!(!page.more, "read({range:?}, {limit}) of a one-message log: more must be false");
        }
    }
    let empty_ch = create(store, "paging-empty", &[]).await;
    for range in [ReadRange::After(0), ReadRange::Before(Seq::MAX), ReadRange::Before(1)] {
        let page = read(store, &empty_ch, range, 10).await;
        assert!(page.messages.is_empty() && !page.more, "read({range:?}) of an empty log: no messages, more false");
    }
}

/// A body larger than [`Store::max_body_bytes`] is refused with [`StoreError::TooLarge`] naming the size and
/// the limit, and nothing is stored: the seq is not consumed and the client id stays free. A body of exactly
/// the limit is stored.
pub async fn oversize_body_refused(store: &dyn Store) {
    let max = store.max_body_bytes();
    assert!(
        (16..=64 * 1024 * 1024).contains(&max),
        "the suite needs a store body limit between 16 B and 64 MiB, got {max}"
    );
    let ch = create(store, "oversize", &[]).await;
    let alice = user("alice");
    // A JSON string of exactly `len` bytes: the quotes and `len - 2` letters.
    let string_of = |len: usize| format!("\"{}\"", "x".repeat(len - 2));

    let too_big = new_message(&ch, &alice, Some("big-1"), &string_of(max + 1));
    match store.append(too_big).await {
        Err(StoreError::TooLarge { size, max: limit }) => {
            assert_eq!(size, max + 1, "TooLarge must name the body's size");
            assert_eq!(limit, max, "TooLarge must name the store's limit");
        }
        Err(e) => panic!("a body of max_body_bytes + 1 must be refused with TooLarge, got {e}"),
        Ok(a) => panic!("a body of max_body_bytes + 1 ({} bytes) was stored at seq {}", max + 1, a.message.seq),
    }
    assert_eq!(last_seq(store, &ch).await, 0, "a refused body must not be stored or consume a seq");

    let fits = new_message(&ch, &alice, Some("big-1"), &string_of(max));
    let appended = append(store, fits).await;
    assert!(!appended.duplicate, "a refused append must not reserve its client id");
    assert_eq!(appended.message.seq, 1, "the first stored message gets seq 1");
    assert_eq!(appended.message.body.get().len(), max, "a body of exactly max_body_bytes is stored whole");
    let stored = get(store, &ch, 1).await.expect("the message at the limit is readable");
    assert_eq!(stored.body.get().len(), max, "a body of exactly max_body_bytes reads back whole");
}

/// Everything written before a restart is there after it: channels, members, messages (byte for byte, in
/// order), cursors; and seqs continue where they stopped.
pub async fn survives_restart<F, Fut>(open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let (alice, bob) = (user("alice"), user("bob"));
    let (ch, meta, written) = {
        let store = open().await;
        let ch = create(&*store, "restart", &[alice.clone(), bob.clone()]).await;
        let meta = channel(&*store, &ch).await.expect("the channel just created");
        let mut written = Vec::new();
        for i in 1..=5 {
            let json = format!(r#"{{ "n" : {i}, "text":"caf\u00e9" }}"#);
            written.push(append(&*store, new_message(&ch, &alice, Some(&format!("r-{i}")), &json)).await.message);
        }
        store.set_cursor(&ch, &bob, CursorKind::Read, 3).await.expect("set_cursor");
        store.set_cursor(&ch, &bob, CursorKind::Delivered, 5).await.expect("set_cursor");
        (ch, meta, written)
    };
    let store = open().await;
    assert_eq!(channel(&*store, &ch).await, Some(meta), "the channel must survive a restart");
    assert_eq!(members(&*store, &ch).await, vec![alice.clone(), bob.clone()], "members must survive a restart");
    let page = read(&*store, &ch, ReadRange::After(0), 100).await;
    assert_eq!(page.messages, written, "every message must survive a restart unchanged and in order");
    assert_eq!(last_seq(&*store, &ch).await, 5, "last_seq must survive a restart");
    assert_eq!(cursor(&*store, &ch, &bob, CursorKind::Read).await, 3, "the read cursor must survive a restart");
    assert_eq!(
        cursor(&*store, &ch, &bob, CursorKind::Delivered).await,
        5,
        "the delivered cursor must survive a restart"
    );
    let next = append(&*store, new_message(&ch, &bob, Some("after-restart"), "{}")).await;
    assert_eq!(next.message.seq, 6, "seqs must continue after a restart without reuse or gap");
}

/// The duplicate-id index survives a restart: re-sending a client id stored before the restart returns the
/// original message with `duplicate = true` and stores nothing.
pub async fn dedup_survives_restart<F, Fut>(open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let alice = user("alice");
    let (ch, original) = {
        let store = open().await;
        let ch = create(&*store, "restart-dedup", &[]).await;
        let original = append(&*store, new_message(&ch, &alice, Some("once"), r#"{"v":1}"#)).await.message;
        (ch, original)
    };
    let store = open().await;
    let again = append(&*store, new_message(&ch, &alice, Some("once"), r#"{"v":2}"#)).await;
    assert!(again.duplicate, "a client id stored before a restart must still be recognised after it");
    assert_eq!(again.message, original, "the duplicate must return the message stored before the restart");
    assert_eq!(last_seq(&*store, &ch).await, 1, "a duplicate after a restart must store nothing");
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers.

/// Appends `n` messages from sender `writer-<task>`, yielding between appends so that tasks interleave.
async fn append_batch(store: &dyn Store, ch: &ChannelId, task: usize, n: usize) -> Vec<(NewMessage, Appended)> {
    let sender = user(&format!("writer-{task}"));
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let msg = new_message(ch, &sender, Some(&format!("w{task}-{i}")), &format!(r#"{{"task":{task},"i":{i}}}"#));
        let appended = store.append(msg.clone()).await.expect("concurrent append");
        out.push((msg, appended));
        tokio::task::yield_now().await;
    }
    out
}

async fn check_concurrent_appends(store: &dyn Store, ch: &ChannelId, results: Vec<Vec<(NewMessage, Appended)>>) {
    let total = TASKS * PER_TASK;
    let mut by_seq = BTreeMap::new();
    for (task, batch) in results.into_iter().enumerate() {
        assert_eq!(batch.len(), PER_TASK, "task {task} must have made all its appends");
        let seqs: Vec<Seq> = batch.iter().map(|(_, a)| a.message.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's sequential appends must get increasing seqs, task {task} got {seqs:?}"
        );
        for (msg, appended) in batch {
            assert!(!appended.duplicate, "distinct client ids must never be reported as duplicates");
            let seq = appended.message.seq;
            assert_eq!(appended.message, msg.into_message(seq), "append must return the message it stored");
            if let Some(previous) = by_seq.insert(seq, appended.message) {
                panic!("seq {seq} was assigned twice under concurrent appends (first to {:?})", previous.id);
            }
        }
    }
    let assigned: Vec<Seq> = by_seq.keys().copied().collect();
    let expected: Vec<Seq> = (1..=total as Seq).collect();
    assert!(assigned == expected, "concurrent appends must get exactly the seqs 1..={total} without gaps");
    assert_eq!(last_seq(store, ch).await, total as Seq, "last_seq after {total} concurrent appends");
    let page = read(store, ch, ReadRange::After(0), total + 1).await;
    assert!(!page.more, "reading all {total} messages with a larger limit must report more = false");
    assert_eq!(page.messages.len(), total, "the log must hold exactly the {total} appended messages");
    for (stored, (seq, returned)) in page.messages.iter().zip(&by_seq) {
        assert_eq!(stored, returned, "the log at seq {seq} must be the message append returned for it");
    }
}

async fn check_concurrent_duplicates(store: &dyn Store, ch: &ChannelId, results: &[Appended], senders: usize) {
    let mut originals: BTreeMap<UserId, &Message> = BTreeMap::new();
    for a in results.iter().filter(|a| !a.duplicate) {
        if let Some(first) = originals.insert(a.message.sender.clone(), &a.message) {
            panic!(
                "{} got two non-duplicate appends for one client id (seqs {} and {})",
                a.message.sender, first.seq, a.message.seq
            );
        }
    }
    assert_eq!(originals.len(), senders, "each sender must have exactly one non-duplicate append");
    for a in results {
        let original = originals.get(&a.message.sender).expect("every sender has an original");
        assert_eq!(&a.message, *original, "every append of one client id must return the one stored message");
    }
    let mut seqs: Vec<Seq> = originals.values().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=senders as Seq).collect::<Vec<_>>(), "one message per sender, seqs 1..={senders}");
    assert_eq!(last_seq(store, ch).await, senders as Seq, "concurrent duplicates must store one message per sender");
    let page = read(store, ch, ReadRange::After(0), 100).await;
    assert_eq!(page.messages.len(), senders, "the log must hold one message per sender");
}

async fn check_read(
    store: &dyn Store,
    ch: &ChannelId,
    all: &[Message],
    range: ReadRange,
    limit: usize,
    expected: RangeInclusive<Seq>,
    more: bool,
) {
    let page = read(store, ch, range, limit).await;
    let got: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
    let want: Vec<Seq> = expected.collect();
    assert_eq!(got, want, "read({range:?}, limit {limit}) over seqs 1..=10 returned the wrong seqs");
    for m in &page.messages {
        let original = usize::try_from(m.seq - 1).ok().and_then(|i| all.get(i)).expect("a seq within the log");
        assert_eq!(m, original, "read({range:?}, limit {limit}) must return the stored message at seq {}", m.seq);
    }
    assert_eq!(page.more, more, "read({range:?}, limit {limit}) over seqs 1..=10: wrong `more`");
}

/// An empty inclusive range of seqs.
#[allow(clippy::reversed_empty_ranges)]
fn empty() -> RangeInclusive<Seq> {
    1..=0
}

/// A fresh suffix that makes names unique across runs and processes.
fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A group channel id that no other run uses: `group:conformance-<label>-<uuid>`.
fn unique_channel(label: &str) -> ChannelId {
    let name = ChannelName::new(format!("conformance-{label}-{}", unique_suffix())).expect("a valid channel name");
    ChannelId::group(&name)
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("a valid user id")
}

fn body(json: &str) -> Body {
    Arc::from(RawValue::from_string(json.to_owned()).expect("a valid JSON body"))
}

fn new_message(ch: &ChannelId, sender: &UserId, client_id: Option<&str>, json: &str) -> NewMessage {
    NewMessage {
        channel: ch.clone(),
        id: MessageId::generate(),
        sender: sender.clone(),
        client_id: client_id.map(|c| ClientMsgId::new(c).expect("a valid client message id")),
        kind: MessageKind::Message,
        refers: None,
        ts: now_millis(),
        body: body(json),
    }
}

async fn create(store: &dyn Store, label: &str, members: &[UserId]) -> ChannelId {
    let id = unique_channel(label);
    let meta = Channel { id: id.clone(), created_by: user("owner"), created_at: now_millis() };
    store.create_channel(meta, members).await.expect("create_channel of a new channel");
    id
}

/// A new channel holding `n` messages with seqs 1..=n, and those messages as stored.
async fn channel_with_messages(store: &dyn Store, label: &str, n: usize) -> (ChannelId, Vec<Message>) {
    let ch = create(store, label, &[]).await;
    let alice = user("alice");
    let mut all = Vec::with_capacity(n);
    for i in 1..=n {
        let msg = new_message(&ch, &alice, None, &format!(r#"{{"n":{i}}}"#));
        let appended = append(store, msg.clone()).await;
        assert_eq!(appended.message, msg.into_message(i as Seq), "append must assign seq {i}");
        all.push(appended.message);
    }
    (ch, all)
}

async fn append(store: &dyn Store, msg: NewMessage) -> Appended {
    store.append(msg).await.expect("append to an existing channel")
}

async fn read(store: &dyn Store, ch: &ChannelId, range: ReadRange, limit: usize) -> crate::model::Page {
    store.read(ch, range, limit).await.expect("read")
}

async fn get(store: &dyn Store, ch: &ChannelId, seq: Seq) -> Option<Message> {
    store.get(ch, seq).await.expect("get")
}

async fn last_seq(store: &dyn Store, ch: &ChannelId) -> Seq {
    store.last_seq(ch).await.expect("last_seq")
}

async fn channel(store: &dyn Store, ch: &ChannelId) -> Option<Channel> {
    store.channel(ch).await.expect("channel")
}

async fn members(store: &dyn Store, ch: &ChannelId) -> Vec<UserId> {
    store.members(ch).await.expect("members")
}

async fn is_member(store: &dyn Store, ch: &ChannelId, u: &UserId) -> bool {
    store.is_member(ch, u).await.expect("is_member")
}

async fn cursor(store: &dyn Store, ch: &ChannelId, u: &UserId, kind: CursorKind) -> Seq {
    store.cursor(ch, u, kind).await.expect("cursor")
}

async fn set_cursor(store: &dyn Store, ch: &ChannelId, u: &UserId, kind: CursorKind, seq: Seq) -> Seq {
    store.set_cursor(ch, u, kind, seq).await.expect("set_cursor")
}
