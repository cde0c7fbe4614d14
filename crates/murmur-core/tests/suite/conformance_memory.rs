//! The store conformance suite against [`MemoryStore`].

use murmur_core::{MemoryStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_state_store() {
    conformance::state_store(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_checkpoint_store() {
    conformance::checkpoint_store(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_deduper() {
    conformance::deduper(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_durability_across_handles() {
    // A clone shares state, which is what "reopen" means for memory.
    let store = MemoryStore::new();
    conformance::durability(|| {
        let s = store.clone();
        async move { (s.clone(), s) }
    })
    .await;
}

#[tokio::test]
async fn memory_alias_store() {
    conformance::alias_store(&MemoryStore::new()).await;
}
