//! The snapshot source contract: work units, chunks, positions.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use murmur_core::{HandoffToken, Position, Record, RecordCheck};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::bad::BadRecordSink;
use crate::error::{Error, Result};

/// Hive partition values parsed from an object key
/// (`events/year=2026/month=05/day=08/part-0.parquet` gives
/// `year=2026, month=05, day=08`).
///
/// Values are kept as written (percent-decoded), so `05` stays `05`;
/// [`get_i64`](Self::get_i64) compares numerically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partitions(BTreeMap<String, String>);

impl Partitions {
    /// The value of a partition column, as written in the key.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.0.get(column).map(String::as_str)
    }

    /// The value of a partition column parsed as an integer (`day=08` is 8).
    pub fn get_i64(&self, column: &str) -> Option<i64> {
        self.get(column)?.parse().ok()
    }

    /// All partition columns and values, ordered by column name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no partition values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn insert(&mut self, column: String, value: String) {
        self.0.insert(column, value);
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Partitions {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Partitions(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// One independently readable piece of a snapshot: an object (JSON Lines,
/// Parquet) or a DynamoDB scan segment.
///
/// Units are listed in a deterministic order (objects: lexicographic by key)
/// and numbered from 0 in that order, so the same listing always yields the
/// same units, lane plan ([`LanePlan`](crate::LanePlan)) and positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkUnit {
    /// Position of the unit in the source's listing (after filtering).
    pub index: u64,
    /// Object key, or `<table>#segment-<s>-of-<n>` for a DynamoDB segment.
    pub key: Arc<str>,
    /// Size in bytes (objects); 0 when unknown (scan segments).
    pub size: u64,
    /// Hive partition values parsed from the key (empty for scan segments).
    pub partitions: Partitions,
    /// The object's ETag in the listing, when the store gives one (S3 and
    /// local directories do). Every read of the object asks for exactly
    /// that version (`If-Match`), and a backfill's plan covers it: an object
    /// rewritten since the listing, even to the same size, is
    /// [`Error::Rewritten`](crate::Error::Rewritten), never other records
    /// at the same positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<Arc<str>>,
}

/// A run of consecutive records of one unit, cut at a resumable boundary.
///
/// Chunk positions (see the crate docs, "Positions"):
///
/// * objects: [`Position::Object`] whose `unit` is the 0-based index of the
///   first line (JSON Lines) or row (Parquet) of the chunk; `end` is the
///   index after the chunk's last line/row, i.e. the next chunk's `start`;
/// * DynamoDB: [`Position::Scan`] with the last evaluated key *before* the
///   page; the last page of a segment ends at `last_key: Some("{}")`.
///
/// The chunks of one read are contiguous (`end` of one is `start` of the
/// next) and the last one has `last == true`; every read yields at least
/// one chunk. A chunk may hold no records (a Parquet row group pruned by
/// statistics, lines that were all bad or filtered). Reading the same unit
/// again from a chunk's `start` reproduces the identical chunk (same `end`,
/// same records) as long as the data and the chunk size settings are
/// unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk<T> {
    /// Where the chunk starts (inclusive).
    pub start: Position,
    /// Where the chunk ends (exclusive): the position to resume from.
    pub end: Position,
    /// Whether this is the unit's final chunk.
    pub last: bool,
    /// The decoded records, in source order. Each record's
    /// [`position`](Record::position) is its row or line within the
    /// chunk's object ([`Position::Row`], from 0) or its page's start
    /// (DynamoDB).
    pub records: Vec<Record<T>>,
    /// How many of the chunk's lines/rows/items were bad: reported to the
    /// source's [`BadRecordSink`] (and dead-lettered), not in `records`.
    /// A backfill commits the count with the chunk's batch
    /// ([`LaneState::bad_records`](murmur_core::LaneState::bad_records)).
    pub bad: u64,
}

/// A stream of chunks of one unit (or of many, see [`SnapshotSource::scan`]).
pub type ChunkStream<T> = BoxStream<'static, Result<Chunk<T>>>;

/// A snapshot source: lists its units and reads each from a position.
///
/// Implemented by [`JsonLinesSource`](crate::JsonLinesSource),
/// [`ParquetSource`](crate::ParquetSource) and (feature `dynamodb`)
/// `DynamoDbScanSource`. Sources are cheap to clone and share their
/// [`BadRecordSink`].
#[async_trait::async_trait]
pub trait SnapshotSource: Send + Sync {
    /// The decoded event type.
    type Item: Send + 'static;

    /// Lists the units to read, deterministically (same data, same list).
    async fn list_units(&self) -> Result<Vec<WorkUnit>>;

