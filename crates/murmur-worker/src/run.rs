//! `murmur-worker run`: backfill, handoff, live — the library's
//! [`backfill`] and [`live`] with the sources and stores of the flags.

use crate::cli::{BackfillKind, LiveArgs, LiveKind, ProgressMode, RunArgs, StartKind};
use crate::observe::Display;
use crate::pipeline::{Render, WithPipeline, with_pipeline};
use crate::serve::{self, Telemetry};
use crate::stores::{self, Backend, Stores};
use anyhow::{Context as _, bail};
use murmur_bootstrap::{
    BackfillOptions, BackfillOutcome, Dedup, LiveOptions, LiveStats, Progress, ProgressSnapshot,
    backfill, live,
};
use murmur_core::{
    AliasStore, CheckpointStore, CountEvent, FlushPolicy, HandoffToken, LaneId, Pipeline, Position,
    RunStatus,
};
use murmur_source_live::{
    Decoder, DynamoDbStreamsConfig, DynamoDbStreamsSource, KafkaConfig, KafkaSource, KinesisConfig,
    KinesisSource, LiveSource, SequenceNumber, Start, dynamodb_streams_lane, ensure_lease_table,
    kafka_lane, kinesis_lane,
};
use murmur_source_snapshot::dynamodb::{DynamoDbScanOptions, DynamoDbScanSource};
use murmur_source_snapshot::{
    BadRecordPolicy, CountEventColumns, CountEventLines, DeadLetter, JsonLinesOptions,
    JsonLinesSource, ObjectListing, ParquetOptions, ParquetSource, SnapshotSource,
    default_key_filter,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a worker process is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `run`: backfill and live into the active version of the state; when
    /// a replay swaps in a newer version, live moves to it at a batch
    /// boundary.
    Run,
    /// `replay`: backfill into a new version beside the active one, catch
    /// up live until the lag is at most `catch_up_lag` (or the stream is
    /// idle), then swap the alias to it.
    Replay {
        /// The version to build (newer than the active one).
        version: u64,
        /// Caught up once every lane's event-time lag is at most this.
        catch_up_lag: Duration,
    },
}

/// Runs the worker as the flags say, until done or `stop` is cancelled.
pub async fn run(
    args: &RunArgs,
    mode: Mode,
    progress: ProgressMode,
    stop: CancellationToken,
) -> anyhow::Result<Summary> {
    with_pipeline(
        &args.pipeline,
        Worker {
            args,
            mode,
            progress,
            stop,
            telemetry: Telemetry::new(),
        },
    )
    .await?
}

/// What a run did (printed as one JSON line on stdout at the end).
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// `completed`, `already_completed`, `stopped` or `none`.
    pub backfill: &'static str,
    /// The handoff token live started from.
    pub token: Option<serde_json::Value>,
    /// Backfill records folded by this process.
    pub backfill_records: u64,
    /// Backfill records outside the event-time cut.
    pub backfill_after_cut: u64,
    /// Bad rows this process routed to the error sink.
    pub bad_records: u64,
    /// Live records folded.
    pub live_records: u64,
    /// Live records before the event-time cut.
    pub live_before_cut: u64,
    /// Batches committed (both stages).
    pub batches: u64,
    /// Batches replayed after a crash.
    pub replayed: u64,
    /// Row deltas written.
    pub rows: u64,
    /// Records skipped by the deduper.
    pub duplicates: u64,
    /// Records dropped as past the window's retention (`--retention-days`).
    pub expired: u64,
    /// DynamoDB requests (all attempts).
    pub store_requests: Option<u64>,
    /// DynamoDB retries.
    pub store_retries: Option<u64>,
    /// The version of the state written (0: unversioned); the one live
    /// ended in, after a swap.
    pub version: u64,
    /// `replay`: whether the alias was swapped to the new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
    /// Seconds the run took.
    pub seconds: f64,
}

impl Summary {
    /// Adds one stage's batch counters.
    fn add_batches(&mut self, p: &ProgressSnapshot) {
        self.batches += p.batches;
        self.replayed += p.replayed;
        self.rows += p.rows;
        self.duplicates += p.duplicates;
        self.expired += p.expired;
    }
}

struct Worker<'a> {
    args: &'a RunArgs,
    mode: Mode,
    progress: ProgressMode,
    stop: CancellationToken,
    telemetry: Arc<Telemetry>,
}

