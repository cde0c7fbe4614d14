//! Eight tasks apply different lanes' batches to the same hot rows at once
//! (every batch twice): totals are exact, and the merge path's
//! compare-and-set conflicts are retried and counted.

use crate::common::{config, moto, unique};
use murmur_core::monoid::{HyperLogLog, Sum, TopK};
use murmur_core::{
    ApplyReport, BucketKey, LaneId, Monoid, RowDelta, RowKey, StateStore, WriteBatch,
};
use murmur_state_ddb::DynamoDbStore;
use std::sync::Arc;

const TASKS: u64 = 8;
const BATCHES: u64 = 6;
const HOT: i64 = 3;

/// The delta lane `l` writes to every hot row in batch `seq`.
fn delta<M: Monoid>(
    m: &M,
    l: u64,
    seq: u64,
    input: &(dyn Fn(u64, u64, u64) -> M::Input + Sync),
) -> M::Value {
    let mut acc = m.identity();
    for j in 0..5 {
        m.insert(&mut acc, input(l, seq, j));
    }
    acc
}

async fn hammer<M: Monoid>(
    store: &DynamoDbStore,
    m: M,
    input: Arc<dyn Fn(u64, u64, u64) -> M::Input + Send + Sync>,
) -> (Vec<Option<murmur_core::StoredValue>>, M::Value, ApplyReport) {
    let entity = unique(&format!("hot-{:?}", Monoid::kind(&m)));
    let hot: Vec<RowKey> = (0..HOT)
        .map(|b| RowKey::new(entity.as_str(), BucketKey(b)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..TASKS {
        let (store, m, hot, input) = (store.clone(), m.clone(), hot.clone(), input.clone());
        tasks.spawn(async move {
            let lane = LaneId::new(unique(&format!("task{l}")));
            let mut report = ApplyReport::default();
            for seq in 1..=BATCHES {
                let value = delta(&m, l, seq, &*input);
                let batch = WriteBatch {
                    lane: lane.clone(),
                    seq,
                    rows: hot
                        .iter()
                        .map(|k| RowDelta {
                            key: k.clone(),
                            delta: m.encode(&value),
                            expires_at: None,
                        })
                        .collect(),
                };
                report.add(store.apply(&m, &batch).await.expect("apply"));
                report.add(store.apply(&m, &batch).await.expect("re-apply"));
            }
            report
        });
    }
    let mut report = ApplyReport::default();
    while let Some(r) = tasks.join_next().await {
        report.add(r.expect("task"));
    }
    // The exact expectation: every lane's every batch folded once.
    let mut expected = m.identity();
    for l in 0..TASKS {
        for seq in 1..=BATCHES {
            m.combine_into(&mut expected, &delta(&m, l, seq, &*input))
                .unwrap();
        }
    }
    (store.get_many(&hot).await.expect("read"), expected, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_lanes_on_hot_rows_are_exact() {
    let Some(moto) = moto("eight_lanes_on_hot_rows_are_exact").await else {
        return;
    };
    let table = moto.state_table("conc").await;
    let store = DynamoDbStore::new(&moto.client, config(&table));

    // ADD path: no conflicts possible, totals exact.
    let (rows, expected, report) = hammer(
        &store,
        Sum,
        Arc::new(|l, s, j| (l * 1000 + s * 10 + j) as i64),
    )
    .await;
    for row in &rows {
        assert_eq!(
            row.as_ref().unwrap().value.as_int(),
            Some(expected),
            "Sum on a hot row"
        );
    }
    let writes = TASKS * BATCHES * HOT as u64;
    assert_eq!(report.rows_written, writes, "each batch lands once per row");
    assert_eq!(
        report.rows_unchanged, writes,
        "each re-apply is a no-op per row"
    );

    // Merge path, fenced (Top-K) and idempotent (HLL): conflicts retried.
    let before = store.metrics().snapshot();
    let topk = TopK::new(4, 32).unwrap();
    let (rows, expected, topk_report) = hammer(
        &store,
        topk,
        Arc::new(|l, s, j| format!("item-{}", (l + s * j) % 13)),
    )
    .await;
    for row in &rows {
        assert_eq!(
            row.as_ref().unwrap().value,
            topk.encode(&expected),
            "Top-K on a hot row (byte-equal)"
        );
    }
    assert_eq!(topk_report.rows_written, writes);
    let hll = HyperLogLog::new(10, 1).unwrap();
    let (rows, expected, hll_report) =
        hammer(&store, hll, Arc::new(|l, s, j| format!("user-{l}-{s}-{j}"))).await;
    for row in &rows {
        assert_eq!(
            row.as_ref().unwrap().value,
            hll.encode(&expected),
            "HLL on a hot row (byte-equal)"
        );
    }
    let after = store.metrics().snapshot();
    let conflicts = after.cas_conflicts - before.cas_conflicts;
    eprintln!(
        "merge path under contention: {conflicts} compare-and-set conflicts, retries {} (Top-K) + {} (HLL)",
        topk_report.retries, hll_report.retries
    );
    assert!(conflicts > 0, "8 writers on 3 hot rows must collide");
    assert!(
        topk_report.retries + hll_report.retries > 0,
        "conflicts are retried and reported"
    );
    assert_eq!(
        after.retries - before.retries,
        topk_report.retries + hll_report.retries,
        "no other retries"
    );
}
