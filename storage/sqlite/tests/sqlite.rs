//! Checks specific to the SQLite store: the exclusive writer lock (in one process and across processes),
//! durability across close and reopen, failed batches, closing, and open errors.

mod common;

use common::{group, message, temp, user};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald_core::id::{ChannelId, UserId};
use herald_core::model::{Channel, CursorKind, now_millis};
use herald_core::store::{ReadRange, Store, StoreError};
use herald_sqlite::{OpenError, SqliteConfig, SqliteStore};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// The environment variable that turns [`helper_process_holding_the_lock`] into a lock holder.
const HOLDER_ENV: &str = "HERALD_SQLITE_TEST_LOCK_HOLDER";

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path)).await.expect("open the SQLite store")
}

async fn create(store: &dyn Store, ch: &ChannelId, members: &[UserId]) {
    let meta = Channel { id: ch.clone(), created_by: user("owner"), created_at: now_millis() };
    store.create_channel(meta, members).await.expect("create_channel");
}

fn assert_locked(result: Result<SqliteStore, OpenError>, db: &Path, holder: u32) {
    match result {
        Err(OpenError::Locked { database, lock_file, holder: found }) => {
            assert_eq!(database, db, "the error names the database");
            assert_eq!(lock_file, PathBuf::from(format!("{}.lock", db.display())), "the error names the lock file");
            assert_eq!(found, Some(holder), "the error names the process holding the lock");
        }
        Err(e) => panic!("a second open must fail with Locked, got {e}"),
        Ok(_) => panic!("a second store opened a database that another store has open"),
    }
}

/// A second store on the same file in the same process is refused with a clear error while the first is open,
/// and opens once the first is dropped or closed.
#[tokio::test]
async fn second_open_in_the_same_process_is_refused() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    let first = open(&path).await;
    let second = SqliteStore::open(SqliteConfig::new(&path)).await;
    let text = second.as_ref().err().map(ToString::to_string).unwrap_or_default();
    assert!(
        text.contains("already open") && text.contains(&path.display().to_string()) && text.contains("only one"),
        "a clear message naming the database: {text}"
    );
    assert_locked(second, &path, std::process::id());

    // The path spelled differently (through `..`) is the same file, and the same lock.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let other_spelling = sub.join("..").join("herald.db");
    assert!(
        matches!(SqliteStore::open(SqliteConfig::new(&other_spelling)).await, Err(OpenError::Locked { .. })),
        "another spelling of the path must hit the same lock"
    );

    drop(first);
    let again = open(&path).await;
    again.close().await;
    // close() released the lock without a drop.
    let third = open(&path).await;
    drop(again);
    drop(third);
}

/// Not a test by itself: run by [`second_open_in_another_process_is_refused`] in a child process, it opens the
/// store named by the environment variable, reports `holding-the-lock`, and holds it until its stdin closes.
#[tokio::test]
async fn helper_process_holding_the_lock() {
    let Some(path) = std::env::var_os(HOLDER_ENV) else { return };
    let store = open(Path::new(&path)).await;
    let ch = group("from-the-child");
    create(&store, &ch, &[]).await;
    store.append(message(&ch, &user("child"), Some("c-1"), r#"{"from":"child"}"#)).await.expect("append");
    // Straight to the file descriptor: the test harness may capture `println!` even with --nocapture.
    let mut out = std::io::stdout();
    out.write_all(b"\nholding-the-lock\n").and_then(|()| out.flush()).expect("report to the parent");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(store);
}

/// The exclusive-writer guarantee across processes: while a child process has the database open, this process
/// cannot open it; once the child exits, it can, and sees what the child wrote.
#[tokio::test]
async fn second_open_in_another_process_is_refused() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "helper_process_holding_the_lock", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the lock holder");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so that the child never writes into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("holding-the-lock") {
                let _ = tx.send(true);
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)) != Ok(true) {
        let _ = child.kill();
        panic!("the child never reported holding the lock");
    }

    assert_locked(SqliteStore::open(SqliteConfig::new(&path)).await, &path, child.id());

    drop(child.stdin.take());
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "the lock holder failed: {status}");
    let store = open(&path).await;
    let page = store.read(&group("from-the-child"), ReadRange::After(0), 10).await.expect("read");
    assert_eq!(page.messages.len(), 1, "the child's acknowledged append is durable");
    assert_eq!(page.messages[0].body.get(), r#"{"from":"child"}"#);
}