impl WithPipeline for Worker<'_> {
    type Output = anyhow::Result<Summary>;

    async fn call<M: Render>(self, pipeline: Pipeline<CountEvent, M>) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let args = self.args;
        let alias = pipeline.name().to_owned();
        let backend = Backend::connect(&args.store).await?;
        let active = backend.active(&alias).await?;
        let version = match self.mode {
            Mode::Run => active,
            // Several replay processes would each swap after their own
            // catch-up, while the others still write the new version.
            Mode::Replay { .. } if args.worker_count > 1 => bail!(
                "a replay runs as one process (--worker-count 1); its backfill runs \
                 --lanes lanes with --concurrency readers"
            ),
            Mode::Replay { version, .. } if version > active => version,
            Mode::Replay { version, .. } => bail!(
                "cannot replay {alias} into version {version}: the active version is {active}, \
                 and a swap never goes back; replay into version {}",
                active + 1
            ),
        };
        let mut stores = backend.open(&alias, version).await?;
        tracing::info!(pipeline = %alias, version, stores = %stores.description, "worker starting");
        self.telemetry.store(stores.metrics.clone());
        self.telemetry.version(version);
        // The endpoint lives as long as the run (a stop request still lets
        // it answer while the open batches are flushed); it reads the
        // active version, as every reader does.
        let endpoint = CancellationToken::new();
        let _endpoint = endpoint.clone().drop_guard();
        if let Some(addr) = args.listen {
            let reads = serve::Reads::active(backend.clone(), &alias);
            let router = serve::router(pipeline.clone(), reads, self.telemetry.clone());
            serve::start(addr, router, endpoint).await?;
        }
        let mut summary = Summary {
            backfill: "none",
            version,
            ..Summary::default()
        };
        let explicit = token_flag(args.token.as_deref(), "--token")?;

        // Backfill, then the token live starts from.
        let token = if args.backfill == BackfillKind::None {
            self.live_only_token(&pipeline, &stores, explicit).await?
        } else {
            match self
                .backfill(&pipeline, &stores, explicit, &mut summary)
                .await?
            {
                Some(token) => Some(token),
                None => return self.swap(&backend, &alias, summary, &stores, started).await,
            }
        };
        if args.source.live == LiveKind::None || self.stop.is_cancelled() {
            return self.swap(&backend, &alias, summary, &stores, started).await;
        }
        let mut start = match token {
            Some(HandoffToken::None) | None => {
                if args.backfill != BackfillKind::None && args.token.is_none() {
                    bail!(
                        "the backfill has no handoff token (no --token, no _murmur_handoff.json manifest): \
                         live cannot know where the export ends; pass --token"
                    );
                }
                self.start_without_token()
            }
            Some(t) => {
                summary.token = serde_json::from_str(&t.to_json()).ok();
                Start::Token(t)
            }
        };
        loop {
            let (stats, moved) = self
                .live(&pipeline, &stores, start, &mut summary, &backend)
                .await?;
            summary.live_records += stats.records;
            summary.live_before_cut += stats.before_cut;
            let Some(next) = moved else { break };
            // A replay swapped in a newer version: every open batch of this
            // one is committed; go on in the new one from its checkpoints
            // (left by the replay's catch-up), or its backfill's token.
            tracing::info!(pipeline = %alias, from = stores.version, to = next, "the active version moved; live goes on in the new version");
            stores = backend.open(&alias, next).await?;
            start = self.handed_over(&pipeline, &stores).await?;
            summary.version = next;
            self.telemetry.version(next);
        }
        self.swap(&backend, &alias, summary, &stores, started).await
    }
}

