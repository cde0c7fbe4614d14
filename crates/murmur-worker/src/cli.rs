//! Command line and config file.
//!
//! Every option is a flag; `--config FILE` reads a TOML file whose keys are
//! the long flag names of the same subcommand (`kafka-brokers = "..."`,
//! `lanes = 8`, `dedup = true`, a list for a repeatable flag). The file's
//! settings are inserted before the command line's, so a flag given on the
//! command line wins.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The reference Murmur worker: exact, windowed counters and sketches —
/// backfill from history, hand off through a token, go on live.
#[derive(Debug, Parser)]
#[command(name = "murmur-worker", version, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Backfill (unless none is configured or it already completed), then
    /// run live from the handoff token until stopped (SIGINT/SIGTERM: the
    /// open batches are flushed and checkpointed, exit status 0).
    Run(Box<RunArgs>),
    /// Self-contained demo on the embedded store, no services needed:
    /// generates a Spark-shaped Parquet export and a Kafka topic (an
    /// in-process broker), backfills, hands off, runs live and checks the
    /// stored windows against an independent count. Run it again: the
    /// backfill is not redone.
    Demo(DemoArgs),
    /// The value of one bucket (or the all-time value of an unwindowed
    /// pipeline) per entity.
    Get(GetArgs),
    /// The fold of the last N buckets per entity.
    Window(WindowArgs),
    /// The fold of the buckets overlapping an inclusive time range per
    /// entity.
    Range(RangeArgs),
    /// Serve the queries over HTTP (the endpoint `run --listen` also
    /// serves), with `/healthz` and `/metrics`, until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Rebuild the pipeline's state as a new version beside the active one
    /// while the live worker keeps writing: backfill into version N
    /// (`--to-version`; tables / namespace suffixed `_vN`), catch up live
    /// from the backfill's token (to `--until`, or until the lag is small),
    /// then atomically swap the pipeline's alias to N. Readers follow within
    /// a second; a `run` worker finishes its open batches and goes on in
    /// version N. Takes the flags of `run`; run it again to resume.
    Replay(Box<ReplayArgs>),
    /// Archive a live stream (Kafka or Kinesis) as Hive-partitioned Parquet
    /// (`year=/month=/day=/hour=` of the event time) under `--to`: batches
    /// cut by records, bytes or age, each message acknowledged only once
    /// the objects holding it are written, and in exactly one object even
    /// across crashes (create-only keys from the batch's offsets; restart
    /// to resume). The files are what `run --backfill parquet` reads.
    /// Runs until SIGINT/SIGTERM, `--until` or `--stop-after-idle`.
    Archive(Box<ArchiveArgs>),
    /// Export a DynamoDB table to `--to` as gzipped JSON Lines or Parquet:
    /// a parallel scan (segments, a read-capacity limit), then
    /// `_manifest.json` (item count, segments, times, and the DynamoDB
    /// Streams position captured before the scan) and `_SUCCESS`.
    ExportDynamodb(ExportArgs),
}

/// `murmur-worker archive`.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Read settings from this TOML file (keys = long flag names); flags
    /// on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the archive's lane checkpoints are kept.
    #[command(flatten, next_help_heading = "Checkpoints")]
    pub store: StoreArgs,
    /// The archive's name: its embedded namespace, or its DynamoDB
    /// checkpoint table `murmur-<name>-checkpoints`.
    #[arg(long, default_value = "archive", help_heading = "Checkpoints")]
    pub name: String,
    /// The live source.
    #[command(flatten)]
    pub source: LiveArgs,
    /// Where lanes without a checkpoint start, as a handoff token (JSON);
    /// else `--start`.
    #[arg(long, value_name = "JSON", help_heading = "Live")]
    pub token: Option<String>,
    /// Stop (exit 0) once every lane named in this Kafka or Kinesis token
    /// has committed at or past its position.
    #[arg(long, value_name = "JSON", help_heading = "Live")]
    pub until: Option<String>,
    /// Stop (exit 0) once no record arrived for this long.
    #[arg(long, value_parser = parse_duration, help_heading = "Live")]
    pub stop_after_idle: Option<Duration>,
    /// The archive's location: `s3://bucket/prefix` or a local directory.
    #[arg(long, value_name = "URI", help_heading = "Archive")]
    pub to: String,
    /// A lane's batch is written once it holds this many records...
    #[arg(long, default_value_t = 1_000_000, help_heading = "Archive")]
    pub max_records: usize,
    /// ...or this many bytes (`64MiB`, `512KiB`, plain bytes)...
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB", help_heading = "Archive")]
    pub max_bytes: usize,
    /// ...or is this old.
    #[arg(long, value_parser = parse_duration, default_value = "60s", help_heading = "Archive")]
    pub max_age: Duration,
    /// Parquet compression.
    #[arg(long, value_enum, default_value_t = CompressionKind::Snappy, help_heading = "Archive")]
    pub compression: CompressionKind,
    /// zstd level (with `--compression zstd`).
    #[arg(long, default_value_t = 3, help_heading = "Archive")]
    pub zstd_level: i32,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 65_536, help_heading = "Archive")]
    pub row_group_rows: usize,
    /// Objects written at once (flush workers).
    #[arg(long, default_value_t = 4, help_heading = "Archive")]
    pub concurrent_objects: usize,
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionKind {
    /// Snappy (as Spark writes).
    Snappy,
    /// Zstandard (`--zstd-level`).
    Zstd,
    /// None.
    None,
}