    /// Reads `unit` from `from`: [`Position::Beginning`], a chunk's `start`
    /// or `end` (for objects any line/row index), or [`Position::End`]
    /// (yields one empty last chunk).
    ///
    /// The stream is lazy: nothing is fetched until it is first polled. It
    /// then decodes on its own tokio task, a few chunks ahead of the
    /// consumer, and stops when dropped. It must be polled inside a tokio
    /// runtime.
    fn read(&self, unit: &WorkUnit, from: &Position) -> ChunkStream<Self::Item>;

    /// The handoff token for the live stage, if the source carries one (an
    /// explicit token, or the `_murmur_handoff.json` manifest beside the
    /// data) or captures one (a DynamoDB scan's stream position, taken when
    /// this is called). The backfill driver asks once, when a run begins,
    /// and keeps the answer with the run.
    async fn handoff(&self) -> Result<Option<HandoffToken>>;

    /// Where undecodable records go; shared by all reads of this source.
    fn bad_records(&self) -> &Arc<BadRecordSink>;

    /// Installs `check` for every record decoded from then on: a record it
    /// refuses is a bad record of its chunk — counted by
    /// [`bad_records`](Self::bad_records), logged, dead-lettered with its
    /// line or row (a JSON Lines line with its text) and the check's
    /// reason, held to `max_bad_records` — not a record of the chunk. A
    /// backfill installs its pipeline's check
    /// ([`Pipeline::record_check`](murmur_core::Pipeline::record_check)),
    /// so a record the pipeline would refuse (a key function giving an
    /// empty key, an event time no window holds) is a bad record like one
    /// that does not decode, instead of an error that stops its lane at the
    /// same record on every resume. A read re-reading a chunk refuses the
    /// same records again, so the chunk's dead letters and count stay the
    /// same.
    ///
    /// The last check installed holds for the reads that start after it
    /// (a source read by two pipelines at once would need two sources).
    /// The default ignores every check: its records reach the lane
    /// unchecked, and one the pipeline refuses there fails the lane with an
    /// error naming where it was read.
    fn check_records(&self, check: RecordCheck<Self::Item>) {
        drop(check);
    }

    /// Gives back the record vector of a chunk this source yielded, once
    /// the consumer has taken its records out (any left are dropped), so a
    /// later chunk of any read of this source fills the same allocation.
    ///
    /// Optional, and only about speed: a vector not given back is freed as
    /// usual. The object sources keep a bounded number of them; the
    /// default drops it. A backfill lane gives back every chunk's vector:
    /// a fresh one per chunk (a megabyte at 8192 rows) was memory the
    /// allocator had returned to the OS and the kernel zeroed again. The
    /// snapshot benchmark's Parquet scan + aggregate took 2-4x fewer page
    /// faults with vectors given back, and was about 5% faster (7 of 8
    /// interleaved rounds).
    fn recycle(&self, records: Vec<Record<Self::Item>>) {
        drop(records);
    }

    /// The settings besides the units that decide what a read yields: where
    /// chunks end (`chunk_rows=8192`) and which records they keep (an
    /// event-time range, a scan filter). A backfill run keeps them in its
    /// plan: a resume with others would re-read a pending batch's range
    /// into other records. Empty by default.
    fn plan_settings(&self) -> String {
        String::new()
    }

    /// Reads many units with at most `concurrency` of them in flight at
    /// once. Chunks of one unit arrive in order; chunks of different units
    /// interleave (tell them apart by `start`). An error ends only the
    /// stream of the unit it came from.
    fn scan(&self, units: &[(WorkUnit, Position)], concurrency: usize) -> ChunkStream<Self::Item> {
        let reads: Vec<_> = units.iter().map(|(u, p)| self.read(u, p)).collect();
        stream::iter(reads)
            .flatten_unordered(concurrency.max(1))
            .boxed()
    }

    /// Reads `units` one after another, in the given order, as one stream
    /// (a lane's work): the chunks of each unit in order, then the next
    /// unit's. Up to `ahead` following units are already being read while
    /// the current one is consumed, so a lane never waits for an object to
    /// open and its first rows to decode at a unit boundary (the hourly
    /// files of a Spark export are small: that wait was a lane's idle time
    /// once per file). An error ends the stream.
    fn read_in_order(
        &self,
        units: &[(WorkUnit, Position)],
        ahead: usize,
    ) -> ChunkStream<Self::Item> {
        let reads: Vec<_> = units
            .iter()
            .map(|(u, p)| (Arc::clone(&u.key), self.read(u, p)))
            .collect();
        // `buffered` takes in a read when the one `ahead + 1` before it is
        // handed out, and `start` begins it right then.
        let started = stream::iter(reads).map(|(unit, chunks)| start(unit, chunks));
        let mut failed = false;
        started
            .buffered(ahead + 1)
            .flatten()
            .take_while(move |item| {
                let go = !failed;
                failed |= item.is_err();
                futures::future::ready(go)
            })
            .boxed()
    }
}

