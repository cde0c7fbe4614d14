//! Exactness under replay: a writer "crashes" after a random number of row
//! writes (the fault proxy refuses every write after the N-th, with
//! concurrent writes in flight), possibly again during the replay, and the
//! batch is then replayed whole with the same (lane, seq). The result must
//! equal a crash-free run: Sum exactly, sketches byte for byte.

use crate::common::{config, moto, unique};
use crate::proxy::{FaultProxy, Faults};
use murmur_core::monoid::{Bloom, HyperLogLog, Min, Sum, TopK};
use murmur_core::{BucketKey, LaneId, Monoid, RowDelta, RowKey, StateStore, WriteBatch};
use murmur_state_ddb::DynamoDbStore;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::sync::atomic::Ordering::Relaxed;

const ROWS: usize = 30;
const BATCHES: u64 = 5;

/// The batches of one run: deterministic contents, rows under `prefix`.
fn batches<M: Monoid>(
    m: &M,
    prefix: &str,
    lane: &LaneId,
    seed: u64,
    input: &dyn Fn(&mut StdRng) -> M::Input,
) -> Vec<WriteBatch> {
    let mut rng = StdRng::seed_from_u64(seed);
    (1..=BATCHES)
        .map(|seq| WriteBatch {
            lane: lane.clone(),
            seq,
            rows: (0..ROWS)
                .filter_map(|i| {
                    if !rng.random_bool(0.8) {
                        return None;
                    }
                    let mut acc = m.identity();
                    for _ in 0..rng.random_range(1..=20) {
                        m.insert(&mut acc, input(&mut rng));
                    }
                    Some(RowDelta {
                        key: RowKey::new(format!("{prefix}-{i}"), BucketKey(i as i64 % 3)),
                        delta: m.encode(&acc),
                        expires_at: Some(1_900_000_000 + i as i64),
                    })
                })
                .collect(),
        })
        .collect()
}

async fn crash_then_replay<M: Monoid>(
    direct: &DynamoDbStore,
    crashy: &DynamoDbStore,
    proxy: &FaultProxy,
    m: M,
    seed: u64,
    input: &dyn Fn(&mut StdRng) -> M::Input,
) -> Vec<i64> {
    let kind = format!("{:?}", Monoid::kind(&m));
    let (clean_prefix, crash_prefix) = (
        unique(&format!("{kind}-clean")),
        unique(&format!("{kind}-crash")),
    );
    let lane = LaneId::new(unique("lane"));
    let clean = batches(&m, &clean_prefix, &lane, seed, input);
    let crashing = batches(&m, &crash_prefix, &lane, seed, input);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a5);
    for b in &clean {
        direct.apply(&m, b).await.expect("crash-free apply");
    }
    let mut crashes = 0;
    for b in &crashing {
        // Up to two crashes (the second during the replay of the first).
        for _ in 0..rng.random_range(1..=2) {
            let limit = rng.random_range(0..b.rows.len() as u64);
            proxy.arm_crash(Some(limit));
            if crashy.apply(&m, b).await.is_err() {
                crashes += 1;
            }
        }
        proxy.arm_crash(None);
        direct.apply(&m, b).await.expect("replay after the crash");
    }
    assert!(crashes > 0, "{kind}: no apply crashed");
    let keys = |prefix: &str| -> Vec<RowKey> {
        (0..ROWS)
            .map(|i| RowKey::new(format!("{prefix}-{i}"), BucketKey(i as i64 % 3)))
            .collect()
    };
    let want = direct
        .get_many(&keys(&clean_prefix))
        .await
        .expect("read clean run");
    let got = direct
        .get_many(&keys(&crash_prefix))
        .await
        .expect("read crashed run");
    let mut ints = Vec::new();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            g, w,
            "{kind}: row {i} after crashes and replays differs from the crash-free run"
        );
        if let Some(v) = w.as_ref().and_then(|v| v.value.as_int()) {
            ints.push(v);
        }
    }
    assert!(want.iter().flatten().count() > ROWS / 2);
    ints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_part_way_then_replay_equals_crash_free_run() {
    let Some(moto) = moto("crash_part_way_then_replay_equals_crash_free_run").await else {
        return;
    };
    let proxy = moto.fault_proxy(Faults::default(), 11).await;
    let table = moto.state_table("replay").await;
    let direct = DynamoDbStore::new(&moto.client, config(&table));
    let crashy = DynamoDbStore::new(
        &moto.client_via(&proxy.url),
        config(&table).with_max_concurrency(8),
    );
    let word = |r: &mut StdRng| format!("item-{}", r.random_range(0..500));

    let sums = crash_then_replay(&direct, &crashy, &proxy, Sum, 1, &|r| {
        r.random_range(1..1000i64)
    })
    .await;
    // Exact, not just equal: every row's total is the sum of its deltas.
    let expected: i64 = batches(&Sum, "x", &LaneId::new("x"), 1, &|r| {
        r.random_range(1..1000i64)
    })
    .iter()
    .flat_map(|b| b.rows.iter().map(|r| r.delta.as_int().unwrap()))
    .sum();
    assert_eq!(
        sums.iter().sum::<i64>(),
        expected,
        "Sum total after crashes and replays"
    );

    crash_then_replay(&direct, &crashy, &proxy, Min, 2, &|r| {
        r.random_range(-1000..1000i64)
    })
    .await;
    crash_then_replay(
        &direct,
        &crashy,
        &proxy,
        HyperLogLog::new(12, 3).unwrap(),
        3,
        &word,
    )
    .await;
    crash_then_replay(
        &direct,
        &crashy,
        &proxy,
        TopK::new(5, 40).unwrap(),
        4,
        &word,
    )
    .await;
    crash_then_replay(
        &direct,
        &crashy,
        &proxy,
        Bloom::with_rate(1_000, 0.01).unwrap(),
        5,
        &word,
    )
    .await;
    assert!(proxy.counts().crashed.load(Relaxed) > 0);
}
