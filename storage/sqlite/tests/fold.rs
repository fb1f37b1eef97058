//! The append log and the fold: reads while folds run, restarts with unfolded rows and after a fold whose log
//! cleanup did not happen, and the in-memory tail's bound.

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

fn log_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-log", path.display()))
}

/// The append log's files: the database and its WAL.
fn log_files(path: &Path) -> [PathBuf; 2] {
    [log_of(path), PathBuf::from(format!("{}-log-wal", path.display()))]
}

/// Copies the (closed) append log's files into `to`.
fn save_log(path: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for (i, file) in log_files(path).iter().enumerate() {
        if file.exists() {
            std::fs::copy(file, to.join(i.to_string())).expect("save");
        }
    }
}

/// Puts the saved append log back, as if nothing had happened to it since [`save_log`].
fn restore_log(path: &Path, from: &Path) {
    let shm = PathBuf::from(format!("{}-log-shm", path.display()));
    for (i, file) in log_files(path).iter().chain([&shm]).enumerate() {
        let saved = from.join(i.to_string());
        if saved.exists() {
            std::fs::copy(&saved, file).expect("restore");
        } else if file.exists() {
            std::fs::remove_file(file).expect("remove");
        }
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
    assert_eq!(count(&log_of(&path), "SELECT count(*) FROM log").await, 3 * PER_CHANNEL as i64);

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
    let log = log_of(&path);
    let saved = dir.path().join("saved-log");
    save_log(&path, &saved);

    // Fold (the appender deletes the folded log rows afterwards).
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

    // A crash after a fold committed, before the log cleanup: the log as it was.
    restore_log(&path, &saved);
    let store = SqliteStore::open(no_auto_fold(&path)).await.expect("open after the fold");
    assert_eq!(store.unfolded(), 0, "rows up to the watermark are not loaded again");
    check_complete(&store, &channels, PER_CHANNEL).await;
    store.fold().await.expect("fold");
    store.close().await;
    drop(store);
    assert_eq!(count(&log, "SELECT count(*) FROM log WHERE pos <= 100").await, 0, "and they are deleted");
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
