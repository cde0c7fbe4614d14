//! The archive: a live source's lanes into Hive-partitioned Parquet
//! objects, acknowledged only once the objects are durable.

use crate::encode::Encoder;
use crate::error::{Error, Result};
use crate::object::{ObjectSink, ParquetObject, UploadOptions, Written, encode_error, retry};
use chrono::{DateTime, Datelike as _, Timelike as _};
use murmur_bootstrap::{BatchReport, LaneSink, LaneSinks, LiveOptions, LiveStats, Resume};
use murmur_core::{ApplyReport, BatchIntent, CheckpointStore, LaneId, Position, Record};
use murmur_source_live::{LiveSource, position_after};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// When the open batch of a lane is cut and written. Whichever limit is
/// reached first cuts it; a batch never holds more than `max_records`
/// records, nor more than `max_bytes` unless one record alone is larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// Records per batch. Default 1,000,000.
    pub max_records: usize,
    /// Bytes per batch, as the [`Encoder`] counts them (what the open
    /// batch holds in memory). Default 64 MiB. A lane holds at most one
    /// open batch and one being written, so the archive's memory is about
    /// `2 × max_bytes × lanes`, plus one row group and one upload part per
    /// object being written.
    pub max_bytes: usize,
    /// Age of the batch's first chunk. Default 60 s.
    pub max_age: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_records: 1_000_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

/// Parquet compression of the archive's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Snappy (the default, as Spark writes).
    #[default]
    Snappy,
    /// Zstandard at a level (1..=22).
    Zstd(i32),
    /// None.
    Uncompressed,
}

impl Compression {
    fn parquet(self) -> Result<ParquetCompression> {
        Ok(match self {
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Uncompressed => ParquetCompression::UNCOMPRESSED,
            Compression::Zstd(level) => {
                ParquetCompression::ZSTD(ZstdLevel::try_new(level).map_err(|e| Error::Config {
                    reason: format!("zstd level {level}: {e}"),
                })?)
            }
        })
    }
}

/// How the archive writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveOptions {
    /// When a lane's batch is cut.
    pub limits: BatchLimits,
    /// Parquet compression.
    pub compression: Compression,
    /// Rows per Parquet row group (the unit of encoding memory). Default
    /// 65,536.
    pub row_group_rows: usize,
    /// Objects written at once over all lanes (the flush workers).
    /// Default 4.
    pub concurrent_objects: usize,
    /// Uploads and retries.
    pub upload: UploadOptions,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            limits: BatchLimits::default(),
            compression: Compression::default(),
            row_group_rows: 65_536,
            concurrent_objects: 4,
            upload: UploadOptions::default(),
        }
    }
}

/// Counters of an archive (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveMetrics {
    /// Batches committed.
    pub batches: u64,
    /// Records written into objects.
    pub records: u64,
    /// Objects written (or found already written).
    pub objects: u64,
    /// Objects found already written by an earlier attempt.
    pub objects_existing: u64,
    /// Bytes of the objects.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    objects: AtomicU64,
    objects_existing: AtomicU64,
    bytes: AtomicU64,
}

struct Shared<T> {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    checkpoints: Arc<dyn CheckpointStore>,
    encoder: Encoder<T>,
    options: ArchiveOptions,
    properties: WriterProperties,
    flushers: Semaphore,
    counters: Counters,
}

