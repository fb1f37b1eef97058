//! Cross-crate end-to-end tests for Herald. The tests live in `tests/`; this library holds shared helpers.

use std::sync::Arc;

use herald::core::testkit::protocol::TestTokens;
use herald::core::{Hub, HubConfig};
use herald::memory::MemoryStore;

/// A hub over a fresh memory store, authenticating with `tokens`.
pub fn memory_hub(tokens: &TestTokens, config: HubConfig) -> Hub {
    Hub::builder(Arc::new(MemoryStore::new()), Arc::new(tokens.auth())).config(config).build()
}