/// Begins `chunks` now, on its own task, and resolves to the stream with
/// its first chunk put back.
///
/// A read started by the future itself would start only when first polled,
/// and `buffered` polls a future it just took in only once the ones before
/// it are handed out and it has to wait: each group of `ahead + 1` units
/// was opened together, and the lane waited at the first unit of the next
/// group. The task is aborted if the future is dropped first.
fn start<T: Send + 'static>(
    unit: Arc<str>,
    mut chunks: ChunkStream<T>,
) -> impl Future<Output = ChunkStream<T>> {
    let task = tokio::runtime::Handle::try_current().map(|runtime| {
        AbortOnDrop(Some(runtime.spawn(async move {
            let first = chunks.next().await;
            (first, chunks)
        })))
    });
    async move {
        let failed = |reason: String| {
            let err = Error::Reader {
                unit: unit.to_string(),
                reason,
            };
            stream::once(async move { Err(err) }).boxed()
        };
        let mut task = match task {
            Ok(task) => task,
            Err(e) => return failed(format!("must be polled inside a tokio runtime: {e}")),
        };
        let Some(handle) = task.0.as_mut() else {
            return failed("reader task missing".into());
        };
        match handle.await {
            Ok((first, chunks)) => stream::iter(first).chain(chunks).boxed(),
            Err(e) if e.is_panic() => failed(format!("reader task panicked: {e}")),
            Err(e) => failed(format!("reader task failed: {e}")),
        }
    }
}

/// The lookahead for [`SnapshotSource::read_in_order`] that a backfill lane
/// uses: three units, so the requests that open an object (a footer and
/// ranged GETs on S3) overlap the fold of the ones before. With 20 ms per
/// request, one lane reading 48 hourly Parquet files was 2.0x as fast one
/// unit ahead and 3.8x three ahead; with the lane also busy 20 ms after
/// each file, 2.0x and 2.9x (1.10 s, where its own work alone is 0.96 s)
/// (`cargo bench -p murmur-source-snapshot --bench snapshot`,
/// open-latency). Each unit read ahead holds at most a reader's few
/// decoded chunks.
pub const UNITS_AHEAD: usize = 3;

/// The sending half given to a reader task.
pub(crate) struct ChunkSender<T>(mpsc::Sender<Result<Chunk<T>>>);

impl<T> ChunkSender<T> {
    /// Sends a chunk; `false` when the consumer is gone (stop reading).
    pub(crate) async fn send(&self, chunk: Chunk<T>) -> bool {
        self.0.send(Ok(chunk)).await.is_ok()
    }
}

/// Aborts the reader task when the stream is dropped.
struct AbortOnDrop<R = ()>(Option<tokio::task::JoinHandle<R>>);

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Chunks a reader decodes ahead of its consumer, so it keeps reading
/// while the lane folds or writes a batch.
const READ_AHEAD: usize = 4;

/// Runs `produce` on its own task once the returned stream is first polled,
/// forwarding its chunks ([`READ_AHEAD`] chunks of lookahead). An error
/// returned by `produce` is the stream's last item; a task that ends without
/// a last chunk or an error (a panic) is reported as [`Error::Reader`].
pub(crate) fn spawn_reader<T, F, Fut>(unit: Arc<str>, produce: F) -> ChunkStream<T>
where
    T: Send + 'static,
    F: FnOnce(ChunkSender<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    struct State<T> {
        rx: mpsc::Receiver<Result<Chunk<T>>>,
        task: AbortOnDrop,
        unit: Arc<str>,
        done: bool,
    }
    stream::once(async move {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) => h,
            Err(e) => {
                let err = Error::Reader {
                    unit: unit.to_string(),
                    reason: format!("must be polled inside a tokio runtime: {e}"),
                };
                return stream::once(async move { Err(err) }).boxed();
            }
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let task = handle.spawn(async move {
            let errors = tx.clone();
            if let Err(e) = produce(ChunkSender(tx)).await {
                let _ = errors.send(Err(e)).await;
            }
        });
        let state = State {
            rx,
            task: AbortOnDrop(Some(task)),
            unit,
            done: false,
        };
        stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(item) => {
                    st.done = match &item {
                        Ok(chunk) => chunk.last,
                        Err(_) => true,
                    };
                    Some((item, st))
                }
                None => {
                    // The task ended without a last chunk or an error.
                    st.done = true;
                    let reason = match st.task.0.take() {
                        Some(handle) => match handle.await {
                            Err(e) if e.is_panic() => format!("reader task panicked: {e}"),
                            Err(e) => format!("reader task failed: {e}"),
                            Ok(()) => "reader task ended before the last chunk".to_string(),
                        },
                        None => "reader task ended before the last chunk".to_string(),
                    };
                    let err = Error::Reader {
                        unit: st.unit.to_string(),
                        reason,
                    };
                    Some((Err(err), st))
                }
            }
        })
        .boxed()
    })
    .flatten()
    .boxed()
}