/// Archives a live source into Hive-partitioned Parquet objects.
///
/// Each lane (Kafka partition, Kinesis shard) is cut into batches by
/// [`BatchLimits`]. A batch goes through the same fenced protocol as the
/// state-store writers: its intent `[start, end)` is recorded in the
/// checkpoint store, its records are split by event-time hour and each
/// hour becomes one object at
///
/// `<prefix>/year=YYYY/month=MM/day=DD/hour=HH/part-<lane>-<first>-<last>.parquet`
///
/// (`<lane>` the lane id with `:` as `-`, `<first>`/`<last>` the first and
/// last record's offset, 20 digits, or sequence number), written
/// create-only; then the lane is committed to `end` and the source
/// acknowledged. A crash before the commit leaves the intent: the restart
/// re-reads exactly its range, which encodes to the same keys and bytes,
/// so existing objects count as done and missing ones are written — every
/// message lands in exactly one object. Records whose event time has no
/// calendar date go under `__HIVE_DEFAULT_PARTITION__`.
///
/// Objects are written by up to [`ArchiveOptions::concurrent_objects`]
/// flush workers, streamed (one row group and one upload part in memory),
/// while the lanes keep reading: a lane's next batch fills while the
/// previous one is written, and acknowledgements stay in lane order.
/// Undecodable messages never reach the archive: the source's decoder
/// sends them to its dead-letter topic or stream (without one, the first
/// stops the source unless it skips bad messages).
///
/// ```no_run
/// use murmur_archive::{Archive, ArchiveOptions, Encoder};
/// use murmur_bootstrap::LiveOptions;
/// use murmur_core::{CountEvent, EmbeddedStore, HandoffToken};
/// use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, Start};
/// use std::sync::Arc;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let s3 = object_store::aws::AmazonS3Builder::from_env().with_bucket_name("lake").build()?;
/// let checkpoints = Arc::new(EmbeddedStore::open("archive.redb")?.with_namespace("events"));
/// let archive = Archive::new(
///     Arc::new(s3),
///     "events".into(),
///     checkpoints,
///     Encoder::count_events(),
///     ArchiveOptions::default(),
/// )?;
/// let config = KafkaConfig::subscribe("broker:9092", "events", "archiver").dead_letter_topic("events.dlq");
/// let mut source = KafkaSource::connect(config, Decoder::count_events()).await?;
/// let mut options = LiveOptions::from_token(HandoffToken::None);
/// options.start = Start::Earliest;
/// let stop = std::future::pending::<()>(); // e.g. a signal handler's future
/// archive.run(&mut source, &options, stop).await?;
/// # Ok(()) }
/// ```
pub struct Archive<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Archive<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("prefix", &self.shared.prefix)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Archive<T> {
    /// An archive writing under `prefix` of `store`, keeping its lanes'
    /// checkpoints in `checkpoints` (give each archive its own namespace
    /// or table: lane ids are the source's).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        checkpoints: Arc<dyn CheckpointStore>,
        encoder: Encoder<T>,
        options: ArchiveOptions,
    ) -> Result<Self> {
        let l = options.limits;
        if l.max_records == 0 || l.max_bytes == 0 || options.row_group_rows == 0 {
            return Err(Error::Config {
                reason: "max_records, max_bytes and row_group_rows must be positive".into(),
            });
        }
        if options.upload.part_size < 5 << 20 {
            return Err(Error::Config {
                reason: format!(
                    "part_size {} is below S3's 5 MiB minimum part size",
                    options.upload.part_size
                ),
            });
        }
        let properties = WriterProperties::builder()
            .set_compression(options.compression.parquet()?)
            .set_max_row_group_row_count(Some(options.row_group_rows))
            // A fixed writer name: the bytes of a batch must not depend on
            // the library version that wrote them.
            .set_created_by("murmur-archive".to_owned())
            .build();
        Ok(Archive {
            shared: Arc::new(Shared {
                store,
                prefix,
                checkpoints,
                encoder,
                options,
                properties,
                flushers: Semaphore::new(options.concurrent_objects.max(1)),
                counters: Counters::default(),
            }),
        })
    }

    /// Runs the archive over `source` until `shutdown` resolves, then
    /// writes every open batch and acknowledges it: the live driver of
    /// [`murmur_bootstrap::live_into`] with this archive as the lanes'
    /// sink. `options.start` says where lanes without a checkpoint start;
    /// `options.tick` how often aged batches are checked.
    pub async fn run<L: LiveSource<T>>(
        &self,
        source: &mut L,
        options: &LiveOptions,
        shutdown: impl Future<Output = ()>,
    ) -> std::result::Result<LiveStats, murmur_bootstrap::Error> {
        murmur_bootstrap::live_into(self, source, options, shutdown).await
    }

    /// The archive's counters.
    pub fn metrics(&self) -> ArchiveMetrics {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ArchiveMetrics {
            batches: g(&c.batches),
            records: g(&c.records),
            objects: g(&c.objects),
            objects_existing: g(&c.objects_existing),
            bytes: g(&c.bytes),
        }
    }
}

