//! Backfill per-entity hourly sums from a JSON Lines export, then go on live
//! from Kinesis exactly where the export ends: the export's
//! `_murmur_handoff.json` names the last sequence number it holds per shard,
//! and live reads `AFTER_SEQUENCE_NUMBER` from there. Nothing is counted
//! twice and nothing is skipped at the seam.
//!
//! ```sh
//! cargo run -p kinesis-handoff -- <export dir | s3://bucket/prefix> <stream> [data-dir] [idle-seconds]
//! ```
//!
//! AWS settings come from the standard environment (`AWS_ENDPOINT_URL` for
//! kinesalite or LocalStack). Live runs until Ctrl-C, or — with
//! `idle-seconds` — until no record arrived for that long.

use anyhow::{Context as _, bail};
use murmur_bootstrap::{BackfillOptions, LiveOptions, backfill, live};
use murmur_core::monoid::Sum;
use murmur_core::{CheckpointStore, CountEvent, EmbeddedStore, Pipeline, StateStore, Window};
use murmur_source_live::{Decoder, KinesisConfig, KinesisSource};
use murmur_source_snapshot::{CountEventLines, JsonLinesSource, ObjectListing};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, stream, rest @ ..] = args.as_slice() else {
        bail!("usage: kinesis-handoff <export> <stream> [data-dir] [idle-seconds]");
    };
    let data_dir = rest.first().map_or("murmur-data", String::as_str);
    let idle = rest
        .get(1)
        .map(|s| s.parse::<u64>().context("idle-seconds is a number"))
        .transpose()?
        .map(Duration::from_secs);

    // One pipeline value for both stages.
    let pipeline = Pipeline::builder("hourly_sums", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .window(Window::hour())
        .build()?;
    std::fs::create_dir_all(data_dir)?;
    let store =
        EmbeddedStore::open(format!("{data_dir}/murmur.redb"))?.with_namespace(pipeline.name());
    let (state, checkpoints): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(store.clone()), Arc::new(store));

    // 1. Backfill; the outcome carries the token from the manifest.
    let export = JsonLinesSource::new(ObjectListing::from_uri(from)?, CountEventLines);
    let outcome = backfill(
        &pipeline,
        &export,
        state.clone(),
        checkpoints.clone(),
        &BackfillOptions::new("hourly_sums-backfill"),
    )
    .await?;
    let token = outcome
        .token()
        .cloned()
        .context("the backfill did not complete")?;
    println!("backfill: {outcome:?}");

    // 2. Live from the token. Restarted, each shard resumes from its own
    // checkpoint instead (newer than the token).
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut source = KinesisSource::connect(
        KinesisConfig::new(stream),
        aws_sdk_kinesis::Client::new(&aws),
        Decoder::count_events(),
    )
    .await?;
    let options = LiveOptions::from_token(token);
    let progress = options.progress.clone();
    let stop = async move {
        match idle {
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
            Some(idle) => progress.idle(idle).await,
        }
    };
    let stats = live(&pipeline, &mut source, state, checkpoints, &options, stop).await?;
    println!(
        "live: {} records, {} batches, {} row writes",
        stats.records, stats.batches, stats.rows
    );
    Ok(())
}