/// `murmur-worker export-dynamodb`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Read settings from this TOML file (keys = long flag names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The table to export.
    #[arg(long)]
    pub table: String,
    /// Where the files go: `s3://bucket/prefix` or a local directory (must
    /// be empty).
    #[arg(long, value_name = "URI")]
    pub to: String,
    /// `jsonl`: every item as one plain JSON object per line, gzipped;
    /// `parquet`: items as CountEvent columns (`entity_id`, `count`,
    /// `occurred_at_unix_ms`, `event_id`).
    #[arg(long, value_enum, default_value_t = ExportFormatKind::Jsonl)]
    pub format: ExportFormatKind,
    /// Parallel scan segments.
    #[arg(long, default_value_t = 4)]
    pub segments: u32,
    /// Items per scan page.
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Consumed read capacity units per second, at most (all segments).
    #[arg(long)]
    pub rcu: Option<f64>,
    /// A segment's items are split into files of at most this many.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_items_per_file: u64,
    /// Do not capture the table's DynamoDB Streams position before the
    /// scan (by default it is, when the table has a stream).
    #[arg(long)]
    pub no_stream_capture: bool,
}

/// `--format` values of `export-dynamodb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatKind {
    /// Gzipped JSON Lines.
    Jsonl,
    /// Parquet (Snappy), CountEvent columns.
    Parquet,
}

/// `murmur-worker replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The version to build: newer than the active one (the unversioned
    /// state is version 0).
    #[arg(long = "to-version", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub version: u64,
    /// Without `--until`, catch-up ends once every live lane's event-time
    /// lag is at most this (or no record arrived for `--stop-after-idle`,
    /// default 10s).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub catch_up_lag: Duration,
    /// Everything `run` takes.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Logging options (any subcommand).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log as JSON lines on stderr (for log shippers) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter in `tracing` syntax, e.g. `info`, `murmur_bootstrap=debug`.
    #[arg(long, global = true, env = "MURMUR_LOG", default_value = "info")]
    pub log: String,
    /// Progress bar on stderr: `auto` draws it when stderr is a terminal
    /// (otherwise a progress log line every 10 s).
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// When to draw the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never; log lines instead.
    Never,
}

/// Where the state lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// State, checkpoint and dedup store.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// Embedded store: the directory of its database file
    /// (`<data-dir>/murmur.redb`; one namespace per pipeline).
    #[arg(long, default_value = "murmur-data")]
    pub data_dir: PathBuf,
    /// DynamoDB: the state table [default: murmur-<pipeline>].
    #[arg(long)]
    pub table: Option<String>,
    /// DynamoDB: the checkpoint table [default: murmur-<pipeline>-checkpoints].
    #[arg(long)]
    pub checkpoint_table: Option<String>,
    /// DynamoDB: the dedup claim table [default: murmur-<pipeline>-dedup].
    #[arg(long)]
    pub dedup_table: Option<String>,
    /// DynamoDB: the table of the alias items saying which version of each
    /// pipeline's state is active (one for every pipeline).
    #[arg(long, default_value = "murmur-aliases")]
    pub alias_table: String,
    /// DynamoDB: create missing tables (on-demand billing, TTL on), and
    /// check the key schema of existing ones.
    #[arg(long)]
    pub create_tables: bool,
    /// DynamoDB: row writes in flight at once.
    #[arg(long, default_value_t = 16)]
    pub store_concurrency: usize,
}

