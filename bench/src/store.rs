//! Choosing the store under test by name: `--store memory` (more backends are added as arms of
//! [`StoreKind`] and [`open`]).

use std::sync::Arc;

use herald::core::store::Store;

/// The stores the benchmarks can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `herald-memory`: in-process, not durable across restarts.
    Memory,
}

impl StoreKind {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
        }
    }
}

/// Opens a store of `kind`. `url` is the backend's location (a file path, a database URL); the memory store
/// takes none and refuses one, so that a mistyped command does not silently measure the wrong thing.
///
/// A new backend is one more [`StoreKind`] variant and one more arm here (for example
/// `StoreKind::Sqlite => Ok(Arc::new(herald_sqlite::SqliteStore::open(url?).await?))`).
pub async fn open(kind: StoreKind, url: Option<&str>) -> Result<Arc<dyn Store>, String> {
    match kind {
        StoreKind::Memory => match url {
            None => Ok(Arc::new(herald::memory::MemoryStore::new())),
            Some(u) => Err(format!("the memory store takes no --store-url (got {u:?})")),
        },
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
    }
}
