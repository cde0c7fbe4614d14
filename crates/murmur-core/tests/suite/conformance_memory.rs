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

/// Enough rows that every shard fills several of its arena's blocks: each
/// row is found again (merged in place, fenced) across block boundaries,
/// and reads back with its own value.
#[tokio::test]
async fn memory_rows_across_many_blocks_merge_and_read_back() {
    use murmur_core::monoid::{Cell, Sum};
    use murmur_core::store::{RowDelta, RowKey, WriteBatch};
    use murmur_core::{BucketKey, LaneId, MemoryStore, StateStore};
    let store = MemoryStore::new();
    let keys: Vec<RowKey> = (0..200_000i64)
        .map(|i| RowKey::new(format!("entity-{}", i % 20_000), BucketKey(i / 20_000)))
        .collect();
    let lane = LaneId::new("lane");
    let batch = |seq: u64, times: i64| WriteBatch {
        lane: lane.clone(),
        seq,
        rows: keys
            .iter()
            .enumerate()
            .map(|(i, k)| RowDelta {
                key: k.clone(),
                delta: Cell::Int(i as i64 * times),
                expires_at: None,
            })
            .collect(),
    };
    let first = store.apply(&Sum, &batch(1, 1)).await.unwrap();
    assert_eq!(first.rows_written, 200_000);
    let second = store.apply(&Sum, &batch(2, 2)).await.unwrap();
    assert_eq!(second.rows_written, 200_000, "every row found and merged");
    let replay = store.apply(&Sum, &batch(2, 2)).await.unwrap();
    assert_eq!(replay.rows_unchanged, 200_000, "the replay is fenced off");
    assert_eq!(store.len(), 200_000);
    let got = store.get_many(&keys).await.unwrap();
    for (i, v) in got.iter().enumerate() {
        assert_eq!(
            v.as_ref().map(|v| &v.value),
            Some(&Cell::Int(i as i64 * 3)),
            "row {i}"
        );
    }
    let rows = store.rows();
    assert_eq!(rows.len(), 200_000);
    assert!(rows.iter().all(|(_, r)| r.version == 2));
}
