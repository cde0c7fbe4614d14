//! Differential test: random sequences of batches — new batches, replays,
//! crashes part-way (a prefix of the rows) followed by the whole batch,
//! stale sequence numbers, changing expiries — applied to `MemoryStore` (the
//! reference semantics) and to `DynamoDbStore`. Every apply must report the
//! same rows written / unchanged, and every row must end byte-equal, expiry
//! included, for every kind of monoid.

use crate::common::{config, moto, unique};
use murmur_core::monoid::{
    Bloom, Count, First, HyperLogLog, Last, Map, Max, Min, Set, Sum, TopK, Tuple,
};
use murmur_core::{
    BucketKey, LaneId, MemoryStore, Monoid, RowDelta, RowKey, StateStore, WriteBatch,
};
use murmur_state_ddb::DynamoDbStore;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const KEYS: usize = 12;
const STEPS: usize = 24;

fn keys(prefix: &str) -> Vec<RowKey> {
    (0..KEYS)
        .map(|i| RowKey::new(format!("{prefix}-{}", i % 4), BucketKey(i as i64 / 4 - 1)))
        .collect()
}

fn random_batch<M: Monoid>(
    m: &M,
    rng: &mut StdRng,
    keys: &[RowKey],
    lane: &LaneId,
    seq: u64,
    input: &dyn Fn(&mut StdRng) -> M::Input,
) -> WriteBatch {
    let mut rows = Vec::new();
    for key in keys {
        if !rng.random_bool(0.6) {
            continue;
        }
        let mut acc = m.identity();
        for _ in 0..rng.random_range(1..=4) {
            m.insert(&mut acc, input(rng));
        }
        let expires_at = match rng.random_range(0..4) {
            0 => None,
            n => Some(1_800_000_000 + n * 60),
        };
        rows.push(RowDelta {
            key: key.clone(),
            delta: m.encode(&acc),
            expires_at,
        });
    }
    WriteBatch {
        lane: lane.clone(),
        seq,
        rows,
    }
}

async fn run<M: Monoid>(
    store: &DynamoDbStore,
    m: M,
    seed: u64,
    input: &dyn Fn(&mut StdRng) -> M::Input,
) {
    let mem = MemoryStore::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = keys(&unique(&format!("{:?}", Monoid::kind(&m))));
    let lanes: Vec<LaneId> = (0..3)
        .map(|i| LaneId::new(unique(&format!("lane{i}"))))
        .collect();
    let mut next = [1u64; 3];
    let mut history: Vec<WriteBatch> = Vec::new();
    for step in 0..STEPS {
        let mut to_apply = Vec::new();
        match rng.random_range(0..10) {
            // A batch crashes part-way, then is replayed whole.
            0..=2 => {
                let l = rng.random_range(0..3);
                let full = random_batch(&m, &mut rng, &keys, &lanes[l], next[l], input);
                next[l] += 1;
                let mut prefix = full.clone();
                prefix.rows.truncate(rng.random_range(0..=full.rows.len()));
                to_apply.push(prefix);
                to_apply.push(full.clone());
                history.push(full);
            }
            // A replay of any earlier batch (including stale sequence numbers).
            3..=4 if !history.is_empty() => {
                to_apply.push(history[rng.random_range(0..history.len())].clone());
            }
            _ => {
                let l = rng.random_range(0..3);
                let b = random_batch(&m, &mut rng, &keys, &lanes[l], next[l], input);
                next[l] += 1;
                to_apply.push(b.clone());
                history.push(b);
            }
        }
        for b in to_apply {
            let want = mem.apply(&m, &b).await.expect("memory apply");
            let got = store
                .apply(&m, &b)
                .await
                .unwrap_or_else(|e| panic!("{:?} seed {seed} step {step}: {e}", Monoid::kind(&m)));
            assert_eq!(
                (got.rows_written, got.rows_unchanged),
                (want.rows_written, want.rows_unchanged),
                "{:?} seed {seed} step {step}: rows written/unchanged differ from MemoryStore (lane {} seq {})",
                Monoid::kind(&m),
                b.lane,
                b.seq
            );
        }
    }
    let want = mem.get_many(&keys).await.expect("memory get_many");
    let got = store.get_many(&keys).await.expect("dynamodb get_many");
    for ((k, w), g) in keys.iter().zip(&want).zip(&got) {
        assert_eq!(
            g,
            w,
            "{:?} seed {seed}: row {}/{} differs from MemoryStore",
            Monoid::kind(&m),
            k.entity,
            k.bucket.0
        );
    }
    assert!(
        want.iter().filter(|v| v.is_some()).count() >= KEYS / 2,
        "the run wrote most rows"
    );
}

fn word(rng: &mut StdRng) -> String {
    format!("w{}", rng.random_range(0..40))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_monoid_matches_memory_store() {
    let Some(moto) = moto("every_monoid_matches_memory_store").await else {
        return;
    };
    let table = moto.state_table("diff").await;
    let store = DynamoDbStore::new(&moto.client, config(&table));
    let int = |r: &mut StdRng| r.random_range(-1000..1000i64);
    let seed = 0x5eed;
    // Integer strategies: ADD, conditional SET.
    run(&store, Sum, seed, &int).await;
    run(&store, Count, seed + 1, &|_| ()).await;
    run(&store, Min, seed + 2, &int).await;
    run(&store, Max, seed + 3, &int).await;
    // Byte-encoded, idempotent (read-merge-CAS, unfenced).
    run(&store, HyperLogLog::new(8, 7).unwrap(), seed + 4, &word).await;
    run(&store, Bloom::new(512, 3, 1).unwrap(), seed + 5, &word).await;
    run(&store, Set, seed + 6, &word).await;
    run(&store, First, seed + 7, &|r| {
        (r.random_range(0..100), word(r))
    })
    .await;
    run(&store, Last, seed + 8, &|r| {
        (r.random_range(0..100), word(r))
    })
    .await;
    // Byte-encoded, fenced.
    run(&store, TopK::new(3, 12).unwrap(), seed + 9, &word).await;
    run(&store, Map::new(Sum), seed + 10, &|r| {
        (word(r), r.random_range(0..10))
    })
    .await;
    run(&store, Tuple::new(Count, Max), seed + 11, &|r| {
        ((), r.random_range(0..1000))
    })
    .await;
}
