//! Events applied per DynamoDB request: pre-aggregated fenced batches versus
//! the naive one-`UpdateItem`-per-event path, on a Spark-shaped daily-counter
//! data set.
//!
//! Needs a DynamoDB endpoint (moto): `AWS_ENDPOINT_URL` plus the usual
//! `AWS_*` credentials and region (`cargo xtask services` prints them;
//! `cargo xtask bench ddb` starts moto and runs this with them).
//!
//! ```text
//! cargo bench -p murmur-state-ddb --bench ddb            # release build
//! cargo test  -p murmur-state-ddb --bench ddb --release   # same, via the test runner
//! cargo test  -p murmur-state-ddb --bench ddb             # debug build (moto dominates anyway)
//! ```
//!
//! Data set (deterministic, seed 2026): 1,000,000 events, 50,000 entities
//! with Zipf(s = 1.0) popularity (a few heavy users, a long tail — what a
//! Spark `groupBy(user)` export looks like), event times uniform over 30
//! days, ordered by day partition (as a Spark job writes `day=.../`
//! partitions) and shuffled within a day. Pipeline: daily event counter
//! (`Count`, `Window::day()` with 400 days retention).
//!
//! * **pre-aggregated**: `Aggregator` (max 50,000 keys) flushed at the end of
//!   each day partition (the snapshot unit) as one fenced batch: intent,
//!   `DynamoDbStore::apply`, commit. Requests counted by the stores' metrics.
//! * **naive**: one unconditional `UpdateItem ADD v :1` per event (no fence,
//!   no aggregation; implemented only here), 16 in flight like the store.
//!
//! The naive path is measured on a sample — the first `MURMUR_BENCH_SAMPLE`
//! events (default 20,000) of the ordered stream, i.e. the start of the first
//! day partition — and its request count for the full data set is
//! extrapolated (it is exactly one request per event). The wall-time ratio is
//! measured on that same sample for both paths. The full data set is then run
//! through the pre-aggregated path for its exact request count and time.
//! `MURMUR_BENCH_EVENTS` overrides the data set size.

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt, stream};
use murmur_core::monoid::Count;
use murmur_core::{
    Aggregator, BatchIntent, CheckpointStore, FlushPolicy, LaneId, Pipeline, Position, Record,
    StateStore, Window, WriteBatch,
};
use murmur_state_ddb::{
    DynamoDbCheckpointStore, DynamoDbStore, Metrics, StoreConfig, ensure_checkpoint_table,
    ensure_state_table,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTITIES: usize = 50_000;
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// 2026-10-01T00:00Z.
const DAY0_MS: i64 = 1_790_812_800_000;
const CONCURRENCY: usize = 16;

/// One event: entity index and event time.
#[derive(Clone, Copy)]
struct Event {
    entity: u32,
    time_ms: i64,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The data set, ordered by day partition, shuffled within a day.
fn dataset(events: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut cumulative = Vec::with_capacity(ENTITIES);
    let mut total = 0.0f64;
    for rank in 1..=ENTITIES {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut out: Vec<Event> = (0..events)
        .map(|_| {
            let x = rng.random::<f64>() * total;
            let entity = cumulative.partition_point(|c| *c < x).min(ENTITIES - 1) as u32;
            let time_ms = DAY0_MS + rng.random_range(0..DAYS * DAY_MS);
            Event { entity, time_ms }
        })
        .collect();
    // Spark writes one partition per day; within it, rows come in no order.
    out.sort_by_key(|e| e.time_ms.div_euclid(DAY_MS));
    out
}

struct Run {
    events: usize,
    requests: u64,
    row_writes: u64,
    checkpoint_requests: u64,
    batches: u64,
    wall: Duration,
}

fn pipeline(prefix: &str) -> Pipeline<Event, Count> {
    let prefix = prefix.to_owned();
    Pipeline::builder("daily-events", Count)
        .key_by(move |e: &Event| format!("{prefix}:user-{}", e.entity))
        .value(|_| ())
        .window(Window::day().with_retention(Duration::from_secs(400 * 86_400)))
        .build()
        .expect("pipeline")
}

async fn pre_aggregated(
    client: &Client,
    state: &str,
    checkpoints: &str,
    events: &[Event],
    prefix: &str,
) -> Run {
    let metrics = Arc::new(Metrics::new());
    let store = DynamoDbStore::new(
        client,
        StoreConfig::new(state).with_max_concurrency(CONCURRENCY),
    )
    .with_metrics(metrics.clone());
    let cp_metrics = Arc::new(Metrics::new());
    let cp = DynamoDbCheckpointStore::new(client, StoreConfig::new(checkpoints))
        .with_metrics(cp_metrics.clone());
    let pipeline = pipeline(prefix);
    let mut agg = Aggregator::new(
        pipeline.clone(),
        FlushPolicy {
            max_keys: 50_000,
            max_age: Duration::from_secs(3600),
        },
    );
    let lane = LaneId::new(format!("{prefix}:slot-0"));
    let now = murmur_core::store::now_ms();
    let started = Instant::now();
    cp.init_lane(&lane, &Position::Offset { offset: 0 })
        .await
        .expect("init lane");
    let (mut seq, mut start, mut batches, mut row_writes) = (0u64, 0usize, 0u64, 0u64);
    for (i, e) in events.iter().enumerate() {
        agg.push(&Record::new(*e, e.time_ms), now).expect("push");
        let end_of_unit = events
            .get(i + 1)
            .is_none_or(|n| n.time_ms.div_euclid(DAY_MS) != e.time_ms.div_euclid(DAY_MS));
        if end_of_unit || agg.should_flush() {
            seq += 1;
            let intent = BatchIntent {
                lane: lane.clone(),
                seq,
                start: Position::Offset {
                    offset: start as i64,
                },
                end: Position::Offset {
                    offset: i as i64 + 1,
                },
                bad_records: 0,
            };
            cp.begin_batch(&intent).await.expect("begin batch");
            let batch = WriteBatch {
                lane: lane.clone(),
                seq,
                rows: agg.take(),
            };
            let report = store.apply(pipeline.monoid(), &batch).await.expect("apply");
            row_writes += report.rows_written;
            cp.commit_batch(&lane, seq).await.expect("commit");
            batches += 1;
            start = i + 1;
        }
    }
    let wall = started.elapsed();
    let (s, c) = (metrics.snapshot(), cp_metrics.snapshot());
    Run {
        events: events.len(),
        requests: s.requests + c.requests,
        row_writes,
        checkpoint_requests: c.requests,
        batches,
        wall,
    }
}

async fn naive(client: &Client, table: &str, events: &[Event], prefix: &str) -> Run {
    let window = Window::day();
    let started = Instant::now();
    let requests = stream::iter(events)
        .map(|e| {
            let bucket = window.bucket_of(e.time_ms).expect("bucket").0;
            client
                .update_item()
                .table_name(table)
                .key(
                    "pk",
                    AttributeValue::S(format!("{prefix}:user-{}", e.entity)),
                )
                .key("sk", AttributeValue::N(bucket.to_string()))
                .update_expression("ADD v :one")
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .send()
        })
        .buffer_unordered(CONCURRENCY)
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await
        .expect("naive UpdateItem");
    Run {
        events: events.len(),
        requests,
        row_writes: requests,
        checkpoint_requests: 0,
        batches: 0,
        wall: started.elapsed(),
    }
}

fn row(name: &str, r: &Run, note: &str) {
    println!(
        "| {name:<34} | {:>9} | {:>9} | {:>10} | {:>7.2} | {:>9.1} | {:>9.0} | {note}",
        r.events,
        r.requests,
        r.row_writes,
        r.events as f64 / r.requests.max(1) as f64,
        r.wall.as_secs_f64(),
        r.events as f64 / r.wall.as_secs_f64().max(1e-9),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        eprintln!(
            "error: the ddb benchmark needs a DynamoDB endpoint: set AWS_ENDPOINT_URL (and AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY, AWS_REGION), or run it as `cargo xtask bench ddb`, which starts moto"
        );
        std::process::exit(2);
    };
    let events = env_usize("MURMUR_BENCH_EVENTS", 1_000_000);
    let sample = env_usize("MURMUR_BENCH_SAMPLE", 20_000).min(events);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = Client::new(&sdk);
    let suffix = format!("{:08x}", rand::random::<u32>());
    let (state, checkpoints) = (
        format!("bench-state-{suffix}"),
        format!("bench-cp-{suffix}"),
    );
    ensure_state_table(&client, &state)
        .await
        .expect("state table");
    ensure_checkpoint_table(&client, &checkpoints)
        .await
        .expect("checkpoint table");

    eprintln!("generating {events} events ...");
    let data = dataset(events);
    let head = &data[..sample];

    eprintln!("naive path on the first {sample} events ...");
    let naive_sample = naive(&client, &state, head, "naive").await;
    eprintln!("pre-aggregated path on the same {sample} events ...");
    let pre_sample = pre_aggregated(&client, &state, &checkpoints, head, "pre-sample").await;
    eprintln!("pre-aggregated path on all {events} events ...");
    let pre_full = pre_aggregated(&client, &state, &checkpoints, &data, "pre-full").await;

    let per_event = naive_sample.wall.as_secs_f64() / sample.max(1) as f64;
    let naive_full = Run {
        events,
        requests: events as u64,
        row_writes: events as u64,
        checkpoint_requests: 0,
        batches: 0,
        wall: Duration::from_secs_f64(per_event * events as f64),
    };

    println!();
    println!(
        "Daily counter, {events} events, {ENTITIES} entities (Zipf s=1.0), {DAYS} days, moto at {endpoint}, {CONCURRENCY} requests in flight"
    );
    println!();
    println!(
        "| {:<34} | {:>9} | {:>9} | {:>10} | {:>7} | {:>9} | {:>9} | note",
        "path", "events", "requests", "row writes", "ev/req", "wall s", "events/s"
    );
    println!("|{}|", "-".repeat(112));
    row(
        "naive, sample (measured)",
        &naive_sample,
        "one UpdateItem per event",
    );
    row(
        "pre-aggregated, sample (measured)",
        &pre_sample,
        &format!(
            "{} batch(es), {} checkpoint requests",
            pre_sample.batches, pre_sample.checkpoint_requests
        ),
    );
    row(
        "pre-aggregated, full (measured)",
        &pre_full,
        &format!(
            "{} batches, {} checkpoint requests",
            pre_full.batches, pre_full.checkpoint_requests
        ),
    );
    row(
        "naive, full (extrapolated)",
        &naive_full,
        "requests exact (1/event), time = sample rate",
    );
    println!();
    println!(
        "events per request: pre-aggregated {:.2} vs naive 1.00 -> {:.2}x fewer requests on the full data set ({} vs {})",
        pre_full.events as f64 / pre_full.requests as f64,
        events as f64 / pre_full.requests as f64,
        pre_full.requests,
        events
    );
    println!(
        "wall time on the same {sample}-event sample: naive {:.2} s vs pre-aggregated {:.2} s -> {:.2}x",
        naive_sample.wall.as_secs_f64(),
        pre_sample.wall.as_secs_f64(),
        naive_sample.wall.as_secs_f64() / pre_sample.wall.as_secs_f64().max(1e-9)
    );
    println!(
        "sample requests: naive {} vs pre-aggregated {} -> {:.2}x",
        naive_sample.requests,
        pre_sample.requests,
        naive_sample.requests as f64 / pre_sample.requests.max(1) as f64
    );
}