impl Worker<'_> {
    /// `replay`: swaps the alias to the new version, unless stopped early;
    /// `run`: only finishes.
    async fn swap(
        &self,
        backend: &Backend,
        alias: &str,
        mut summary: Summary,
        stores: &Stores,
        started: Instant,
    ) -> anyhow::Result<Summary> {
        if let Mode::Replay { version, .. } = self.mode {
            let ready = !self.stop.is_cancelled() && summary.backfill != "stopped";
            if ready {
                match backend.aliases().swap(alias, version).await {
                    Ok(()) => {}
                    // A replay run again after its swap (or a second
                    // worker of it): the version is active already.
                    Err(murmur_core::StoreError::StaleSwap { active, .. }) if active == version => {
                        tracing::info!(
                            pipeline = alias,
                            version,
                            "version {version} is active already"
                        );
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot swap {alias} to version {version}")));
                    }
                }
                tracing::info!(
                    pipeline = alias,
                    version,
                    "swapped: readers and live workers now use version {version}"
                );
            } else {
                tracing::info!(
                    pipeline = alias,
                    version,
                    "stopped before the swap; run the replay again to resume it"
                );
            }
            summary.swapped = Some(ready);
        }
        Ok(self.finish(summary, stores, started))
    }

    /// Where live starts when no token says (`--start`).
    fn start_without_token(&self) -> Start {
        start_of(self.args.source.start)
    }

    /// A live-only run's token (`--backfill none`): the one its first run
    /// was given, kept in the checkpoint store, so a restart without
    /// `--token` still drops what precedes an event-time cut (a late event
    /// before it belongs to the history counted elsewhere), and a restart
    /// with another token is refused.
    async fn live_only_token<M: Render>(
        &self,
        pipeline: &Pipeline<CountEvent, M>,
        stores: &Stores,
        explicit: Option<HandoffToken>,
    ) -> anyhow::Result<Option<HandoffToken>> {
        let run_id = match &self.args.run_id {
            Some(id) => format!("{id}-live"),
            None => format!("{}-live", pipeline.name()),
        };
        let begun = match (stores.checkpoints.run(&run_id).await?, explicit) {
            (Some(run), given) => (run, given),
            (None, Some(given)) => (
                stores
                    .checkpoints
                    .begin_run(&run_id, "live", &given)
                    .await?,
                Some(given),
            ),
            (None, None) => return Ok(None),
        };
        let (run, given) = begun;
        let kept = run.token.unwrap_or(HandoffToken::None);
        if let Some(given) = given
            && given != kept
        {
            bail!(
                "the live stage of {} began with token {}, not {}: its lanes went on from that one; \
                 restart with it (or none), or use a new --run-id",
                pipeline.name(),
                kept.to_json(),
                given.to_json()
            );
        }
        Ok(Some(kept))
    }

    /// The backfill run id.
    fn run_id(&self, pipeline: &str) -> String {
        self.args
            .run_id
            .clone()
            .unwrap_or_else(|| format!("{pipeline}-backfill"))
    }

    /// Where live starts in a version another process built: its lanes'
    /// checkpoints, else its completed backfill's token.
    async fn handed_over<M: Render>(
        &self,
        pipeline: &Pipeline<CountEvent, M>,
        stores: &Stores,
    ) -> anyhow::Result<Start> {
        let run_id = self.run_id(pipeline.name());
        match stores.checkpoints.run(&run_id).await? {
            Some(run) if run.status == RunStatus::Completed => {
                Ok(match run.token.unwrap_or(HandoffToken::None) {
                    HandoffToken::None => self.start_without_token(),
                    token => Start::Token(token),
                })
            }
            _ => bail!(
                "version {} of {} has no completed backfill run {run_id}: it was swapped in before its replay finished",
                stores.version,
                pipeline.name()
            ),
        }
    }

    fn finish(&self, mut summary: Summary, stores: &Stores, started: Instant) -> Summary {
        self.telemetry.stage("stopped");
        if let Some(m) = &stores.metrics {
            let m = m.snapshot();
            summary.store_requests = Some(m.requests);
            summary.store_retries = Some(m.retries);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary
    }

    /// The stage's flush policy, with the flags that were given.
    fn flush(&self, stage: FlushPolicy) -> FlushPolicy {
        FlushPolicy {
            max_keys: self.args.flush_max_keys.unwrap_or(stage.max_keys).max(1),
            max_age: self.args.flush_max_age.unwrap_or(stage.max_age),
        }
    }

    fn dedup(&self, stores: &Stores) -> Option<Dedup> {
        self.args.dedup.then(|| Dedup {
            deduper: stores.deduper.clone(),
            ttl: Some(self.args.dedup_ttl),
        })
    }

    /// A scan backfill handing off to the scanned table's stream: the
    /// source captures the stream's position when the run begins (the run
    /// keeps it for every resume). A run begun by a version that did not
    /// keep the capture resumes with every shard from its trim horizon: a
    /// capture taken now would miss the changes since the scan began.
    async fn streams_handoff(
        &self,
        source: DynamoDbScanSource<CountEvent>,
        streams: aws_sdk_dynamodbstreams::Client,
        stores: &Stores,
        run_id: &str,
        options: &mut BackfillOptions,
    ) -> anyhow::Result<DynamoDbScanSource<CountEvent>> {
        let args = self.args;
        if args.source.streams_table.as_deref() != args.scan_table.as_deref() {
            bail!(
                "--live dynamodb-streams after --backfill dynamodb reads the scanned table's stream: \
                 --streams-table must be --scan-table ({:?}), or pass --token",
                args.scan_table.as_deref().unwrap_or_default()
            );
        }
        if !args.dedup {
            tracing::warn!(
                "the scan and the stream overlap (changes made during the scan are in both): \
                 without --dedup they are counted twice"
            );
        }
        match stores.checkpoints.run(run_id).await? {
            Some(run) if run.status == RunStatus::Running && run.token.is_none() => {
                tracing::warn!(
                    run = run_id,
                    "resuming a scan whose stream capture was not kept: live reads the stream from its trim horizon"
                );
                let handoff = source.streams_trim_horizon(&streams).await?;
                options.token = Some(handoff.token());
                Ok(source)
            }
            _ => Ok(source.with_streams_capture(streams)),
        }
    }

    /// Runs (or resumes, or skips) the backfill; the token once the run is
    /// complete, `None` when it stopped early.
    async fn backfill<M: Render>(
        &self,
        pipeline: &Pipeline<CountEvent, M>,
        stores: &Stores,
        explicit: Option<HandoffToken>,
        summary: &mut Summary,
    ) -> anyhow::Result<Option<HandoffToken>> {
        let args = self.args;
        let run_id = self.run_id(pipeline.name());
        let progress = Arc::new(Progress::new());
        self.telemetry.stage("backfill");
        self.telemetry.backfill(progress.clone());
        let options = BackfillOptions {
            lanes: args.lanes,
            worker_index: args.worker_index,
            worker_count: args.worker_count,
            concurrency: args.concurrency,
            flush: self.flush(FlushPolicy::backfill()),
            token: explicit,
            // Refused before anything is read, not after the whole history
            // (an explicit `--token '{"kind":"none"}'` lets live start from
            // `--start` instead).
            require_token: args.source.live != LiveKind::None && args.token.is_none(),
            dedup: self.dedup(stores),
            progress: progress.clone(),
            stop: self.stop.clone(),
            ..BackfillOptions::new(run_id.clone())
        };
        // Under the run's own prefix: a resume rewrites the objects of the
        // chunks it reads again; another run's are left alone.
        let mut policy = BadRecordPolicy::max_bad_records(args.max_bad_records);
        if let Some(uri) = &args.dead_letter {
            policy.dead_letter = Some(dead_letter(uri, &run_id, args.from.as_deref())?);
        }
        let display = Display::start(self.progress, "backfill", progress.clone());
        let (outcome, bad) = match args.backfill {
            BackfillKind::None => unreachable!("checked by the caller"),
            BackfillKind::Parquet => {
                let source = ParquetSource::with_options(
                    listing(args.from.as_deref(), args.dead_letter.as_deref(), &run_id)?,
                    CountEventColumns,
                    ParquetOptions {
                        chunk_rows: args.chunk_rows.max(1) as usize,
                        ..ParquetOptions::default()
                    },
                    policy,
                )?;
                drive(pipeline, source, stores, &options, &self.telemetry).await
            }
            BackfillKind::Jsonl => {
                let source = JsonLinesSource::with_options(
                    listing(args.from.as_deref(), args.dead_letter.as_deref(), &run_id)?,
                    CountEventLines,
                    JsonLinesOptions {
                        chunk_lines: args.chunk_rows.max(1),
                        ..JsonLinesOptions::default()
                    },
                    policy,
                )?;
                drive(pipeline, source, stores, &options, &self.telemetry).await
            }
            BackfillKind::Dynamodb => {
                let table = args
                    .scan_table
                    .clone()
                    .context("--backfill dynamodb needs --scan-table")?;
                let mut scan = DynamoDbScanOptions::new(table);
                scan.segments = args.scan_segments;
                scan.page_size = args.scan_page_size.map(|n| n.max(1) as u32);
                scan.read_capacity_per_sec = args.scan_rcu;
                let sdk = stores::aws().await;
                let client = aws_sdk_dynamodb::Client::new(&sdk);
                let source =
                    DynamoDbScanSource::new(client, scan, |e: &CountEvent| e.occurred_at_ms)?
                        .event_id(|e: &CountEvent| e.event_id.as_deref().map(Arc::from))
                        .with_bad_records(policy);
                let mut options = options;
                let source =
                    if options.token.is_none() && args.source.live == LiveKind::DynamodbStreams {
                        let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
                        self.streams_handoff(source, streams, stores, &run_id, &mut options)
                            .await?
                    } else {
                        source
                    };
                drive(pipeline, source, stores, &options, &self.telemetry).await
            }
        };
        display.finish().await;
        summary.bad_records = bad;
        let stats = progress.snapshot();
        summary.backfill_records = stats.records;
        summary.backfill_after_cut = stats.skipped;
        summary.add_batches(&stats);
        match outcome.with_context(|| format!("backfill {run_id} failed"))? {
            BackfillOutcome::AlreadyCompleted { token } => {
                summary.backfill = "already_completed";
                Ok(Some(token))
            }
            BackfillOutcome::Completed { token, .. } => {
                summary.backfill = "completed";
                Ok(Some(token))
            }
            BackfillOutcome::Stopped { .. } => {
                summary.backfill = "stopped";
                Ok(None)
            }
            BackfillOutcome::WaitingForOtherWorkers { unfinished, .. } => {
                tracing::info!(
                    run = run_id,
                    unfinished = unfinished.len(),
                    "this worker's lanes are done; waiting for the other workers to finish the run"
                );
                let token = wait_for_run(&*stores.checkpoints, &run_id, &self.stop).await?;
                if token.is_some() {
                    summary.backfill = "completed";
                } else {
                    summary.backfill = "stopped";
                }
                Ok(token)
            }
            other => bail!("unexpected backfill outcome {other:?}"),
        }
    }

    /// Runs live into `stores` until stopped; also returns the newer version
    /// the alias moved to, when that is why it stopped (`run` only).
    async fn live<M: Render>(
        &self,
        pipeline: &Pipeline<CountEvent, M>,
        stores: &Stores,
        start: Start,
        summary: &mut Summary,
        backend: &Backend,
    ) -> anyhow::Result<(LiveStats, Option<u64>)> {
        let args = self.args;
        let progress = Arc::new(Progress::new());
        self.telemetry.stage("live");
        self.telemetry.live(progress.clone());
        let flush = self.flush(FlushPolicy {
            max_keys: 100_000,
            ..FlushPolicy::default()
        });
        let options = LiveOptions {
            start,
            flush,
            tick: live_tick(flush.max_age),
            dedup: self.dedup(stores),
            progress: progress.clone(),
        };
        let until = token_flag(args.until.as_deref(), "--until")?;
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (idle, caught_up, watch) = match self.mode {
            Mode::Run => (
                args.stop_after_idle,
                None,
                Some(Watch {
                    aliases: backend.aliases(),
                    alias: pipeline.name().to_owned(),
                    version: stores.version,
                    moved: moved.clone(),
                }),
            ),
            // With --until the catch-up ends there; else once caught up or
            // the stream is quiet.
            Mode::Replay { .. } if args.until.is_some() => (args.stop_after_idle, None, None),
            Mode::Replay { catch_up_lag, .. } => (
                Some(args.stop_after_idle.unwrap_or(CATCH_UP_IDLE)),
                Some(catch_up_lag),
                None,
            ),
        };
        let shutdown = shutdown(
            self.stop.clone(),
            stores.checkpoints.clone(),
            until,
            Stops {
                idle,
                caught_up,
                watch,
            },
            progress.clone(),
        );
        let display = Display::start(self.progress, "live", progress.clone());
        let mut source = connect_live(&args.source, |name| self.own(name)).await?;
        let stats = drive_live(pipeline, &mut source, stores, &options, shutdown).await?;
        display.finish().await;
        summary.add_batches(&progress.snapshot());
        let moved = moved.load(std::sync::atomic::Ordering::SeqCst);
        Ok((stats, (moved > stores.version).then_some(moved)))
    }

    /// The consumer group (Kafka) or lease table (Kinesis) of this process:
    /// a replay's catch-up must not take partitions or shards from the
    /// live worker's group.
    fn own(&self, name: &str) -> String {
        match self.mode {
            Mode::Run => name.to_owned(),
            Mode::Replay { version, .. } => format!("{name}-replay-v{version}"),
        }
    }
}

