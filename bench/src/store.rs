//! Choosing the store under test by name: `--store memory|sqlite|postgres`.
//!
//! [`open`] opens a store that outlives the benchmark (the bench server's `--store`); [`open_scratch`] opens one
//! that only a measurement uses and that [`Scratch::close`] deletes afterwards: a fresh SQLite data directory,
//! or a fresh PostgreSQL schema.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald::core::store::Store;
use herald::postgres::{PgConfig, PgStore};
use herald::sqlite::{SqliteConfig, SqliteStore};

/// The stores the benchmarks can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `herald-memory`: in-process, not durable across restarts.
    Memory,
    /// `herald-sqlite`: a database file plus its append log (both WAL, `synchronous = FULL`, group commit;
    /// appends are folded into the history tables in the background); the location is a data directory.
    Sqlite,
    /// `herald-postgres`: PostgreSQL with group commit; the location is a database URL.
    Postgres,
}

impl StoreKind {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The SQLite database file inside a data directory (the name the reference server uses).
const SQLITE_FILE: &str = "herald.db";

/// Opens a store of `kind` that stays after the process: `url` is the SQLite data directory or the PostgreSQL
/// database URL (schema `herald`). The memory store takes none and refuses one, so that a mistyped command does
/// not silently measure the wrong thing.
pub async fn open(kind: StoreKind, url: Option<&str>) -> Result<Arc<dyn Store>, String> {
    let need = |what: &str| format!("the {} store needs --store-url ({what})", kind.name());
    match kind {
        StoreKind::Memory => match url {
            None => Ok(Arc::new(herald::memory::MemoryStore::new())),
            Some(u) => Err(format!("the memory store takes no --store-url (got {u:?})")),
        },
        StoreKind::Sqlite => {
            let dir = url.ok_or_else(|| need("a data directory"))?;
            Ok(Arc::new(open_sqlite(Path::new(dir)).await?))
        }
        StoreKind::Postgres => {
            let url = url.ok_or_else(|| need("a database URL"))?;
            Ok(Arc::new(open_postgres(url, "herald").await?))
        }
    }
}

async fn open_sqlite(dir: &Path) -> Result<SqliteStore, String> {
    SqliteStore::open(SqliteConfig::new(dir.join(SQLITE_FILE)))
        .await
        .map_err(|e| format!("cannot open the SQLite store in {}: {e}", dir.display()))
}

async fn open_postgres(url: &str, schema: &str) -> Result<PgStore, String> {
    PgStore::connect(PgConfig::new(url).with_schema(schema))
        .await
        .map_err(|e| format!("cannot open the PostgreSQL store (schema {schema}): {e}"))
}

/// A store only one measurement uses; [`Scratch::close`] closes it and deletes what it stored.
pub struct Scratch {
    /// The store.
    pub store: Arc<dyn Store>,
    place: Place,
}

/// Where a scratch store lives.
enum Place {
    Memory,
    /// The store and its data directory (removed on close, or on drop as a fallback).
    Sqlite(Arc<SqliteStore>, PathBuf),
    /// The store and its schema (dropped on close).
    Postgres(Arc<PgStore>, String),
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::Memory => f.write_str("Scratch(memory)"),
            Place::Sqlite(_, dir) => write!(f, "Scratch(sqlite in {})", dir.display()),
            Place::Postgres(_, schema) => write!(f, "Scratch(postgres schema {schema})"),
        }
    }
}

/// A name no other scratch store of this machine uses now: process id, time and a counter.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}_{}_{n}", std::process::id(), crate::schedule::unix_nanos() / 1_000_000)
}