/// Many channels written concurrently through a small channel cache, then closed and reopened: every log is
/// complete and gap-free, seqs continue, membership and cursors are there, duplicates are still recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_across_reopen_with_many_channels() {
    const CHANNELS: usize = 40;
    const PER_CHANNEL: usize = 50;
    let dir = temp();
    let path = dir.path().join("data").join("herald.db");
    let config = SqliteConfig { channel_cache: 7, batch_max: 64, ..SqliteConfig::new(&path) };
    let store = Arc::new(SqliteStore::open(config.clone()).await.expect("open"));
    let alice = user("alice");
    for c in 0..CHANNELS {
        create(&*store, &group(&format!("ch-{c}")), std::slice::from_ref(&alice)).await;
    }
    let mut tasks = Vec::new();
    for c in 0..CHANNELS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let ch = group(&format!("ch-{c}"));
            let sender = user(&format!("s{c}"));
            for i in 0..PER_CHANNEL {
                let a = store.append(message(&ch, &sender, Some(&format!("m{i}")), &format!("[{c},{i}]"))).await;
                assert_eq!(a.expect("append").message.seq, i as u64 + 1, "per-channel seqs in order");
            }
            store.set_cursor(&ch, &user("bob"), CursorKind::Read, 7).await.expect("set_cursor");
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    store.close().await;
    drop(store);

    let store = SqliteStore::open(config).await.expect("reopen");
    for c in 0..CHANNELS {
        let ch = group(&format!("ch-{c}"));
        let page = store.read(&ch, ReadRange::After(0), PER_CHANNEL + 1).await.expect("read");
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=PER_CHANNEL as u64).collect::<Vec<_>>(), "channel {c} is complete after reopen");
        assert_eq!(page.messages[3].body.get(), format!("[{c},3]"), "bodies survive byte for byte");
        assert_eq!(store.members(&ch).await.expect("members"), vec![alice.clone()]);
        assert_eq!(store.cursor(&ch, &user("bob"), CursorKind::Read).await.expect("cursor"), 7);
        let sender = user(&format!("s{c}"));
        let dup = store.append(message(&ch, &sender, Some("m3"), "0")).await.expect("append a duplicate");
        assert!(dup.duplicate && dup.message.seq == 4, "a client id from before the reopen is still a duplicate");
        let next = store.append(message(&ch, &sender, None, "0")).await.expect("append");
        assert_eq!(next.message.seq, PER_CHANNEL as u64 + 1, "seqs continue after a reopen");
    }
}

/// While something outside the store holds SQLite's write lock on the main database, every waiting write of the
/// main database's writer fails with `Unavailable` (after the busy timeout) and nothing is stored; once the lock is
/// gone, the writer carries on. Appends do not need that lock (they go to the append log): they go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_answers_every_waiter_and_the_writer_continues() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    let config = SqliteConfig { busy_timeout: Duration::from_millis(200), ..SqliteConfig::new(&path) };
    let store = Arc::new(SqliteStore::open(config).await.expect("open"));
    let ch = group("busy");
    create(&*store, &ch, &[]).await;
    let alice = user("alice");
    store.append(message(&ch, &alice, Some("before"), "1")).await.expect("append before the outside lock");

    // An outside writer (the lock file cannot stop a plain SQLite connection) takes the main database's write lock.
    let options = SqliteConnectOptions::new().filename(&path);
    let mut outside = SqliteConnection::connect_with(&options).await.expect("outside connection");
    let outside_tx = outside.begin_with("BEGIN IMMEDIATE").await.expect("outside write lock");

    let attempts = (0..20).map(|i| {
        let (store, ch) = (store.clone(), ch.clone());
        tokio::spawn(async move { store.add_members(&ch, &[user(&format!("busy-{i}"))]).await })
    });
    let cursor = store.set_cursor(&ch, &alice, CursorKind::Read, 1).await;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Err(StoreError::Unavailable(e)) => {
                let text = e.to_string();
                assert!(text.contains("rolled back") && text.contains("locked"), "a useful cause: {text}");
            }
            other => panic!("a write while the database is locked must fail with Unavailable, got {other:?}"),
        }
    }
    assert!(matches!(cursor, Err(StoreError::Unavailable(_))), "set_cursor fails the same way: {cursor:?}");
    let during = store.append(message(&ch, &alice, Some("during"), "2")).await.expect("append during the lock");
    assert_eq!(during.message.seq, 2, "appends go on");

    outside_tx.rollback().await.expect("release the outside lock");
    outside.close().await.expect("close the outside connection");
    assert!(!store.is_member(&ch, &user("busy-0")).await.expect("is_member"), "nothing of the failed batches");
    store.add_members(&ch, &[user("busy-0")]).await.expect("add_members after the lock");
    assert_eq!(store.set_cursor(&ch, &alice, CursorKind::Read, 2).await.expect("set_cursor"), 2);
    let next = store.append(message(&ch, &alice, Some("after"), "3")).await.expect("append after the lock");
    assert_eq!(next.message.seq, 3, "no gap");
}