/// The state store kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A local redb file (no cloud).
    Embedded,
    /// DynamoDB (`AWS_*` environment and credential chain; `AWS_ENDPOINT_URL`
    /// for LocalStack or moto).
    Dynamodb,
}

/// The reference pipeline over `CountEvent`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Pipeline name (names the embedded namespace, default tables and run).
    #[arg(long, default_value = "events")]
    pub pipeline: String,
    /// What is kept per bucket: `sum` of `count` per entity, `count` of
    /// events per entity, or over all entities (key `*`): `distinct`
    /// entities (HyperLogLog), `top` entities by events (Top-K), `seen`
    /// entities (Bloom filter).
    #[arg(long, value_enum, default_value_t = Aggregate::Sum)]
    pub aggregate: Aggregate,
    /// Bucket granularity; `none` keeps one all-time value per key.
    #[arg(long, value_enum, default_value_t = WindowKind::Hour)]
    pub window: WindowKind,
    /// Keep buckets this many days after their end (DynamoDB TTL); events
    /// of buckets already past it are dropped and counted.
    #[arg(long)]
    pub retention_days: Option<u64>,
    /// `distinct`: HyperLogLog precision (4..=18; error ≈ 1.04/√2^p).
    #[arg(long, default_value_t = 14)]
    pub hll_precision: u8,
    /// `top`: items reported.
    #[arg(long, default_value_t = 10)]
    pub top_k: u32,
    /// `top`: items tracked (exact while distinct items stay within it).
    #[arg(long, default_value_t = 1024)]
    pub top_capacity: u32,
    /// `seen`: expected distinct items per bucket.
    #[arg(long, default_value_t = 100_000)]
    pub bloom_items: u64,
    /// `seen`: false-positive rate at `bloom-items`.
    #[arg(long, default_value_t = 0.01)]
    pub bloom_fpr: f64,
}

/// `--aggregate` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Aggregate {
    /// Sum of `count` per entity.
    Sum,
    /// Number of events per entity.
    Count,
    /// Distinct entities (HyperLogLog), key `*`.
    Distinct,
    /// Most frequent entities (Top-K), key `*`.
    Top,
    /// Entities seen (Bloom filter), key `*`.
    Seen,
}

/// `--window` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WindowKind {
    /// No window: one all-time value per key.
    None,
    /// Minute buckets.
    Minute,
    /// Hour buckets.
    Hour,
    /// Day buckets.
    Day,
}

