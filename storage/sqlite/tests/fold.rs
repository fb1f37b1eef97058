//! The append log and the fold: reads while folds run, restarts with unfolded rows (across several segments, with
//! a torn last record, after a fold whose segments were not recycled yet, from an append log of the earlier
//! layout), and the in-memory tail's bound.

mod common;

use common::{group, message, temp, user};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald_core::id::ChannelId;
use herald_core::model::{Channel, Message, Seq, now_millis};
use herald_core::store::{ReadRange, Store};
use herald_sqlite::{SqliteConfig, SqliteStore};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

async fn create(store: &dyn Store, ch: &ChannelId) {
    let meta = Channel { id: ch.clone(), created_by: user("owner"), created_at: now_millis() };
    store.create_channel(meta, &[]).await.expect("create_channel");
}

/// Folds only when asked ([`SqliteStore::fold`]) or when the tail is full.
fn no_auto_fold(path: &Path) -> SqliteConfig {
    SqliteConfig { fold_interval: Duration::from_secs(3600), fold_rows: 1 << 30, ..SqliteConfig::new(path) }
}

fn seqs(messages: &[Message]) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

/// A plain connection to one of the store's files (after the store closed, or read-only while it runs).
async fn connect(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path)).await.expect("connect")
}

async fn count(path: &Path, sql: &str) -> i64 {
    let mut conn = connect(path).await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.expect("count");
    conn.close().await.expect("close");
    n
}

/// The append log's segment files (`<path>-log-` and 16 hex digits).
fn log_files(path: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}-log-", path.file_name().expect("a file name").to_string_lossy());
    let mut files: Vec<PathBuf> = std::fs::read_dir(path.parent().expect("a directory"))
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.strip_prefix(&prefix).is_some_and(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    files.sort();
    files
}

/// Copies the (closed) append log's files into `to`.
fn save_log(path: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for file in log_files(path) {
        std::fs::copy(&file, to.join(file.file_name().expect("name"))).expect("save");
    }
}

/// Puts the saved append log back, as if nothing had happened to it since [`save_log`].
fn restore_log(path: &Path, from: &Path) {
    for file in log_files(path) {
        std::fs::remove_file(file).expect("remove");
    }
    let dir = path.parent().expect("a directory");
    for saved in std::fs::read_dir(from).expect("read_dir") {
        let saved = saved.expect("entry").path();
        std::fs::copy(&saved, dir.join(saved.file_name().expect("name"))).expect("restore");
    }
}

/// Appends `n` messages with client ids `m0..` to each of `channels` (sender `s`), checking their seqs.
async fn fill(store: &SqliteStore, channels: &[ChannelId], n: usize) {
    for ch in channels {
        for i in 0..n {
            let a = store.append(message(ch, &user("s"), Some(&format!("m{i}")), &format!("{i}"))).await;
            assert_eq!(a.expect("append").message.seq, i as Seq + 1);
        }
    }
}

/// Checks that each channel reads back exactly `1..=n`, forward and backward, with the right bodies, that resent
/// client ids are duplicates of the originals, and that seqs continue at `n + 1` (which it appends).
async fn check_complete(store: &SqliteStore, channels: &[ChannelId], n: usize) {
    for ch in channels {
        let all = store.read(ch, ReadRange::After(0), n + 10).await.expect("read");
        assert_eq!(seqs(&all.messages), (1..=n as Seq).collect::<Vec<_>>(), "{ch}: every message once, in order");
        assert!(!all.more);
        assert_eq!(all.messages[n / 2].body.get(), format!("{}", n / 2));
        let back = store.read(ch, ReadRange::Before(n as Seq + 1), 7).await.expect("read before");
        assert_eq!(seqs(&back.messages), ((n - 6) as Seq..=n as Seq).collect::<Vec<_>>());
        assert!(back.more);
        assert_eq!(store.last_seq(ch).await.expect("last_seq"), n as Seq);
        let dup = store.append(message(ch, &user("s"), Some("m3"), "0")).await.expect("resend");
        assert!(dup.duplicate && dup.message.seq == 4 && dup.message.body.get() == "3", "{ch}: dedup: {dup:?}");
        let next = store.append(message(ch, &user("s"), Some(&format!("new-{n}")), "0")).await.expect("append");
        assert_eq!(next.message.seq, n as Seq + 1, "{ch}: seqs continue");
    }
}

