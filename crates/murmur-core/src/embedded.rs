//! [`EmbeddedStore`]: a persistent, single-file state and checkpoint store
//! (redb), the worker's local default.

/// Placeholder, replaced by the redb-backed implementation.
#[derive(Debug, Clone)]
pub struct EmbeddedStore;
