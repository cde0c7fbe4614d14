//! Backfill daily counters from a Spark export — Hive-partitioned Parquet
//! or gzipped JSON Lines, on S3 or in a local directory — into the embedded
//! store, exactly once and resumable (kill it and run it again).
//!
//! ```sh
//! cargo run -p backfill-from-spark -- parquet murmur-demo/export/events
//! cargo run -p backfill-from-spark -- jsonl s3://my-exports/page_views
//! ```
//!
//! See README.md for the schema the Spark job writes and the handoff
//! manifest beside the data.

use anyhow::bail;
use murmur_bootstrap::{BackfillOptions, BackfillOutcome, backfill};
use murmur_core::monoid::Sum;
use murmur_core::{CheckpointStore, CountEvent, EmbeddedStore, Pipeline, StateStore, Window};
use murmur_source_snapshot::{
    CountEventColumns, CountEventLines, JsonLinesSource, ObjectListing, ParquetSource,
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, from, rest @ ..] = args.as_slice() else {
        bail!(
            "usage: backfill-from-spark parquet|jsonl <s3://bucket/prefix | directory> [data-dir]"
        );
    };
    let data_dir = rest.first().map_or("murmur-data", String::as_str);

    // The pipeline: per entity, the sum of `count` per UTC day.
    let pipeline = Pipeline::builder("daily_counts", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .window(Window::day())
        .build()?;

    // State and checkpoints in one embedded file; DynamoDB is the same two
    // trait objects (`murmur_state_ddb::DynamoDbStore` and
    // `DynamoDbCheckpointStore`).
    std::fs::create_dir_all(data_dir)?;
    let store =
        EmbeddedStore::open(format!("{data_dir}/murmur.redb"))?.with_namespace("daily_counts");
    let (state, checkpoints): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(store.clone()), Arc::new(store));

    // Objects under the prefix, `_SUCCESS` and other markers skipped, Hive
    // `k=v` partitions parsed; the token comes from `_murmur_handoff.json`.
    let listing = ObjectListing::from_uri(from)?;
    let options = BackfillOptions::new("daily_counts-backfill");
    let outcome = match format.as_str() {
        "parquet" => {
            let source = ParquetSource::new(listing, CountEventColumns);
            backfill(&pipeline, &source, state, checkpoints, &options).await?
        }
        "jsonl" => {
            let source = JsonLinesSource::new(listing, CountEventLines);
            backfill(&pipeline, &source, state, checkpoints, &options).await?
        }
        other => bail!("unknown format {other:?}: parquet or jsonl"),
    };
    match outcome {
        BackfillOutcome::Completed { token, stats } => println!(
            "backfill completed: {} records, {} batches, {} row writes; live starts from {}",
            stats.records,
            stats.batches,
            stats.rows,
            token.to_json()
        ),
        BackfillOutcome::AlreadyCompleted { token } => println!(
            "backfill already completed (not re-run); live starts from {}",
            token.to_json()
        ),
        other => println!("backfill not finished: {other:?}"),
    }
    println!(
        "query it: cargo run -p murmur-worker -- window --data-dir {data_dir} --pipeline daily_counts \
         --aggregate sum --window day --last 7 --now <ms> --entity <entity_id>"
    );
    Ok(())
}