/// `murmur-worker run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Read settings from this TOML file (keys = long flag names); flags
    /// on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store.
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreArgs,
    /// Pipeline.
    #[command(flatten, next_help_heading = "Pipeline")]
    pub pipeline: PipelineArgs,

    /// Backfill source format (`none`: live only).
    #[arg(long, value_enum, default_value_t = BackfillKind::None, help_heading = "Backfill")]
    pub backfill: BackfillKind,
    /// Parquet / JSON Lines: where the export is — `s3://bucket/prefix` or a
    /// local directory. Hive `k=v` directories are parsed; `_SUCCESS`,
    /// `_committed_*`, `.crc` and hidden files are skipped; a
    /// `_murmur_handoff.json` manifest beside the data gives the token.
    #[arg(long, value_name = "URI", help_heading = "Backfill")]
    pub from: Option<String>,
    /// DynamoDB scan: the table to scan (items decode as CountEvent:
    /// `entity_id`, `count`, `occurred_at` or `occurred_at_unix_ms`).
    #[arg(long, help_heading = "Backfill")]
    pub scan_table: Option<String>,
    /// DynamoDB scan: parallel segments.
    #[arg(long, default_value_t = 4, help_heading = "Backfill")]
    pub scan_segments: u32,
    /// DynamoDB scan: items per page.
    #[arg(long, help_heading = "Backfill")]
    pub scan_page_size: Option<i32>,
    /// DynamoDB scan: consumed read capacity units per second, at most.
    #[arg(long, help_heading = "Backfill")]
    pub scan_rcu: Option<f64>,
    /// The backfill run id [default: <pipeline>-backfill]. A completed run
    /// is never run again; an interrupted one resumes.
    #[arg(long, help_heading = "Backfill")]
    pub run_id: Option<String>,
    /// Lanes the export is spread over (fixed for the life of a run).
    #[arg(long, default_value_t = 4, help_heading = "Backfill")]
    pub lanes: u32,
    /// This process's index among `worker-count` processes sharing the run.
    #[arg(long, default_value_t = 0, help_heading = "Backfill")]
    pub worker_index: u32,
    /// Processes sharing the backfill.
    #[arg(long, default_value_t = 1, help_heading = "Backfill")]
    pub worker_count: u32,
    /// Lanes of this process read at once.
    #[arg(long, default_value_t = 4, help_heading = "Backfill")]
    pub concurrency: usize,
    /// Rows (Parquet) or lines (JSON Lines) per chunk: the unit a crash
    /// replays. Fixed for the life of a run (a resume with another value is
    /// refused as a changed plan).
    #[arg(long, default_value_t = 8192, help_heading = "Backfill")]
    pub chunk_rows: u64,
    /// Undecodable rows tolerated before the backfill fails, over the
    /// whole run: rows a crashed or stopped run already committed count
    /// toward it on resume.
    #[arg(long, default_value_t = 0, help_heading = "Backfill")]
    pub max_bad_records: u64,
    /// Bad rows are also written as JSON Lines here (`s3://bucket/prefix`
    /// or a directory, as `--from`), naming object, line/row and reason:
    /// one object per chunk with bad rows,
    /// `LOCATION/<run-id>/<object>/lines-<first>.jsonl` (`rows-` for
    /// Parquet, `page-` for a table scan), written before the
    /// chunk can be committed (a crash loses none, a resume writes none
    /// twice). Inside the export it is left out of the input.
    #[arg(long, value_name = "LOCATION", help_heading = "Backfill")]
    pub dead_letter: Option<String>,
    /// The handoff token as JSON, e.g.
    /// `{"kind":"kafka","topic":"events","offsets":{"0":42}}` or
    /// `{"kind":"event_time_cut","at_ms":1778198400000}`; overrides the
    /// manifest. Without a backfill: where live starts.
    #[arg(long, value_name = "JSON", help_heading = "Handoff")]
    pub token: Option<String>,
    /// Per-event dedup by `event_id` (for overlapping sources, e.g. two
    /// exports of the same history).
    #[arg(long, help_heading = "Handoff")]
    pub dedup: bool,
    /// How long dedup claims are kept.
    #[arg(long, value_parser = parse_duration, default_value = "30d", help_heading = "Handoff")]
    pub dedup_ttl: Duration,

    /// Live source.
    #[command(flatten)]
    pub source: LiveArgs,
    /// A batch is flushed when it holds this many distinct rows... [default:
    /// 100000 live, 250000 in the backfill, whose larger batches fold more
    /// events into each row write; given, it applies to both]
    #[arg(long, help_heading = "Batching")]
    pub flush_max_keys: Option<usize>,
    /// ...or is this old (the latency bound of a live update). [default: 5s
    /// live, 30s in the backfill; given, it applies to both]
    #[arg(long, value_parser = parse_duration, help_heading = "Batching")]
    pub flush_max_age: Option<Duration>,
    /// Stop (exit 0) once every lane named in this token has committed at
    /// or past its position — a bounded live run, e.g.
    /// `{"kind":"kafka","topic":"events","offsets":{"0":1000,"1":1000}}`.
    #[arg(long, value_name = "JSON", help_heading = "Live")]
    pub until: Option<String>,
    /// Stop (exit 0) once no record arrived for this long.
    #[arg(long, value_parser = parse_duration, help_heading = "Live")]
    pub stop_after_idle: Option<Duration>,
    /// Serve queries, `/healthz` and `/metrics` over HTTP on this address
    /// while running (e.g. `127.0.0.1:8080`; port 0 picks a free one, logged).
    #[arg(long, value_name = "ADDR", help_heading = "Queries")]
    pub listen: Option<std::net::SocketAddr>,
}

