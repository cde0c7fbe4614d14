//! Request accounting: 1,000,000 events over 10,000 (entity, bucket) pairs,
//! pre-aggregated with `Aggregator` and flushed as one fenced batch, cost
//! exactly 10,000 row writes plus the lane's checkpoint writes.

use crate::common::{config, moto, unique};
use murmur_core::monoid::Count;
use murmur_core::{
    Aggregator, BatchIntent, CheckpointStore, FlushPolicy, LaneId, Pipeline, Position, Record,
    RowKey, StateStore, Window, WriteBatch,
};
use murmur_state_ddb::{DynamoDbCheckpointStore, DynamoDbStore};
use std::time::Duration;

const EVENTS: u64 = 1_000_000;
const ENTITIES: u64 = 1_000;
const HOURS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_million_events_cost_ten_thousand_row_writes() {
    let Some(moto) = moto("one_million_events_cost_ten_thousand_row_writes").await else {
        return;
    };
    let table = moto.state_table("acct").await;
    let cp_table = moto.checkpoint_table("acct-cp").await;
    let store = DynamoDbStore::new(&moto.client, config(&table).with_max_concurrency(32));
    let cp = DynamoDbCheckpointStore::new(&moto.client, config(&cp_table));

    let prefix = unique("user");
    let pipeline = Pipeline::builder("acct", Count)
        .key_by(move |e: &(u64, i64)| format!("{prefix}-{}", e.0))
        .value(|_| ())
        .window(Window::hour())
        .build()
        .unwrap();
    let mut agg = Aggregator::new(
        pipeline.clone(),
        FlushPolicy {
            max_keys: 1_000_000,
            max_age: Duration::from_secs(3600),
        },
    );
    let started = std::time::Instant::now();
    let t0: i64 = 1_778_284_800_000; // 2026-05-09T00:00Z
    for i in 0..EVENTS {
        // Event i: entity i % 1000, hour (i / 1000) % 10: 100 events per pair.
        let (entity, hour) = (i % ENTITIES, (i / ENTITIES) % HOURS);
        let t = t0 + hour as i64 * 3_600_000 + (i % 3_600_000) as i64 % 3_600_000;
        agg.push(&Record::new((entity, t), t), t).unwrap();
    }
    assert_eq!(agg.len(), (ENTITIES * HOURS) as usize);
    let aggregated = started.elapsed();

    let lane = LaneId::new(unique("acct-lane"));
    cp.init_lane(&lane, &Position::Offset { offset: 0 })
        .await
        .unwrap();
    let intent = BatchIntent {
        lane: lane.clone(),
        seq: 1,
        start: Position::Offset { offset: 0 },
        end: Position::Offset {
            offset: EVENTS as i64,
        },
        bad_records: 0,
    };
    cp.begin_batch(&intent).await.unwrap();
    let batch = WriteBatch {
        lane: lane.clone(),
        seq: 1,
        rows: agg.take(),
    };
    let report = store.apply(pipeline.monoid(), &batch).await.unwrap();
    let applied = started.elapsed() - aggregated;
    let state = cp.commit_batch(&lane, 1).await.unwrap();
    assert_eq!(
        state.position,
        Position::Offset {
            offset: EVENTS as i64
        }
    );

    // Exactly one UpdateItem per distinct (entity, bucket), nothing else.
    assert_eq!(report.rows_written, 10_000);
    assert_eq!(report.requests, 10_000, "{report:?}");
    assert_eq!(report.retries, 0);
    let m = store.metrics().snapshot();
    assert_eq!(
        (m.requests, m.write_requests, m.read_requests),
        (10_000, 10_000, 0),
        "{m:?}"
    );
    // Checkpoint: init, begin, commit = one consistent read + one
    // conditional put each.
    let c = cp.metrics().snapshot();
    assert_eq!(
        (c.requests, c.read_requests, c.write_requests),
        (6, 3, 3),
        "{c:?}"
    );
    eprintln!(
        "{EVENTS} events -> {} row writes + {} checkpoint requests ({:.1} events per request); \
         consumed WCU reported: {}; aggregation {aggregated:?}, apply {applied:?}",
        m.write_requests,
        c.requests,
        EVENTS as f64 / (m.requests + c.requests) as f64,
        m.write_capacity_units
    );

    // Every count is exact: 100 per row, 1,000,000 in all; reading 10,000
    // rows takes 100 BatchGetItem requests.
    let keys: Vec<RowKey> = batch.rows.iter().map(|r| r.key.clone()).collect();
    let rows = store.get_many(&keys).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.as_ref().and_then(|v| v.value.as_int()) == Some(100))
    );
    assert_eq!(store.metrics().snapshot().read_requests, 100);
}
