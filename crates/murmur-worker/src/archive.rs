//! `murmur-worker archive` and `murmur-worker export-dynamodb`: the
//! library's [`Archive`] and [`export_dynamodb`] with the sources, stores
//! and object locations of the flags.

use crate::cli::{ArchiveArgs, CompressionKind, ExportArgs, ExportFormatKind, ProgressMode};
use crate::observe::Display;
use crate::run::{
    Stops, connect_live, live_tick, shutdown, start_of, token_flag, warn_dead_letters,
};
use crate::stores::{self, Backend};
use anyhow::Context as _;
use murmur_archive::{
    Archive, ArchiveOptions, Compression, Encoder, ExportFormat, ExportOptions, export_dynamodb,
};
use murmur_bootstrap::{LiveOptions, Progress};
use murmur_core::{CountEvent, HandoffToken};
use murmur_source_live::Start;
use murmur_source_snapshot::ObjectListing;
use murmur_source_snapshot::dynamodb::DynamoDbScanOptions;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What an archive run did (printed as JSON when it stops).
#[derive(Debug, Serialize)]
pub struct ArchiveSummary {
    /// Records archived.
    pub records: u64,
    /// Batches committed.
    pub batches: u64,
    /// Parquet objects written (or found already written).
    pub objects: u64,
    /// Of those, objects a pending batch of an earlier run had written.
    pub objects_existing: u64,
    /// Bytes of the objects.
    pub bytes: u64,
    /// Undecodable messages sent to the dead-letter topic or stream (or
    /// skipped, with `--skip-bad-messages`).
    pub dead_letters: u64,
}

/// `s3://bucket/prefix` or a local directory (created if missing).
fn location(uri: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, Path)> {
    if !uri.contains("://") {
        std::fs::create_dir_all(uri).with_context(|| format!("cannot create directory {uri}"))?;
    }
    let listing = ObjectListing::from_uri(uri)?;
    Ok((listing.store().clone(), listing.prefix().clone()))
}

/// Runs the archive until stopped.
pub async fn archive(
    args: &ArchiveArgs,
    progress_mode: ProgressMode,
    stop: CancellationToken,
) -> anyhow::Result<ArchiveSummary> {
    let backend = Backend::connect(&args.store).await?;
    let stores = backend.open(&args.name, 0).await?;
    tracing::info!(checkpoints = %stores.description, "archive checkpoints");
    let (store, prefix) = location(&args.to)?;
    let mut options = ArchiveOptions::default();
    options.limits.max_records = args.max_records;
    options.limits.max_bytes = args.max_bytes;
    options.limits.max_age = args.max_age;
    options.compression = match args.compression {
        CompressionKind::Snappy => Compression::Snappy,
        CompressionKind::Zstd => Compression::Zstd(args.zstd_level),
        CompressionKind::None => Compression::Uncompressed,
    };
    options.row_group_rows = args.row_group_rows;
    options.concurrent_objects = args.concurrent_objects;
    let archive = Archive::new(
        store,
        prefix.clone(),
        stores.checkpoints.clone(),
        Encoder::count_events(),
        options,
    )?;
    let start = match token_flag(args.token.as_deref(), "--token")? {
        Some(token) => Start::Token(token),
        None => start_of(args.source.start),
    };
    let progress = Arc::new(Progress::new());
    let mut live = LiveOptions::from_token(HandoffToken::None);
    live.start = start;
    live.tick = live_tick(args.max_age);
    live.progress = progress.clone();
    let until = token_flag(args.until.as_deref(), "--until")?;
    let stops = Stops {
        idle: args.stop_after_idle,
        caught_up: None,
        watch: None,
    };
    let shutdown = shutdown(
        stop,
        stores.checkpoints.clone(),
        until,
        stops,
        progress.clone(),
    );
    let mut source = connect_live(&args.source, str::to_owned).await?;
    tracing::info!(to = %args.to, source = %murmur_source_live::LiveSource::name(&source), "archiving");
    let display = Display::start(progress_mode, "archive", progress);
    let stats = archive.run(&mut source, &live, shutdown).await;
    display.finish().await;
    let stats = stats?;
    let m = archive.metrics();
    let dead_letters = warn_dead_letters(&*source);
    Ok(ArchiveSummary {
        records: stats.records,
        batches: m.batches,
        objects: m.objects,
        objects_existing: m.objects_existing,
        bytes: m.bytes,
        dead_letters,
    })
}

/// Exports the table; returns the manifest.
pub async fn export(args: &ExportArgs) -> anyhow::Result<murmur_archive::ExportManifest> {
    let sdk = stores::aws().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let streams = (!args.no_stream_capture).then_some(&streams);
    let (store, prefix) = location(&args.to)?;
    let mut scan = DynamoDbScanOptions::new(&args.table);
    scan.segments = args.segments;
    scan.page_size = args.page_size;
    scan.read_capacity_per_sec = args.rcu;
    let manifest = match args.format {
        ExportFormatKind::Jsonl => {
            let mut options = ExportOptions::new(scan, ExportFormat::JsonLinesGzip);
            options.max_items_per_file = args.max_items_per_file;
            export_dynamodb::<serde_json::Value>(client, streams, store, &prefix, options).await?
        }
        ExportFormatKind::Parquet => {
            let mut options =
                ExportOptions::new(scan, ExportFormat::Parquet(Encoder::count_events()));
            options.max_items_per_file = args.max_items_per_file;
            export_dynamodb::<CountEvent>(client, streams, store, &prefix, options).await?
        }
    };
    Ok(manifest)
}