/// Readers page through channels while appends go on and folds run every millisecond in chunks that split
/// channels: every page is contiguous (no gap, no duplicate), and `last_seq` and `get` never go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_no_gap_or_duplicate_while_folds_run() {
    const CHANNELS: usize = 3;
    const PER_CHANNEL: usize = 600;
    let dir = temp();
    let config = SqliteConfig {
        fold_interval: Duration::from_millis(1),
        fold_rows: 32,
        fold_chunk_rows: 7,
        batch_max: 16,
        ..SqliteConfig::new(dir.path().join("herald.db"))
    };
    let store = Arc::new(SqliteStore::open(config).await.expect("open"));
    let channels: Vec<ChannelId> = (0..CHANNELS).map(|c| group(&format!("race-{c}"))).collect();
    for ch in &channels {
        create(&*store, ch).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = channels
        .iter()
        .map(|ch| {
            let (store, ch) = (store.clone(), ch.clone());
            tokio::spawn(async move {
                for i in 0..PER_CHANNEL {
                    let a = store.append(message(&ch, &user("s"), Some(&format!("m{i}")), &format!("{i}"))).await;
                    assert_eq!(a.expect("append").message.seq, i as Seq + 1);
                }
            })
        })
        .collect();
    let pages = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = channels
        .iter()
        .flat_map(|ch| [ch.clone(), ch.clone()])
        .enumerate()
        .map(|(r, ch)| {
            let (store, done, pages) = (store.clone(), done.clone(), pages.clone());
            tokio::spawn(async move {
                let mut seen_last = 0;
                while !done.load(Ordering::Acquire) {
                    let last = store.last_seq(&ch).await.expect("last_seq");
                    assert!(last >= seen_last, "last_seq went back from {seen_last} to {last}");
                    seen_last = last;
                    if last > 0 {
                        assert!(store.get(&ch, last).await.expect("get").is_some(), "get({last}) after last_seq");
                    }
                    // Whole history, forward, in pages of 50 from a varying start.
                    let start = (last / 3) * (r as Seq % 2);
                    let mut after = start;
                    loop {
                        let page = store.read(&ch, ReadRange::After(after), 50).await.expect("read");
                        let expected: Vec<Seq> = (after + 1..after + 1 + page.messages.len() as Seq).collect();
                        assert_eq!(seqs(&page.messages), expected, "forward page after {after} is contiguous");
                        assert!(page.messages.iter().all(|m| m.body.get() == format!("{}", m.seq - 1)));
                        pages.fetch_add(1, Ordering::Relaxed);
                        match page.messages.last() {
                            Some(m) if page.more => after = m.seq,
                            Some(m) => {
                                assert!(m.seq >= last, "a forward read reaches the last seq seen before it");
                                break;
                            }
                            None => {
                                assert!(after >= last, "an empty page only past the end");
                                break;
                            }
                        }
                    }
                    // Backward from beyond the end.
                    let page = store.read(&ch, ReadRange::Before(last + 1), 40).await.expect("read before");
                    let n = page.messages.len() as Seq;
                    assert_eq!(seqs(&page.messages), (last + 1 - n..=last).collect::<Vec<_>>(), "backward page");
                    assert_eq!(page.more, last > n, "more before {}", last + 1 - n);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.await.expect("reader");
    }
    assert!(pages.load(Ordering::Relaxed) > 0);
    store.fold().await.expect("fold");
    assert_eq!(store.unfolded(), 0, "a completed fold leaves nothing in memory");
    check_complete(&store, &channels, PER_CHANNEL).await;
}

/// Acknowledged appends that were never folded come back after a restart from the append log, with their
/// client ids (duplicates are still recognised), and seqs continue.
#[tokio::test]
async fn unfolded_rows_come_back_after_a_restart() {
    const PER_CHANNEL: usize = 120;
    let dir = temp();
    let path = dir.path().join("herald.db");
    let channels = [group("a"), group("b"), group("c")];
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    for ch in &channels {
        create(&store, ch).await;
    }
    fill(&store, &channels, PER_CHANNEL).await;
    assert_eq!(store.unfolded(), 3 * PER_CHANNEL);
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, 0, "nothing was folded");

    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("reopen");
    assert_eq!(store.unfolded(), 3 * PER_CHANNEL, "the log is loaded into memory");
    check_complete(&store, &channels, PER_CHANNEL).await;
    // Folded now: the same answers from the main database.
    store.fold().await.expect("fold");
    assert_eq!(store.unfolded(), 0);
    check_complete(&store, &channels, PER_CHANNEL + 1).await;
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, 3 * (PER_CHANNEL as i64 + 1));
}

/// A crash after a fold committed but before the log rows were deleted (the log is put back as it was before
/// the fold): the watermark keeps those rows from coming back. And a crash after some of a fold's transactions
/// but before its last one (the watermark is set back): the rows come back from the log although `messages`
/// holds them, and reads and the next fold count each message once.
#[tokio::test]
async fn a_restart_after_a_fold_doubles_nothing() {
    const PER_CHANNEL: usize = 50;
    let dir = temp();
    let path = dir.path().join("herald.db");
    let channels = [group("x"), group("y")];
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    for ch in &channels {
        create(&store, ch).await;
    }
    fill(&store, &channels, PER_CHANNEL).await;
    store.close().await;
    drop(store);
    let saved = dir.path().join("saved-log");
    save_log(&path, &saved);

    // Fold (the keeper recycles the folded segments afterwards).
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("reopen");
    store.fold().await.expect("fold");
    store.close().await;
    drop(store);
    let folded = 2 * PER_CHANNEL as i64;
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, folded);
    assert_eq!(count(&path, "SELECT folded_upto FROM log_watermark").await, folded);

    // A crash between a fold's transactions: rows in `messages` and in the log, the watermark not advanced.
    let mut conn = connect(&path).await;
    sqlx::query("UPDATE log_watermark SET folded_upto = 0").execute(&mut conn).await.expect("set back");
    conn.close().await.expect("close");
    restore_log(&path, &saved);
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open after a partial fold");
    assert_eq!(store.unfolded(), folded as usize, "the log rows beyond the watermark are loaded");
    for ch in &channels {
        let all = store.read(ch, ReadRange::After(0), 1000).await.expect("read");
        assert_eq!(seqs(&all.messages), (1..=PER_CHANNEL as Seq).collect::<Vec<_>>(), "each message once");
        let page = store.read(ch, ReadRange::Before(30), 10).await.expect("read before");
        assert_eq!(seqs(&page.messages), (20..30).collect::<Vec<_>>());
        assert!(page.more);
    }
    store.fold().await.expect("the fold inserts rows that are there already");
    assert_eq!(store.unfolded(), 0);
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, folded);
    assert_eq!(count(&path, "SELECT folded_upto FROM log_watermark").await, folded);

    // A crash after a fold committed, before the folded segments were recycled: the log as it was.
    restore_log(&path, &saved);
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open after the fold");
    assert_eq!(store.unfolded(), 0, "rows up to the watermark are not loaded again");
    check_complete(&store, &channels, PER_CHANNEL).await;
    store.fold().await.expect("fold");
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, folded + 2, "nothing was folded twice");
}