/// The live source (`run`, `replay`, `archive`).
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Live source (`none`: `run` stops after the backfill; `archive` needs
    /// one).
    #[arg(long, value_enum, default_value_t = LiveKind::None, help_heading = "Live")]
    pub live: LiveKind,
    /// Where live starts when there is no backfill and no `--token`
    /// (lanes with a checkpoint always resume from it).
    #[arg(long, value_enum, default_value_t = StartKind::Earliest, help_heading = "Live")]
    pub start: StartKind,
    /// Kafka bootstrap servers.
    #[arg(long, help_heading = "Live")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, help_heading = "Live")]
    pub kafka_topic: Option<String>,
    /// Kafka consumer group: partitions are shared with other workers of
    /// the group. Without it every partition is assigned to this worker.
    #[arg(long, help_heading = "Live")]
    pub kafka_group: Option<String>,
    /// Kafka: undecodable messages go to this topic (with source topic,
    /// partition, offset and error headers). Without it, and without
    /// `--skip-bad-messages`, the first one stops the worker, naming it.
    #[arg(long, help_heading = "Live")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Without a dead-letter topic or stream, log undecodable live messages
    /// (with partition and offset, or shard and sequence number) and count
    /// them, instead of stopping at the first one.
    #[arg(
        long,
        help_heading = "Live",
        conflicts_with_all = ["kafka_dead_letter_topic", "kinesis_dead_letter_stream"]
    )]
    pub skip_bad_messages: bool,
    /// Kafka: extra librdkafka properties, `key=value` (repeatable).
    #[arg(
        long = "kafka-property",
        value_name = "KEY=VALUE",
        help_heading = "Live"
    )]
    pub kafka_properties: Vec<String>,
    /// Kinesis stream.
    #[arg(long, help_heading = "Live")]
    pub kinesis_stream: Option<String>,
    /// Kinesis: share shards with other workers through leases in this
    /// DynamoDB table (created if missing).
    #[arg(long, help_heading = "Live")]
    pub kinesis_lease_table: Option<String>,
    /// Kinesis and DynamoDB Streams: undecodable records go to this Kinesis
    /// stream (a JSON envelope naming the stream or table, shard, sequence
    /// number and error, with the payload). Without it, and without
    /// `--skip-bad-messages`, the first one stops the worker, naming it.
    #[arg(long, help_heading = "Live")]
    pub kinesis_dead_letter_stream: Option<String>,
    /// DynamoDB Streams: the table whose stream is read (new images decode
    /// as CountEvent). After `--backfill dynamodb` of the same table, the
    /// stream position is captured before the scan: also pass `--dedup`, as
    /// changes the scan saw come round again.
    #[arg(long, help_heading = "Live")]
    pub streams_table: Option<String>,
    /// Event-time-cut handoff: live starts at the broker position for
    /// the cut minus this (late events), dropping events before the cut.
    #[arg(long, value_parser = parse_duration, default_value = "5m", help_heading = "Live")]
    pub cut_skew: Duration,
}

/// `--backfill` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackfillKind {
    /// No backfill.
    None,
    /// Parquet objects (`entity_id`, `count`, `occurred_at_unix_ms`).
    Parquet,
    /// JSON Lines objects, plain, gzip or zstd.
    Jsonl,
    /// A DynamoDB table, parallel scan.
    Dynamodb,
}

/// `--live` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LiveKind {
    /// No live stage.
    None,
    /// Kafka.
    Kafka,
    /// Kinesis.
    Kinesis,
    /// A DynamoDB table's stream (`--streams-table`).
    DynamodbStreams,
}

/// `--start` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartKind {
    /// The oldest retained record.
    Earliest,
    /// Records written from now on.
    Latest,
}

/// `murmur-worker demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its generated export and its embedded store.
    #[arg(long, default_value = "murmur-demo")]
    pub data_dir: PathBuf,
    /// Events in the historical export.
    #[arg(long, default_value_t = 200_000)]
    pub history_events: u64,
    /// New events produced to the topic by each run of the demo.
    #[arg(long, default_value_t = 20_000)]
    pub live_events: u64,
}

