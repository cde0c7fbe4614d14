//! Bootstrap per-entity hourly sums from an existing DynamoDB table of
//! events (a parallel scan: 4 segments, a read-capacity limit), then go on
//! live from the Kinesis stream that feeds the table — both into DynamoDB.
//!
//! The seam is an event-time cut T: the scan keeps events before T, live
//! starts at the stream position for T minus a skew and drops events before
//! T. No offsets needed, which suits a table written by some other consumer.
//! Pick T a few minutes before now, so that every event before T had reached
//! the table when the scan began.
//!
//! ```sh
//! cargo run -p dynamodb-bootstrap -- <events-table> <stream> [cut-ms] [idle-seconds]
//! ```
//!
//! Items look like `{"event_id": S, "entity_id": S, "count": N,
//! "occurred_at_unix_ms": N}`; the counters go to the tables
//! `<events-table>-murmur` and `<events-table>-murmur-checkpoints` (created
//! if missing: on-demand billing, TTL on).

use anyhow::{Context as _, bail};
use murmur_bootstrap::{BackfillOptions, LiveOptions, backfill, live};
use murmur_core::monoid::Sum;
use murmur_core::{CheckpointStore, CountEvent, HandoffToken, Pipeline, StateStore, Window};
use murmur_source_live::{Decoder, KinesisConfig, KinesisSource};
use murmur_source_snapshot::dynamodb::{DynamoDbScanOptions, DynamoDbScanSource};
use murmur_state_ddb::{
    DynamoDbCheckpointStore, DynamoDbStore, StoreConfig, ensure_checkpoint_table,
    ensure_state_table,
};
use std::sync::Arc;
use std::time::Duration;

const SKEW: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [table, stream, rest @ ..] = args.as_slice() else {
        bail!("usage: dynamodb-bootstrap <events-table> <stream> [cut-ms] [idle-seconds]");
    };
    let cut = match rest.first() {
        Some(ms) => ms.parse::<i64>().context("cut-ms is epoch milliseconds")?,
        None => murmur_core::store::now_ms() - SKEW.as_millis() as i64,
    };
    let idle = rest
        .get(1)
        .map(|s| s.parse::<u64>().context("idle-seconds is a number"))
        .transpose()?
        .map(Duration::from_secs);

    let pipeline = Pipeline::builder("hourly_sums", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .window(Window::hour())
        .build()?;

    // The counters' tables, created if missing.
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let (state_table, checkpoint_table) = (
        format!("{table}-murmur"),
        format!("{table}-murmur-checkpoints"),
    );
    ensure_state_table(&dynamodb, &state_table).await?;
    ensure_checkpoint_table(&dynamodb, &checkpoint_table).await?;
    let state: Arc<dyn StateStore> = Arc::new(DynamoDbStore::new(
        &dynamodb,
        StoreConfig::new(&state_table),
    ));
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(DynamoDbCheckpointStore::new(
        &dynamodb,
        StoreConfig::new(&checkpoint_table),
    ));

    // 1. The parallel scan, with the cut as its token.
    let mut scan = DynamoDbScanOptions::new(table);
    scan.segments = 4;
    scan.read_capacity_per_sec = Some(500.0);
    let source =
        DynamoDbScanSource::new(dynamodb.clone(), scan, |e: &CountEvent| e.occurred_at_ms)?;
    let token = HandoffToken::EventTimeCut { at_ms: cut };
    let options = BackfillOptions {
        token: Some(token),
        ..BackfillOptions::new(format!("{table}-bootstrap"))
    };
    let outcome = backfill(
        &pipeline,
        &source,
        state.clone(),
        checkpoints.clone(),
        &options,
    )
    .await?;
    let token = outcome
        .token()
        .cloned()
        .context("the bootstrap did not complete")?;
    println!("bootstrap: {outcome:?}");

    // 2. Live from the cut.
    let mut live_source = KinesisSource::connect(
        KinesisConfig::new(stream).event_time_cut_skew(SKEW),
        aws_sdk_kinesis::Client::new(&aws),
        Decoder::count_events(),
    )
    .await?;
    let options = LiveOptions::from_token(token);
    let progress = options.progress.clone();
    let stop = async move {
        let Some(idle) = idle else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        progress.idle(idle).await;
    };
    let stats = live(
        &pipeline,
        &mut live_source,
        state,
        checkpoints,
        &options,
        stop,
    )
    .await?;
    println!(
        "live: {} records, {} before the cut dropped, {} batches, {} row writes",
        stats.records, stats.before_cut, stats.batches, stats.rows
    );
    Ok(())
}