/// Opens a fresh store of `kind` for one measurement: SQLite in a new data directory under `url` (default: the
/// system's temporary directory, which must be a real disk for the figures to mean anything), PostgreSQL in a
/// new schema `herald_bench_…` of the database at `url` (required). The memory store takes no `url`.
pub async fn open_scratch(kind: StoreKind, url: Option<&str>) -> Result<Scratch, String> {
    match kind {
        StoreKind::Memory => Ok(Scratch { store: open(kind, url).await?, place: Place::Memory }),
        StoreKind::Sqlite => {
            let parent = url.map_or_else(std::env::temp_dir, PathBuf::from);
            let dir = parent.join(format!("herald-bench-{}", unique()));
            let store = Arc::new(open_sqlite(&dir).await?);
            Ok(Scratch { store: store.clone(), place: Place::Sqlite(store, dir) })
        }
        StoreKind::Postgres => {
            let url = url.ok_or("the postgres store needs a database URL (--postgres-url)")?;
            let schema = format!("herald_bench_{}", unique());
            let store = Arc::new(open_postgres(url, &schema).await?);
            Ok(Scratch { store: store.clone(), place: Place::Postgres(store, schema) })
        }
    }
}

impl Scratch {
    /// Closes the store and deletes its data directory or schema.
    pub async fn close(mut self) -> Result<(), String> {
        match std::mem::replace(&mut self.place, Place::Memory) {
            Place::Memory => Ok(()),
            Place::Sqlite(store, dir) => {
                store.close().await;
                std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))
            }
            Place::Postgres(store, schema) => {
                let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
                    .execute(store.pool())
                    .await;
                store.close().await;
                dropped.map(drop).map_err(|e| format!("cannot drop the schema {schema}: {e}"))
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match &self.place {
            Place::Memory => {}
            Place::Sqlite(_, dir) => {
                // Not closed (an error cut the measurement short): the files go anyway.
                let _ = std::fs::remove_dir_all(dir);
            }
            Place::Postgres(_, schema) => {
                eprintln!("the scratch schema {schema} was not dropped (the measurement did not close its store)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_memory_and_refuses_a_url_for_it() {
        let s = open(StoreKind::Memory, None).await.expect("memory store opens");
        let ch = herald::core::id::ChannelId::new("group:x").expect("valid id");
        assert_eq!(s.last_seq(&ch).await.expect("readable"), 0);
        assert!(open(StoreKind::Memory, Some("x")).await.is_err());
        assert!(open(StoreKind::Sqlite, None).await.is_err(), "a persistent SQLite store needs its directory");
        assert!(open_scratch(StoreKind::Postgres, None).await.is_err(), "PostgreSQL needs a URL");
    }

    #[tokio::test]
    async fn a_scratch_sqlite_store_is_deleted_on_close() {
        let parent = std::env::temp_dir();
        let s = open_scratch(StoreKind::Sqlite, parent.to_str()).await.expect("scratch SQLite opens");
        let Place::Sqlite(_, dir) = &s.place else { panic!("a SQLite scratch: {s:?}") };
        let dir = dir.clone();
        assert!(dir.join(SQLITE_FILE).exists(), "the database file is in {}", dir.display());
        s.close().await.expect("closed");
        assert!(!dir.exists(), "{} is removed", dir.display());
    }

    #[tokio::test]
    async fn a_scratch_postgres_schema_is_dropped_on_close() {
        let Some(url) = std::env::var("HERALD_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            assert!(
                std::env::var("HERALD_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "HERALD_TEST_DATABASE_URL is not set but HERALD_REQUIRE_SERVICES=1"
            );
            eprintln!(
                "\n*** SKIP a_scratch_postgres_schema_is_dropped_on_close: HERALD_TEST_DATABASE_URL is not set ***\n"
            );
            return;
        };
        let s = open_scratch(StoreKind::Postgres, Some(&url)).await.expect("scratch PostgreSQL opens");
        let Place::Postgres(store, schema) = &s.place else { panic!("a PostgreSQL scratch: {s:?}") };
        let (pool, schema) = (store.pool().clone(), schema.clone());
        let count = "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1";
        let before: i64 = sqlx::query_scalar(count).bind(&schema).fetch_one(&pool).await.expect("query");
        assert_eq!(before, 1, "the schema {schema} exists while the store is open");
        s.close().await.expect("closed");
        let mut conn = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(&url).await.expect("connect");
        let after: i64 = sqlx::query_scalar(count).bind(&schema).fetch_one(&mut conn).await.expect("query");
        assert_eq!(after, 0, "the schema {schema} is dropped");
    }
}