/// Options every query takes.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Read settings from this TOML file (keys = long flag names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store.
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreArgs,
    /// Pipeline (must match the one that wrote).
    #[command(flatten, next_help_heading = "Pipeline")]
    pub pipeline: PipelineArgs,
    /// Entity to read (repeatable; one batched read). For `distinct`,
    /// `top` and `seen` the entity is `*`.
    #[arg(long = "entity", required = true)]
    pub entities: Vec<String>,
    /// `seen`: the item to test for membership.
    #[arg(long)]
    pub contains: Option<String>,
}

/// `murmur-worker serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys = long flag names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store.
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreArgs,
    /// Pipeline (must match the one that wrote).
    #[command(flatten, next_help_heading = "Pipeline")]
    pub pipeline: PipelineArgs,
    /// The address to listen on (port 0 picks a free one, logged).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

/// `murmur-worker get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Common query options.
    #[command(flatten)]
    pub query: QueryArgs,
    /// A time inside the bucket (RFC 3339 or epoch milliseconds); not for
    /// `--window none`.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<i64>,
}

/// `murmur-worker window`.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Common query options.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Number of buckets, including the one holding `--now`.
    #[arg(long)]
    pub last: usize,
    /// The window's end (RFC 3339 or epoch milliseconds) [default: now].
    #[arg(long, value_parser = parse_time)]
    pub now: Option<i64>,
}

/// `murmur-worker range`.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Common query options.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Range start, inclusive (RFC 3339 or epoch milliseconds).
    #[arg(long, value_parser = parse_time)]
    pub from: i64,
    /// Range end, inclusive (RFC 3339 or epoch milliseconds).
    #[arg(long, value_parser = parse_time)]
    pub to: i64,
}

/// `5s`, `250ms`, `10m`, `2h`, `30d`, or plain milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 5s, 250ms, 10m, 2h, 30d"))?;
    let ms = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// `64MiB`, `512KiB`, `1GiB`, `10MB` or plain bytes. (Four units: not worth
/// a crate.)
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 64MiB, 512KiB, 1000"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size {s:?} must be positive and fit in memory"))
}

/// RFC 3339 (`2026-05-08T14:00:00Z`) or epoch milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("invalid time {s:?} (RFC 3339 or epoch milliseconds): {e}"))
}