#[async_trait::async_trait]
impl<T: Send + Sync + 'static> LaneSinks<T> for Archive<T> {
    type Sink = ArchiveLane<T>;

    fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.shared.checkpoints
    }

    async fn open(
        &self,
        lane: &LaneId,
        start: Position,
    ) -> murmur_bootstrap::Result<(Self::Sink, Resume)> {
        let state = self
            .shared
            .checkpoints
            .init_lane(lane, &start)
            .await
            .map_err(|e| checkpoint_error(lane, e))?;
        let resume = match &state.pending {
            Some(intent) => Resume::Pending(intent.clone()),
            None => Resume::From(state.position.clone()),
        };
        let sink = ArchiveLane {
            shared: self.shared.clone(),
            lane: lane.clone(),
            label: lane.as_str().replace([':', '/'], "-").into(),
            next_seq: state.committed_seq + 1,
            pending: state.pending.clone(),
            open: Vec::new(),
            open_start: None,
            open_end: None,
            open_bytes: 0,
            open_since: None,
            in_flight: None,
        };
        Ok((sink, resume))
    }
}

fn checkpoint_error(lane: &LaneId, e: murmur_core::StoreError) -> Error {
    Error::Checkpoint {
        lane: lane.clone(),
        source: Box::new(e),
    }
}

/// One lane of an [`Archive`]: its open batch and the batch being written.
pub struct ArchiveLane<T> {
    shared: Arc<Shared<T>>,
    lane: LaneId,
    label: Arc<str>,
    /// Sequence number of the next batch to cut.
    next_seq: u64,
    /// The intent a crash left pending: replayed before anything else.
    pending: Option<BatchIntent>,
    open: Vec<Record<T>>,
    open_start: Option<Position>,
    open_end: Option<Position>,
    open_bytes: usize,
    open_since: Option<Instant>,
    in_flight: Option<JoinHandle<Result<BatchReport>>>,
}