/// A token flag's JSON (`--token`, `--until`), if given.
pub(crate) fn token_flag(json: Option<&str>, flag: &str) -> anyhow::Result<Option<HandoffToken>> {
    json.map(HandoffToken::from_json)
        .transpose()
        .with_context(|| format!("{flag} is not a handoff token"))
}

/// The live source of the flags (Kafka or Kinesis), decoding
/// `CountEvent`s; `own` names this process's consumer group or lease
/// table. One code path for `run`, `replay` and `archive`.
pub(crate) async fn connect_live(
    args: &LiveArgs,
    own: impl Fn(&str) -> String,
) -> anyhow::Result<Box<dyn LiveSource<CountEvent> + Sync>> {
    Ok(match args.live {
        LiveKind::None => {
            bail!("no live source: set --live kafka, --live kinesis or --live dynamodb-streams")
        }
        LiveKind::Kafka => {
            let brokers = args
                .kafka_brokers
                .as_deref()
                .context("--live kafka needs --kafka-brokers")?;
            let topic = args
                .kafka_topic
                .as_deref()
                .context("--live kafka needs --kafka-topic")?;
            let mut config = match &args.kafka_group {
                Some(group) => KafkaConfig::subscribe(brokers, topic, &own(group)),
                None => KafkaConfig::assign(brokers, topic),
            }
            .event_time_cut_skew(args.cut_skew);
            if let Some(dlq) = &args.kafka_dead_letter_topic {
                config = config.dead_letter_topic(dlq);
            }
            if args.skip_bad_messages {
                config = config.skip_bad_messages();
            }
            for kv in &args.kafka_properties {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--kafka-property {kv:?} is not KEY=VALUE"))?;
                config = config.property(k, v);
            }
            Box::new(KafkaSource::connect(config, Decoder::count_events()).await?)
        }
        LiveKind::Kinesis => {
            let stream = args
                .kinesis_stream
                .as_deref()
                .context("--live kinesis needs --kinesis-stream")?;
            let sdk = stores::aws().await;
            let mut config = KinesisConfig::new(stream).event_time_cut_skew(args.cut_skew);
            if let Some(table) = &args.kinesis_lease_table {
                let table = own(table);
                let ddb = aws_sdk_dynamodb::Client::new(&sdk);
                ensure_lease_table(&ddb, &table).await?;
                config = config.leases(ddb, &table, Duration::from_secs(30));
            }
            if let Some(dlq) = &args.kinesis_dead_letter_stream {
                config = config.dead_letter_stream(dlq);
            }
            if args.skip_bad_messages {
                config = config.skip_bad_messages();
            }
            Box::new(
                KinesisSource::connect(
                    config,
                    aws_sdk_kinesis::Client::new(&sdk),
                    Decoder::count_events(),
                )
                .await?,
            )
        }
        LiveKind::DynamodbStreams => {
            let table = args
                .streams_table
                .as_deref()
                .context("--live dynamodb-streams needs --streams-table")?;
            let sdk = stores::aws().await;
            let mut config = DynamoDbStreamsConfig::new(table).event_time_cut_skew(args.cut_skew);
            if let Some(dlq) = &args.kinesis_dead_letter_stream {
                config = config.dead_letter_stream(aws_sdk_kinesis::Client::new(&sdk), dlq);
            }
            if args.skip_bad_messages {
                config = config.skip_bad_messages();
            }
            Box::new(
                DynamoDbStreamsSource::connect(
                    config,
                    &aws_sdk_dynamodb::Client::new(&sdk),
                    aws_sdk_dynamodbstreams::Client::new(&sdk),
                    Decoder::count_events(),
                )
                .await?,
            )
        }
    })
}