/// Splices the settings of `--config FILE` into the arguments, right after
/// the subcommand, so the command line's own flags (later) override them.
pub fn expand_config(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let pos = args
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let Some(pos) = pos else {
        return Ok(args);
    };
    let path = match args[pos].to_string_lossy().strip_prefix("--config=") {
        Some(p) => PathBuf::from(p),
        None => match args.get(pos + 1) {
            Some(p) => PathBuf::from(p),
            None => bail!("--config needs a file"),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    // The subcommand is the first argument that is neither a global flag
    // nor a global flag's value (`--log debug run`).
    let takes_value = |flag: &str| {
        command
            .get_arguments()
            .any(|a| a.get_long() == Some(flag) && a.get_action().takes_values())
    };
    let mut at = 1;
    while let Some(a) = args.get(at).map(|a| a.to_string_lossy()) {
        match a.strip_prefix("--") {
            Some(flag) if !flag.contains('=') && takes_value(flag) => at += 2,
            Some(_) => at += 1,
            None => break,
        }
    }
    // `sub` is the index after the subcommand.
    let sub = at + 1;
    let sub_name = args
        .get(at)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if command.find_subcommand(&sub_name).is_none() {
        bail!(
            "--config: no subcommand before it (found {sub_name:?}); write e.g. `murmur-worker run --config {}`",
            path.display()
        );
    }
    let known: Vec<String> = command
        .find_subcommand(&sub_name)
        .map(|c| {
            c.get_arguments()
                .chain(command.get_arguments())
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // A flag given on the command line replaces the file's setting outright
    // (for a repeatable flag, the whole list).
    let on_command_line: Vec<String> = args
        .iter()
        .skip(sub)
        .filter_map(|a| {
            let a = a.to_string_lossy();
            let name = a.strip_prefix("--")?;
            Some(name.split('=').next().unwrap_or(name).to_owned())
        })
        .collect();
    let mut settings = Vec::new();
    for (key, value) in table {
        if on_command_line.contains(&key) {
            continue;
        }
        if !known.contains(&key) {
            if sub_name == "run" || sub_name == "replay" {
                bail!(
                    "config file {}: unknown setting `{key}` (keys are the long flags of `murmur-worker run`, see --help)",
                    path.display()
                );
            }
            // A config shared with `run`: queries take only what they know.
            continue;
        }
        let flag = format!("--{key}");
        let mut push = |v: &toml::Value| -> anyhow::Result<()> {
            match v {
                toml::Value::Boolean(true) => settings.push(OsString::from(&flag)),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => {
                    settings.push(OsString::from(&flag));
                    settings.push(OsString::from(s));
                }
                toml::Value::Integer(n) => {
                    settings.push(OsString::from(&flag));
                    settings.push(OsString::from(n.to_string()));
                }
                toml::Value::Float(x) => {
                    settings.push(OsString::from(&flag));
                    settings.push(OsString::from(x.to_string()));
                }
                other => bail!(
                    "config file {}: `{key}` must be a string, number, boolean or list of them, not {}",
                    path.display(),
                    other.type_str()
                ),
            }
            Ok(())
        };
        match &value {
            toml::Value::Array(items) => items.iter().try_for_each(&mut push)?,
            v => push(v)?,
        }
    }
    let mut out = args;
    let tail = out.split_off(sub.min(out.len()));
    out.extend(settings);
    out.extend(tail);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(parse_bytes("0").is_err());
        assert!(
            parse_bytes("5 parsecs")
                .unwrap_err()
                .contains("invalid size unit")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("2026-05-08T00:00:00Z"), Ok(1_778_198_400_000));
        assert_eq!(parse_time("1778198400000"), Ok(1_778_198_400_000));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn config_file_settings_come_before_command_line_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "lanes = 8\ndedup = true\nkafka-property = [\"a=1\", \"b=2\"]\nfrom = \"s3://b/p\"\nkafka-topic = \"t\"\n",
        )
        .unwrap();
        let args: Vec<OsString> = ["murmur-worker", "--json", "run", "--config"]
            .into_iter()
            .map(OsString::from)
            .chain([
                file.clone().into_os_string(),
                "--lanes".into(),
                "2".into(),
                "--kafka-topic=u".into(),
            ])
            .collect();
        let cli = Cli::parse_from(expand_config(args).unwrap());
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.lanes, 2, "the command line wins");
        assert_eq!(run.source.kafka_topic.as_deref(), Some("u"));
        assert!(run.dedup);
        assert_eq!(run.source.kafka_properties, ["a=1", "b=2"]);
        assert_eq!(run.from.as_deref(), Some("s3://b/p"));
        assert!(cli.log.json);

        std::fs::write(&file, "lanes = { x = 1 }\n").unwrap();
        let err = expand_config(vec![
            "murmur-worker".into(),
            "run".into(),
            "--config".into(),
            file.clone().into_os_string(),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("`lanes` must be a string"),
            "{err}"
        );

        std::fs::write(&file, "lanez = 3\n").unwrap();
        let args = |sub: &str| -> Vec<OsString> {
            ["murmur-worker", sub, "--entity", "a", "--config"]
                .into_iter()
                .map(OsString::from)
                .chain([file.clone().into_os_string()])
                .collect()
        };
        let err = expand_config(args("run")).unwrap_err();
        assert!(err.to_string().contains("unknown setting `lanez`"), "{err}");
        // Queries share the run's config file and skip what they do not take.
        assert_eq!(expand_config(args("get")).unwrap().len(), 6);

        // A global flag's value is not taken for the subcommand.
        std::fs::write(&file, "lanes = 8\nfrom = \"s3://b/p\"\n").unwrap();
        let args = |before: &[&str]| -> Vec<OsString> {
            std::iter::once("murmur-worker")
                .chain(before.iter().copied())
                .chain(["run", "--config"])
                .map(OsString::from)
                .chain([file.clone().into_os_string()])
                .collect()
        };
        for before in [
            &["--log", "debug"][..],
            &["--log=debug", "--json"],
            &["--progress", "never"],
        ] {
            let cli = Cli::parse_from(expand_config(args(before)).unwrap());
            let Command::Run(run) = cli.command else {
                panic!("not run")
            };
            assert_eq!(run.lanes, 8, "{before:?}: the file's setting");
        }
        let err = expand_config(vec![
            "murmur-worker".into(),
            "--config".into(),
            file.clone().into_os_string(),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--config: no subcommand before it"),
            "{err}"
        );
    }
}