impl<T> std::fmt::Debug for ArchiveLane<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveLane")
            .field("lane", &self.lane)
            .field("next_seq", &self.next_seq)
            .field("open_records", &self.open.len())
            .field("writing", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> ArchiveLane<T> {
    fn limits(&self) -> BatchLimits {
        self.shared.options.limits
    }

    fn aged(&self) -> bool {
        self.open_since
            .is_some_and(|t| t.elapsed() >= self.limits().max_age)
    }

    /// Waits for the batch being written, if any.
    async fn settle(&mut self, reports: &mut Vec<BatchReport>) -> Result<()> {
        if let Some(task) = self.in_flight.take() {
            reports.push(join(task).await?);
        }
        Ok(())
    }

    /// Cuts the open batch at `end`: waits for the previous batch (one
    /// intent per lane), records the intent, and starts writing it.
    async fn cut(&mut self, end: Position, reports: &mut Vec<BatchReport>) -> Result<()> {
        let Some(start) = self.open_start.take() else {
            return Ok(());
        };
        self.open_end = None;
        self.open_since = None;
        self.open_bytes = 0;
        let records = std::mem::take(&mut self.open);
        self.settle(reports).await?;
        let intent = BatchIntent {
            lane: self.lane.clone(),
            seq: self.next_seq,
            start,
            end,
            bad_records: 0,
        };
        let shared = self.shared.clone();
        retry(&shared.options.upload, "begin batch", || async {
            shared
                .checkpoints
                .begin_batch(&intent)
                .await
                .map_err(|e| checkpoint_error(&intent.lane, e))
        })
        .await?;
        self.next_seq += 1;
        let label = self.label.clone();
        self.in_flight = Some(tokio::spawn(write_batch(shared, label, intent, records)));
        Ok(())
    }

    fn would_overflow(&self, bytes: usize) -> bool {
        let l = self.limits();
        !self.open.is_empty()
            && (self.open.len() >= l.max_records || self.open_bytes + bytes > l.max_bytes)
    }

    fn full(&self) -> bool {
        let l = self.limits();
        self.open.len() >= l.max_records || self.open_bytes >= l.max_bytes
    }
}

#[async_trait::async_trait]
impl<T: Send + Sync + 'static> LaneSink<T> for ArchiveLane<T> {
    async fn replay(&mut self, records: Vec<Record<T>>) -> murmur_bootstrap::Result<BatchReport> {
        let Some(intent) = self.pending.clone() else {
            return Err(Error::Protocol {
                lane: self.lane.clone(),
                reason: "replay called but no batch is pending".into(),
            }
            .into());
        };
        tracing::info!(lane = %self.lane, seq = intent.seq, records = records.len(), "re-writing pending batch");
        self.next_seq = intent.seq + 1;
        let report = write_batch(self.shared.clone(), self.label.clone(), intent, records).await?;
        self.pending = None;
        Ok(report)
    }

    async fn push_chunk(
        &mut self,
        records: Vec<Record<T>>,
        start: &Position,
        end: &Position,
    ) -> murmur_bootstrap::Result<Vec<BatchReport>> {
        if self.pending.is_some() {
            return Err(Error::Protocol {
                lane: self.lane.clone(),
                reason: "a pending batch must be replayed before new records".into(),
            }
            .into());
        }
        let mut reports = Vec::new();
        if self.open_start.is_none() {
            self.open_start = Some(start.clone());
            self.open_since = Some(Instant::now());
        }
        for record in records {
            let bytes = self.shared.encoder.bytes(&record.value);
            if self.would_overflow(bytes) {
                // Cut inside the chunk, right after the last record kept.
                let split = self.open.last().and_then(|r| position_after(&r.position));
                if let Some(split) = split {
                    self.cut(split.clone(), &mut reports).await?;
                    self.open_start = Some(split);
                    self.open_since = Some(Instant::now());
                }
            }
            self.open_bytes += bytes;
            self.open.push(record);
        }
        self.open_end = Some(end.clone());
        if self.full() || self.aged() {
            self.cut(end.clone(), &mut reports).await?;
        } else if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle(&mut reports).await?;
        }
        Ok(reports)
    }

    fn should_flush(&self) -> bool {
        self.aged() || self.in_flight.as_ref().is_some_and(JoinHandle::is_finished)
    }

    async fn flush(&mut self) -> murmur_bootstrap::Result<Vec<BatchReport>> {
        let mut reports = Vec::new();
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle(&mut reports).await?;
        }
        if self.aged()
            && let Some(end) = self.open_end.clone()
        {
            self.cut(end, &mut reports).await?;
        }
        Ok(reports)
    }

    async fn drain(&mut self) -> murmur_bootstrap::Result<Vec<BatchReport>> {
        let mut reports = Vec::new();
        if let Some(end) = self.open_end.clone() {
            self.cut(end, &mut reports).await?;
        }
        self.settle(&mut reports).await?;
        Ok(reports)
    }
}

async fn join(task: JoinHandle<Result<BatchReport>>) -> Result<BatchReport> {
    task.await.map_err(|e| Error::Config {
        reason: format!("a batch write task failed: {e}"),
    })?
}

/// Writes a batch's objects (one per event-time hour) and commits it.
async fn write_batch<T: Send + Sync + 'static>(
    shared: Arc<Shared<T>>,
    label: Arc<str>,
    intent: BatchIntent,
    records: Vec<Record<T>>,
) -> Result<BatchReport> {
    let n = records.len() as u64;
    let records = Arc::new(records);
    let mut hours: BTreeMap<Option<Hour>, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        hours.entry(hour_of(r.event_time_ms)).or_default().push(i);
    }
    let mut tasks = Vec::with_capacity(hours.len());
    for (hour, rows) in hours {
        let first = &records[rows[0]].position;
        let last = &records[rows[rows.len() - 1]].position;
        let key = object_key(&shared.prefix, hour, &label, first, last);
        let shared = shared.clone();
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            let _worker = shared.flushers.acquire().await.map_err(|e| Error::Config {
                reason: format!("flush workers closed: {e}"),
            })?;
            retry(&shared.options.upload, "write object", || {
                write_object(&shared, &key, &records, &rows)
            })
            .await
        }));
    }
    let objects = tasks.len() as u64;
    let c = &shared.counters;
    for task in tasks {
        let written = task.await.map_err(|e| Error::Config {
            reason: format!("an object write task failed: {e}"),
        })??;
        c.objects.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(written.bytes, Ordering::Relaxed);
        c.objects_existing
            .fetch_add(u64::from(written.existed), Ordering::Relaxed);
    }
    retry(&shared.options.upload, "commit batch", || async {
        shared
            .checkpoints
            .commit_batch(&intent.lane, intent.seq)
            .await
            .map_err(|e| checkpoint_error(&intent.lane, e))
    })
    .await?;
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.records.fetch_add(n, Ordering::Relaxed);
    tracing::debug!(lane = %intent.lane, seq = intent.seq, records = n, objects, "batch archived");
    Ok(BatchReport {
        seq: intent.seq,
        records: n,
        rows: objects,
        apply: ApplyReport::default(),
        end: intent.end,
        duplicates: 0,
        expired: 0,
    })
}