/// The backfill over one concrete source; also returns its bad-row count.
async fn drive<S, M>(
    pipeline: &Pipeline<CountEvent, M>,
    source: S,
    stores: &Stores,
    options: &BackfillOptions,
    telemetry: &Telemetry,
) -> (anyhow::Result<BackfillOutcome>, u64)
where
    S: SnapshotSource<Item = CountEvent> + Clone + 'static,
    M: Render,
{
    telemetry.bad_records(source.bad_records().clone());
    let outcome = backfill(
        pipeline,
        &source,
        stores.state.clone(),
        stores.checkpoints.clone(),
        options,
    )
    .await;
    let bad = source.bad_records();
    for sample in bad.samples().iter().take(5) {
        tracing::warn!(bad_record = %sample, "bad record");
    }
    // Every dead letter is already written, each with its chunk.
    (outcome.map_err(anyhow::Error::from), bad.count())
}

async fn drive_live<M: Render, L: LiveSource<CountEvent>>(
    pipeline: &Pipeline<CountEvent, M>,
    source: &mut L,
    stores: &Stores,
    options: &LiveOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<LiveStats> {
    let stats = live(
        pipeline,
        source,
        stores.state.clone(),
        stores.checkpoints.clone(),
        options,
        shutdown,
    )
    .await?;
    warn_dead_letters(source);
    Ok(stats)
}

/// Logs (and returns) how many undecodable messages the source sent to its
/// dead-letter destination (or skipped, with `--skip-bad-messages`).
pub(crate) fn warn_dead_letters<L: LiveSource<CountEvent> + ?Sized>(source: &L) -> u64 {
    let dead_letters = source.metrics().dead_letters;
    if dead_letters > 0 {
        tracing::warn!(
            dead_letters,
            "undecodable messages were sent to the dead-letter destination (or skipped)"
        );
    }
    dead_letters
}

/// Where live starts for `--start` when no token says.
pub(crate) fn start_of(kind: StartKind) -> Start {
    match kind {
        StartKind::Earliest => Start::Earliest,
        StartKind::Latest => Start::Latest,
    }
}

/// How often the live driver looks for aged batches: often enough for a
/// batch age of `max_age`, at most every 100 ms.
pub(crate) fn live_tick(max_age: Duration) -> Duration {
    Duration::from_millis(100).min(max_age.max(Duration::from_millis(10)))
}

/// Waits for another worker to complete the run; the token, or `None` when
/// stopped first.
async fn wait_for_run(
    checkpoints: &dyn CheckpointStore,
    run_id: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Option<HandoffToken>> {
    loop {
        if let Some(run) = checkpoints.run(run_id).await?
            && run.status == RunStatus::Completed
        {
            return Ok(Some(run.token.unwrap_or(HandoffToken::None)));
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A replay's catch-up without `--until` stops after this long without a
/// record, unless `--stop-after-idle` says otherwise (long enough for a
/// consumer's first fetch on a loaded broker).
const CATCH_UP_IDLE: Duration = Duration::from_secs(10);

/// How often a live worker looks up the active version.
const ALIAS_POLL: Duration = Duration::from_secs(1);

/// Watches the alias for a newer version than the one live writes.
pub(crate) struct Watch {
    aliases: Arc<dyn AliasStore>,
    alias: String,
    version: u64,
    /// Set to the newer version before the watch resolves.
    moved: Arc<std::sync::atomic::AtomicU64>,
}

/// The conditions, besides a stop request and `--until`, that end live.
pub(crate) struct Stops {
    /// No record for this long.
    pub(crate) idle: Option<Duration>,
    /// Every lane's event-time lag at most this (a replay's catch-up).
    pub(crate) caught_up: Option<Duration>,
    /// The alias moved on (a live worker).
    pub(crate) watch: Option<Watch>,
}

/// Resolves on a stop request, once every lane of `until` has committed at
/// or past its position, or on one of `stops`.
pub(crate) async fn shutdown(
    stop: CancellationToken,
    checkpoints: Arc<dyn CheckpointStore>,
    until: Option<HandoffToken>,
    stops: Stops,
    progress: Arc<Progress>,
) {
    let reached = async {
        let Some(until) = until else {
            return std::future::pending().await;
        };
        loop {
            match reached(&*checkpoints, &until).await {
                Ok(true) => {
                    tracing::info!(until = %until.to_json(), "every lane reached --until");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot read lane checkpoints: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let idle = async {
        let Some(idle) = stops.idle else {
            return std::future::pending().await;
        };
        progress.idle(idle).await;
        tracing::info!(idle = ?idle, "no record for the idle limit; stopping");
    };
    let caught_up = async {
        let Some(lag) = stops.caught_up else {
            return std::future::pending().await;
        };
        let limit = i64::try_from(lag.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let lags = progress.lane_lags();
            if !lags.is_empty() && lags.iter().all(|(_, l)| *l <= limit) {
                tracing::info!(lag = ?lag, lanes = lags.len(), "caught up: every lane within the lag limit");
                return;
            }
        }
    };
    let watch = async {
        let Some(w) = stops.watch else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(ALIAS_POLL).await;
            match w.aliases.active(&w.alias).await {
                Ok(Some(v)) if v > w.version => {
                    tracing::info!(pipeline = %w.alias, from = w.version, to = v, "a newer version was swapped in; flushing and switching");
                    w.moved.store(v, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot read the active version: {e:#}"),
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = reached => {}
        () = idle => {}
        () = caught_up => {}
        () = watch => {}
    }
}

/// Whether every lane of `until` has committed at or past its position.
async fn reached(checkpoints: &dyn CheckpointStore, until: &HandoffToken) -> anyhow::Result<bool> {
    match until {
        HandoffToken::Kafka { topic, offsets } => {
            for (p, want) in offsets {
                let lane = checkpoints.lane(&kafka_lane(topic, *p)).await?;
                let ok = lane.is_some_and(|l| {
                    l.pending.is_none()
                        && matches!(l.position, Position::Offset { offset } if offset >= *want)
                });
                if !ok {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        HandoffToken::Kinesis {
            stream,
            sequence_numbers,
        } => {
            let lanes = sequence_numbers
                .iter()
                .map(|(shard, want)| (kinesis_lane(stream, shard), want.as_str()));
            sequences_reached(checkpoints, lanes).await
        }
        HandoffToken::DynamoDbStreams { table, shards } => {
            let lanes = shards.iter().filter_map(|(shard, want)| {
                Some((dynamodb_streams_lane(table, shard), want.as_deref()?))
            });
            sequences_reached(checkpoints, lanes).await
        }
        other => bail!(
            "--until takes a Kafka, Kinesis or DynamoDB Streams token, not {}",
            other.to_json()
        ),
    }
}

/// Whether every shard lane has committed at or past its sequence number
/// (or finished).
async fn sequences_reached(
    checkpoints: &dyn CheckpointStore,
    lanes: impl Iterator<Item = (LaneId, &str)>,
) -> anyhow::Result<bool> {
    for (lane, want) in lanes {
        let want = SequenceNumber::parse(want)
            .with_context(|| format!("--until: invalid sequence number {want:?}"))?;
        let state = checkpoints.lane(&lane).await?;
        let ok = state.is_some_and(|l| {
            l.pending.is_none()
                && match &l.position {
                    Position::End => true,
                    Position::Sequence { sequence } => {
                        SequenceNumber::parse(sequence).is_some_and(|s| s >= want)
                    }
                    _ => false,
                }
        });
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The export `--from` names (`s3://bucket/prefix` or a directory),
/// without the `--dead-letter` location of run `run_id` when it lies
/// inside the export: a later run must not read dead letters as input.
fn listing(
    from: Option<&str>,
    dead_letter: Option<&str>,
    run_id: &str,
) -> anyhow::Result<ObjectListing> {
    let uri =
        from.context("--backfill parquet/jsonl needs --from (s3://bucket/prefix or a directory)")?;
    let listing = ObjectListing::from_uri(uri)?;
    let Some(dead_letter) = dead_letter else {
        return Ok(listing);
    };
    let inside = inside_export(&location(uri), &location(dead_letter), run_id).map_err(|()| {
        anyhow::anyhow!("--dead-letter {dead_letter} would write into the export (--from) itself")
    })?;
    if inside.is_empty() {
        return Ok(listing);
    }
    Ok(listing.key_filter(move |key| {
        default_key_filter(key) && !inside.iter().any(|p| format!("{key}/").starts_with(p))
    }))
}

/// The key prefixes (relative to the export, ending in `/`) that dead
/// letters of run `run_id` can be written under, over every spelling of
/// both locations (a symlinked directory is listed through its link): the
/// location itself and the run's prefix under it. `Err` when they would be
/// the export itself.
fn inside_export(
    export: &[(String, String)],
    letters: &[(String, String)],
    run_id: &str,
) -> Result<std::collections::BTreeSet<String>, ()> {
    let mut inside = std::collections::BTreeSet::new();
    for (root, export) in export {
        for (_, dl) in letters.iter().filter(|(r, _)| r == root) {
            let run = match dl.as_str() {
                "" => run_id.to_owned(),
                dl => format!("{dl}/{run_id}"),
            };
            for dl in [dl.clone(), run] {
                let Some(rest) = dl.strip_prefix(export.as_str()) else {
                    continue;
                };
                if !export.is_empty() && !rest.is_empty() && !rest.starts_with('/') {
                    continue; // `exp2/...` is not inside `exp`.
                }
                match rest.trim_matches('/') {
                    "" => return Err(()),
                    relative => inside.insert(format!("{relative}/")),
                };
            }
        }
    }
    Ok(inside)
}

/// The spellings of a location as (root, key prefix without slashes at
/// either end): (`s3://bucket`, `prefix`), or (`file://`, the absolute
/// directory) as given and with its links resolved.
fn location(uri: &str) -> Vec<(String, String)> {
    let Some(dir) = local_dir(uri) else {
        let rest = uri.strip_prefix("s3://").unwrap_or(uri);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        return vec![(
            format!("s3://{bucket}"),
            prefix.trim_matches('/').to_owned(),
        )];
    };
    let mut forms: Vec<_> = [
        std::path::absolute(dir).ok(),
        std::fs::canonicalize(dir).ok(),
    ]
    .into_iter()
    .flatten()
    .map(|d| {
        (
            "file://".to_owned(),
            d.to_string_lossy().trim_matches('/').to_owned(),
        )
    })
    .collect();
    forms.dedup();
    forms
}

/// The directory a location names (`file:///dir` or a plain path), as
/// [`ObjectListing::from_uri`] reads it; `None` for `s3://`.
fn local_dir(uri: &str) -> Option<&std::path::Path> {
    (!uri.starts_with("s3://"))
        .then(|| std::path::Path::new(uri.strip_prefix("file://").unwrap_or(uri)))
}

/// The dead letters of run `run_id` under `uri` (`s3://bucket/prefix` or a
/// directory, created if missing): `<uri>/<run-id>/...`. A local `--from`
/// must exist first (the location may lie inside it).
fn dead_letter(uri: &str, run_id: &str, from: Option<&str>) -> anyhow::Result<DeadLetter> {
    if let Some(dir) = local_dir(uri) {
        if let Some(from) = from.and_then(local_dir)
            && !from.is_dir()
        {
            bail!("--from {}: no such directory", from.display());
        }
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the --dead-letter directory {}",
                dir.display()
            )
        })?;
    }
    let root = ObjectListing::from_uri(uri)?;
    Ok(DeadLetter {
        store: root.store().clone(),
        prefix: root.prefix().clone().join(run_id),
    })
}

#[cfg(test)]
mod tests {
    use super::inside_export;

    fn s3(prefix: &str) -> Vec<(String, String)> {
        vec![("s3://b".to_owned(), prefix.to_owned())]
    }

    #[test]
    fn dead_letters_inside_the_export_are_left_out_of_it() {
        let inside = |export: &str, letters: &str| {
            inside_export(&s3(export), &s3(letters), "run")
                .map(|set| set.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(
            inside("exp", "exp/rejects"),
            Ok(vec!["rejects/".to_owned(), "rejects/run/".to_owned()])
        );
        assert_eq!(
            inside("", "rejects"),
            Ok(vec!["rejects/".to_owned(), "rejects/run/".to_owned()])
        );
        // A sibling, a parent, another bucket: nothing to leave out.
        assert_eq!(inside("exp", "exp2/rejects"), Ok(vec![]));
        assert_eq!(inside("exp", "dlq"), Ok(vec![]));
        assert_eq!(
            inside_export(
                &s3("exp"),
                &[("s3://c".to_owned(), "exp/r".to_owned())],
                "run"
            ),
            Ok(Default::default())
        );
        // The parent whose run prefix is the export, or the export itself.
        assert_eq!(inside("exp/run", "exp"), Err(()));
        assert_eq!(inside("run", ""), Err(()));
        assert_eq!(inside("exp", "exp"), Err(()));
        assert_eq!(inside_export(&s3("exp"), &s3(""), "exp"), Err(()));
    }
}