/// With a tiny tail and folds only when it fills up, many concurrent appends wait for folds instead of growing
/// memory or failing: every one is acknowledged and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_tail_makes_appends_wait_for_the_fold() {
    const MAX_ROWS: usize = 16;
    const BATCH: usize = 4;
    const PER_CHANNEL: usize = 150;
    let dir = temp();
    let config = SqliteConfig {
        tail_max_rows: MAX_ROWS,
        batch_max: BATCH,
        fold_chunk_rows: 5,
        ..no_auto_fold(&dir.path().join("herald.db"))
    };
    let store = Arc::new(SqliteStore::open(config).await.expect("open"));
    let channels: Vec<ChannelId> = (0..4).map(|c| group(&format!("full-{c}"))).collect();
    for ch in &channels {
        create(&*store, ch).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Acquire) {
                peak = peak.max(store.unfolded());
                tokio::task::yield_now().await;
            }
            peak
        })
    };
    let mut tasks = Vec::new();
    for ch in &channels {
        for t in 0..3 {
            let (store, ch) = (store.clone(), ch.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_CHANNEL / 3 {
                    let cid = format!("t{t}-{i}");
                    let a = store.append(message(&ch, &user("s"), Some(&cid), "1")).await.expect("append");
                    assert!(!a.duplicate);
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("appender");
    }
    done.store(true, Ordering::Release);
    let peak = sampler.await.expect("sampler");
    assert!(peak < MAX_ROWS + BATCH, "the tail stayed bounded: {peak} rows at most");
    assert!(store.unfolded() < MAX_ROWS + BATCH);
    for ch in &channels {
        let all = store.read(ch, ReadRange::After(0), 1000).await.expect("read");
        assert_eq!(seqs(&all.messages), (1..=PER_CHANNEL as Seq).collect::<Vec<_>>(), "{ch}: nothing lost");
    }
}

/// Each channel reads back `1..=n` with bodies `"<seq - 1>-<pad>"`, and a resent client id is a duplicate.
async fn check_padded(store: &SqliteStore, channels: &[ChannelId], n: usize, pad: &str) {
    for ch in channels {
        let all = store.read(ch, ReadRange::After(0), 1000).await.expect("read");
        assert_eq!(seqs(&all.messages), (1..=n as Seq).collect::<Vec<_>>(), "{ch}");
        for m in &all.messages {
            assert_eq!(m.body.get(), format!("\"{}-{pad}\"", m.seq - 1));
        }
        let dup = store.append(message(ch, &user("s"), Some("m7"), "0")).await.expect("resend");
        assert!(dup.duplicate && dup.message.seq == 8, "{ch}: dedup across segments");
    }
}

/// A small segment size: the log rolls over several segments. Unfolded rows in all of them come back after a
/// restart; after a fold the keeper reuses or deletes the folded segments, and nothing comes back twice.
#[tokio::test]
async fn unfolded_rows_across_segments_come_back_and_folded_segments_are_reused() {
    const PER_CHANNEL: usize = 150;
    let dir = temp();
    let path = dir.path().join("herald.db");
    let config = || SqliteConfig { log_segment_bytes: 64 * 1024, ..no_auto_fold(&path) };
    let channels = [group("roll-a"), group("roll-b")];
    let pad = "x".repeat(400);
    let store = SqliteStore::open(config()).await.expect("open");
    for ch in &channels {
        create(&store, ch).await;
    }
    for i in 0..PER_CHANNEL {
        for ch in &channels {
            let body = format!("\"{i}-{pad}\"");
            let a = store.append(message(ch, &user("s"), Some(&format!("m{i}")), &body)).await.expect("append");
            assert_eq!(a.message.seq, i as Seq + 1);
        }
    }
    store.close().await;
    drop(store);
    let segments = log_files(&path).len();
    assert!(segments >= 3, "the log rolled over several segments ({segments})");

    let store = SqliteStore::open(config()).await.expect("reopen");
    assert_eq!(store.unfolded(), 2 * PER_CHANNEL, "every segment is read");
    check_padded(&store, &channels, PER_CHANNEL, &pad).await;
    store.fold().await.expect("fold");
    assert_eq!(store.unfolded(), 0);
    // The keeper works on its own thread: wait (bounded) until it recycled or deleted the folded segments.
    let mut left = usize::MAX;
    for _ in 0..500 {
        left = log_files(&path).len();
        if left <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left <= 3, "folded segments beyond two spares are deleted ({left} files)");
    store.close().await;
    drop(store);

    // Recycled segments still hold their earlier records on disk: none of them comes back, even with the
    // watermark set back (as if the fold's last transaction were lost).
    let mut conn = connect(&path).await;
    sqlx::query("UPDATE log_watermark SET folded_upto = 0").execute(&mut conn).await.expect("set back");
    conn.close().await.expect("close");
    let store = SqliteStore::open(config()).await.expect("reopen after the fold");
    assert_eq!(store.unfolded(), 0, "records of a recycled segment's earlier life are void");
    check_padded(&store, &channels, PER_CHANNEL, &pad).await;
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, 2 * PER_CHANNEL as i64);
}

/// A crash while a batch was being written leaves a torn record at the end of the segment: it was never
/// acknowledged (its sync had not returned). The store opens, keeps every complete record, and seqs go on from
/// there; junk after the last record is ignored too.
#[tokio::test]
async fn a_torn_last_record_is_ignored() {
    const N: usize = 20;
    let dir = temp();
    let path = dir.path().join("herald.db");
    let ch = group("torn");
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    create(&store, &ch).await;
    fill(&store, std::slice::from_ref(&ch), N).await;
    store.close().await;
    drop(store);
    let files = log_files(&path);
    assert_eq!(files.len(), 1, "one segment, written as it grew: {files:?}");
    let segment = &files[0];

    // Junk after the last record: a frame whose checksum does not match.
    let mut bytes = std::fs::read(segment).expect("read");
    let end = bytes.len();
    bytes.extend_from_slice(&40u32.to_le_bytes());
    bytes.extend_from_slice(&[0x5a; 44]);
    std::fs::write(segment, &bytes).expect("write");
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open with junk at the end");
    assert_eq!(store.unfolded(), N);
    let all = store.read(&ch, ReadRange::After(0), 100).await.expect("read");
    assert_eq!(seqs(&all.messages), (1..=N as Seq).collect::<Vec<_>>());
    store.close().await;
    drop(store);

    // The last record cut short: it is gone, the others stay, and its seq is given to the next append.
    let mut bytes = std::fs::read(segment).expect("read");
    bytes.truncate(end - 3);
    std::fs::write(segment, &bytes).expect("write");
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open with a torn record");
    assert_eq!(store.unfolded(), N - 1);
    let next = store.append(message(&ch, &user("s"), Some("after"), "0")).await.expect("append");
    assert_eq!(next.message.seq, N as Seq);
    store.close().await;
    drop(store);
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("reopen");
    let all = store.read(&ch, ReadRange::After(0), 100).await.expect("read");
    assert_eq!(seqs(&all.messages), (1..=N as Seq).collect::<Vec<_>>());
    assert_eq!(all.messages[N - 1].client_id.as_ref().map(|c| c.as_str()), Some("after"));
    store.close().await;
    drop(store);
}

/// An append log of the earlier layout (a SQLite database `<path>-log` with a `log` table) holding unfolded
/// rows: they are copied into a segment and the old files are removed; nothing is lost or doubled, also when the
/// old file is still there after a crash.
#[tokio::test]
async fn an_append_log_of_the_earlier_layout_is_taken_over() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    let ch = group("legacy");
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    create(&store, &ch).await;
    store.close().await;
    drop(store);
    let legacy = PathBuf::from(format!("{}-log", path.display()));
    let options = SqliteConnectOptions::new().filename(&legacy).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await.expect("create the old log");
    sqlx::query(
        "CREATE TABLE log (pos INTEGER PRIMARY KEY, channel TEXT NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL, \
         sender TEXT NOT NULL, client_id TEXT, kind TEXT NOT NULL, refers INTEGER, ts INTEGER NOT NULL, body TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .expect("schema");
    for seq in 1..=5i64 {
        sqlx::query("INSERT INTO log VALUES (?1, ?2, ?3, ?4, 's', ?5, 'message', NULL, ?6, ?7)")
            .bind(seq + 10)
            .bind(ch.as_str())
            .bind(seq)
            .bind(uuid::Uuid::now_v7().as_bytes().to_vec())
            .bind(format!("m{seq}"))
            .bind(now_millis())
            .bind(format!("{}", seq - 1))
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    conn.close().await.expect("close");
    let saved = dir.path().join("saved-old-log");
    std::fs::copy(&legacy, &saved).expect("save");

    for round in 0..2 {
        if round == 1 {
            // A crash after the rows were copied into a segment, before the old file was removed.
            std::fs::copy(&saved, &legacy).expect("restore");
        }
        let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
        assert!(!legacy.exists(), "the old log is removed");
        assert_eq!(store.unfolded(), 5, "round {round}: the old log's rows, once");
        let all = store.read(&ch, ReadRange::After(0), 100).await.expect("read");
        assert_eq!(seqs(&all.messages), (1..=5).collect::<Vec<_>>());
        let dup = store.append(message(&ch, &user("s"), Some("m3"), "0")).await.expect("resend");
        assert!(dup.duplicate && dup.message.seq == 3);
        store.close().await;
        drop(store);
    }
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    let next = store.append(message(&ch, &user("s"), Some("new"), "0")).await.expect("append");
    assert_eq!(next.message.seq, 6);
    store.fold().await.expect("fold");
    store.close().await;
    drop(store);
    assert_eq!(count(&path, "SELECT count(*) FROM messages").await, 6);
}

/// Resent client ids of messages folded before a restart are recognised once the store's filter of client ids is
/// built (and before: then the main database is asked about every one), and fresh ones are stored.
#[tokio::test]
async fn resends_of_folded_messages_are_duplicates_after_a_restart() {
    const N: usize = 300;
    let dir = temp();
    let path = dir.path().join("herald.db");
    let channels = [group("f-a"), group("f-b")];
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open");
    for ch in &channels {
        create(&store, ch).await;
    }
    fill(&store, &channels, N).await;
    store.fold().await.expect("fold");
    store.close().await;
    drop(store);
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("reopen");
    for round in 0..2 {
        for ch in &channels {
            for i in (0..N).step_by(7) {
                let dup = store.append(message(ch, &user("s"), Some(&format!("m{i}")), "0")).await.expect("resend");
                assert!(dup.duplicate, "round {round}: m{i} of {ch} is a duplicate");
                assert_eq!(dup.message.seq, i as Seq + 1);
            }
            let fresh = store.append(message(ch, &user("s"), Some(&format!("fresh-{round}")), "0")).await;
            assert!(!fresh.expect("append").duplicate);
        }
        // Time for the background build of the filter: the second round goes through it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    store.close().await;
    drop(store);
}