/// After `close`, operations fail with `Unavailable` instead of hanging; reads too.
#[tokio::test]
async fn operations_after_close_are_unavailable() {
    let dir = temp();
    let store = open(&dir.path().join("herald.db")).await;
    let ch = group("closing");
    create(&store, &ch, &[]).await;
    store.append(message(&ch, &user("alice"), None, "0")).await.expect("append before close");
    store.close().await;
    let append = store.append(message(&ch, &user("alice"), None, "1")).await;
    assert!(matches!(append, Err(StoreError::Unavailable(_))), "append after close: {append:?}");
    let read = store.read(&ch, ReadRange::After(0), 10).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "read after close: {read:?}");
    // Not even from the in-memory tail (the appended message is unfolded).
    let last = store.last_seq(&ch).await;
    assert!(matches!(last, Err(StoreError::Unavailable(_))), "last_seq after close: {last:?}");
    store.close().await; // closing twice is harmless
}

#[tokio::test]
async fn bad_configurations_and_paths_are_refused_clearly() {
    let dir = temp();
    let path = dir.path().join("herald.db");
    for (config, field) in [
        (SqliteConfig { read_pool_size: 0, ..SqliteConfig::new(&path) }, "read_pool_size"),
        (SqliteConfig { batch_max: 0, ..SqliteConfig::new(&path) }, "batch_max"),
        (SqliteConfig { queue_bound: 0, ..SqliteConfig::new(&path) }, "queue_bound"),
        (SqliteConfig { max_body_bytes: 0, ..SqliteConfig::new(&path) }, "max_body_bytes"),
        (SqliteConfig { fold_rows: 0, ..SqliteConfig::new(&path) }, "fold_rows"),
        (SqliteConfig { fold_chunk_rows: 0, ..SqliteConfig::new(&path) }, "fold_chunk_rows"),
        (SqliteConfig { tail_max_rows: 0, ..SqliteConfig::new(&path) }, "tail_max_rows"),
        (SqliteConfig { fold_interval: Duration::ZERO, ..SqliteConfig::new(&path) }, "fold_interval"),
    ] {
        let e = SqliteStore::open(config).await.expect_err("refused").to_string();
        assert!(e.contains(field), "{e}");
    }

    // The parent "directory" is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    match SqliteStore::open(SqliteConfig::new(file.join("herald.db"))).await {
        Err(e @ OpenError::Io { .. }) => assert!(e.to_string().contains("create the directory"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }

    // A file that is not a SQLite database.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'g'; 8192]).expect("write");
    match SqliteStore::open(SqliteConfig::new(&garbage)).await {
        Err(e @ OpenError::Database { .. }) => {
            let text = e.to_string();
            assert!(text.contains("garbage.db") && text.contains("not a database"), "{text}");
        }
        other => panic!("expected a database error, got {other:?}"),
    }
    // The failed open released the lock: a second attempt fails the same way, not with Locked.
    assert!(matches!(SqliteStore::open(SqliteConfig::new(&garbage)).await, Err(OpenError::Database { .. })));
}

/// The database is created on first start with its directory, in WAL mode, and `Debug` names it.
#[tokio::test]
async fn creates_the_database_in_wal_mode() {
    let dir = temp();
    let path = dir.path().join("a").join("b").join("herald.db");
    let store = open(&path).await;
    assert!(path.is_file(), "the database file exists");
    assert_eq!(store.path(), path);
    assert!(format!("{store:?}").contains("herald.db"));
    store.close().await;
    let options = SqliteConnectOptions::new().filename(&path);
    let mut conn = SqliteConnection::connect_with(&options).await.expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.expect("pragma");
    assert_eq!(mode, "wal");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .expect("tables");
    assert_eq!(tables, ["channels", "cursors", "devices", "log_watermark", "members", "messages", "push_outbox"]);

    // The append log is not a SQLite file: segment files, made by the first append.
    assert!(!PathBuf::from(format!("{}-log", path.display())).exists());
}

#[tokio::test]
async fn page_size_applies_to_a_new_file_and_is_checked() {
    let dir = temp();
    let path = dir.path().join("small-pages.db");
    let refused = SqliteStore::open(SqliteConfig { page_size: 3000, ..SqliteConfig::new(&path) }).await;
    assert!(matches!(refused, Err(OpenError::Config(ref m)) if m.contains("page_size")), "{refused:?}");
    let store = SqliteStore::open(SqliteConfig { page_size: 2048, ..SqliteConfig::new(&path) }).await.expect("open");
    let (ch, alice) = (group("pages"), user("alice"));
    create(&store, &ch, std::slice::from_ref(&alice)).await;
    store.append(message(&ch, &alice, Some("c1"), r#"{"text":"hi"}"#)).await.expect("append");
    store.close().await;
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path)).await.expect("open");
    let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut conn).await.expect("page_size");
    assert_eq!(size, 2048, "a new file gets the configured page size");
    conn.close().await.expect("close");
    // An existing file keeps its page size whatever the configuration says.
    let store = open(&path).await;
    assert_eq!(store.last_seq(&ch).await.expect("last_seq"), 1);
}