/// Encodes the rows `rows` of `records` into one Parquet object at `key`.
async fn write_object<T>(
    shared: &Shared<T>,
    key: &Path,
    records: &[Record<T>],
    rows: &[usize],
) -> Result<Written> {
    let sink = ObjectSink::new(shared.store.clone(), key.clone(), shared.options.upload);
    let mut object = ParquetObject::new(
        sink,
        shared.encoder.schema().clone(),
        shared.properties.clone(),
    )?;
    for group in rows.chunks(shared.options.row_group_rows) {
        let refs: Vec<&Record<T>> = group.iter().map(|&i| &records[i]).collect();
        let batch = shared
            .encoder
            .encode(&refs)
            .map_err(|e| encode_error(key.as_ref(), e))?;
        object.write(&batch).await?;
    }
    object.close().await
}

/// A UTC hour: (year, month, day, hour).
type Hour = (i32, u32, u32, u32);

/// The UTC hour of an event time.
fn hour_of(ms: i64) -> Option<Hour> {
    let t = DateTime::from_timestamp_millis(ms)?;
    Some((t.year(), t.month(), t.day(), t.hour()))
}

/// `<prefix>/year=YYYY/month=MM/day=DD/hour=HH/part-<lane>-<first>-<last>.parquet`.
fn object_key(
    prefix: &Path,
    hour: Option<Hour>,
    label: &str,
    first: &Position,
    last: &Position,
) -> Path {
    const NONE: &str = "__HIVE_DEFAULT_PARTITION__";
    let partition = match hour {
        Some((y, m, d, h)) => format!("year={y:04}/month={m:02}/day={d:02}/hour={h:02}"),
        None => format!("year={NONE}/month={NONE}/day={NONE}/hour={NONE}"),
    };
    let file = format!(
        "part-{label}-{}-{}.parquet",
        position_label(first),
        position_label(last)
    );
    let mut key = prefix.clone();
    for part in partition.split('/').chain([file.as_str()]) {
        key = key.join(part);
    }
    key
}

fn position_label(p: &Position) -> String {
    match p {
        Position::Offset { offset } => format!("{offset:020}"),
        Position::Sequence { sequence } => sequence.to_string(),
        Position::Object { index, unit, .. } => format!("{index}_{unit}"),
        other => other.to_string().replace(['/', ':', ' '], "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hive_partitioned_by_event_hour() {
        let prefix = Path::from("lake/events");
        let key = object_key(
            &prefix,
            hour_of(1_778_248_800_000),
            "kafka-page_views-3",
            &Position::Offset { offset: 100 },
            &Position::Offset { offset: 199 },
        );
        assert_eq!(
            key.as_ref(),
            "lake/events/year=2026/month=05/day=08/hour=14/\
             part-kafka-page_views-3-00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(hour_of(-1), Some((1969, 12, 31, 23)));
        assert_eq!(hour_of(i64::MAX), None);
        let key = object_key(
            &prefix,
            None,
            "l",
            &Position::Sequence {
                sequence: "4959".into(),
            },
            &Position::Sequence {
                sequence: "4960".into(),
            },
        );
        assert!(key.as_ref().contains("year=__HIVE_DEFAULT_PARTITION__/"));
        assert!(key.as_ref().ends_with("part-l-4959-4960.parquet"));
    }
}
