//! Shared test helpers: service gating, a counting object store, the
//! Spark-shaped data set generator, and chunk-invariant checks.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use futures::TryStreamExt as _;
use futures::stream::BoxStream;
use murmur_core::{CountEvent, Position};
use murmur_source_snapshot::{Chunk, SnapshotSource, WorkUnit};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression as ParquetCodec;
use parquet::file::properties::WriterProperties;

/// The value of a required environment variable, or `None` after printing a
/// skip notice. Under `CI=true` a missing variable fails the test instead:
/// CI must run everything (`cargo xtask test` sets these up).
pub fn require_env(var: &str, needed_for: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set but CI=true: {needed_for} must run in CI (use `cargo xtask test`)"
            );
            // Straight to stderr: libtest captures `eprintln!`, and a skip
            // must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {var} is not set, so {needed_for} did not run (use `cargo xtask test`)"
            );
            None
        }
    }
}

/// A Python with pyarrow and boto3 (`MURMUR_PYTHON`), gated like [`require_env`].
pub fn python(needed_for: &str) -> Option<PathBuf> {
    require_env("MURMUR_PYTHON", needed_for).map(PathBuf::from)
}

/// Runs a Python script with arguments; panics with its stderr on failure.
pub fn run_python(python: &std::path::Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A unique name for buckets / tables / prefixes.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An S3 store on a fresh moto bucket, or `None` (skip) without moto.
/// The bucket is created with boto3 through `MURMUR_PYTHON`.
pub fn s3_store(needed_for: &str) -> Option<(Arc<dyn ObjectStore>, String)> {
    let endpoint = require_env("AWS_ENDPOINT_URL", needed_for)?;
    let python = python(needed_for)?;
    let bucket = unique("snap");
    run_python(&python, CREATE_BUCKET, &[&endpoint, &bucket]);
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .build()
        .expect("s3 store");
    Some((Arc::new(store), bucket))
}

const CREATE_BUCKET: &str = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=sys.argv[2])
"#;

/// Uploads a local directory tree into a bucket (boto3).
pub fn upload_dir(python: &std::path::Path, dir: &std::path::Path, bucket: &str) {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    run_python(
        python,
        UPLOAD_DIR,
        &[&endpoint, bucket, dir.to_str().unwrap()],
    );
}

const UPLOAD_DIR: &str = r#"
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
root = sys.argv[3]
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, sys.argv[2], os.path.relpath(p, root))
"#;

/// Which request an object store served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    GetRange,
    Head,
}

/// Wraps a store and counts get / ranged get / head calls per path (a
/// `get_ranges` call counts once) and the bytes fetched per path.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Mutex<BTreeMap<(String, Op), u64>>,
    bytes: Mutex<BTreeMap<String, u64>>,
    /// Added to every read (a remote store's time to first byte).
    latency: Option<std::time::Duration>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Self::with_latency(inner, None)
    }

    /// A counting store whose reads (`get`, `head`, ranges) each wait
    /// `latency` first, as a request to S3 does.
    pub fn with_latency(
        inner: Arc<dyn ObjectStore>,
        latency: Option<std::time::Duration>,
    ) -> Arc<Self> {
        Arc::new(CountingStore {
            inner,
            counts: Mutex::new(BTreeMap::new()),
            bytes: Mutex::new(BTreeMap::new()),
            latency,
        })
    }

    async fn wait(&self) {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
    }

    fn count(&self, path: &Path, op: Op) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((path.to_string(), op))
            .or_default() += 1;
    }

    fn add_bytes(&self, path: &Path, n: u64) {
        *self
            .bytes
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default() += n;
    }

    /// Bytes fetched from `path` (ranged requests: the ranges; a whole-object
    /// get: the object size).
    pub fn bytes_of(&self, path: &str) -> u64 {
        self.bytes.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests of any kind per path.
    pub fn requests_per_path(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((path, _), n) in self.counts.lock().unwrap().iter() {
            *out.entry(path.clone()).or_default() += n;
        }
        out
    }

    /// Requests of one kind per path.
    pub fn of(&self, op: Op) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, o), _)| *o == op)
            .map(|((p, _), n)| (p.clone(), *n))
            .collect()
    }

    pub fn reset(&self) {
        self.counts.lock().unwrap().clear();
        self.bytes.lock().unwrap().clear();
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head {
            Op::Head
        } else if options.range.is_some() {
            Op::GetRange
        } else {
            Op::Get
        };
        self.count(location, op);
        self.wait().await;
        let result = self.inner.get_opts(location, options).await?;
        if op != Op::Head {
            self.add_bytes(location, result.range.end - result.range.start);
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.count(location, Op::GetRange);
        self.add_bytes(location, ranges.iter().map(|r| r.end - r.start).sum());
        self.wait().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The shape of a generated Spark-like data set: `days` days of May 2026
/// from the 1st, `hours` hourly partitions each, `rows` rows per partition.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub days: u32,
    pub hours: u32,
    pub rows: usize,
    pub entities: u64,
    /// Parquet rows per row group.
    pub row_group_rows: usize,
}

/// Ground truth of a generated data set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Truth {
    pub rows: u64,
    pub total: i64,
    /// (rows, sum of count) per day of month.
    pub per_day: BTreeMap<u32, (u64, i64)>,
    /// sum of count per (entity, day).
    pub per_entity_day: HashMap<(String, u32), i64>,
}

impl Truth {
    pub fn add(&mut self, entity: &str, count: i64, t_ms: i64) {
        let day = day_of(t_ms);
        self.rows += 1;
        self.total += count;
        let d = self.per_day.entry(day).or_default();
        d.0 += 1;
        d.1 += count;
        *self
            .per_entity_day
            .entry((entity.to_string(), day))
            .or_default() += count;
    }

    pub fn of_events<'a>(events: impl IntoIterator<Item = &'a CountEvent>) -> Truth {
        let mut t = Truth::default();
        for e in events {
            t.add(&e.entity_id, e.count, e.occurred_at_ms);
        }
        t
    }
}

/// 2026-05-01T00:00:00Z in Unix milliseconds.
pub const MAY_1_2026_MS: i64 = 1_777_593_600_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

pub fn day_of(t_ms: i64) -> u32 {
    ((t_ms - MAY_1_2026_MS).div_euclid(DAY_MS) + 1) as u32
}

/// The deterministic rows of one hourly partition: (entity, count, time ms).
pub fn partition_rows(spec: &Spec, day: u32, hour: u32) -> Vec<(String, i64, i64)> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ ((day as u64) << 32 | hour as u64);
    let mut next = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let start = MAY_1_2026_MS + (day as i64 - 1) * DAY_MS + hour as i64 * HOUR_MS;
    (0..spec.rows)
        .map(|_| {
            let entity = format!("entity-{:05}", next() % spec.entities);
            let count = (next() % 9) as i64 + 1;
            let t = start + (next() % HOUR_MS as u64) as i64;
            (entity, count, t)
        })
        .collect()
}

pub fn partition_dir(prefix: &str, day: u32, hour: u32) -> String {
    format!("{prefix}/year=2026/month=05/day={day:02}/hour={hour:02}")
}

/// The canonical Parquet schema (Spark leaves the partition columns out).
pub fn parquet_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("occurred_at_unix_ms", DataType::Int64, false),
    ]))
}

/// Encodes rows as one Parquet file.
pub fn parquet_bytes(
    rows: &[(String, i64, i64)],
    codec: ParquetCodec,
    row_group_rows: usize,
) -> Vec<u8> {
    let schema = parquet_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

/// One canonical JSON line.
pub fn json_line(entity: &str, count: i64, t_ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(t_ms).unwrap();
    let day = day_of(t_ms);
    format!(
        r#"{{"entity_id":"{entity}","count":{count},"occurred_at":"{}","year":2026,"month":5,"day":{day},"hour":{}}}"#,
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        t.format("%H").to_string().parse::<u32>().unwrap()
    )
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    JsonLines,
}

/// Writes a Spark-shaped Hive-partitioned data set under `prefix` with
/// `_SUCCESS` markers and `.crc` side files, codecs rotating per partition
/// (Parquet: snappy, zstd, gzip, lz4; JSON Lines: .gz, .zst, plain).
pub async fn write_dataset(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    spec: &Spec,
    format: Format,
) -> Truth {
    let mut truth = Truth::default();
    for day in 1..=spec.days {
        for hour in 0..spec.hours {
            let rows = partition_rows(spec, day, hour);
            for (e, c, t) in &rows {
                truth.add(e, *c, *t);
            }
            let dir = partition_dir(prefix, day, hour);
            let i = (day * 24 + hour) as usize;
            let (name, bytes) = match format {
                Format::Parquet => {
                    let codecs = [
                        (ParquetCodec::SNAPPY, "snappy"),
                        (ParquetCodec::ZSTD(Default::default()), "zstd"),
                        (ParquetCodec::GZIP(Default::default()), "gz"),
                        (ParquetCodec::LZ4_RAW, "lz4"),
                    ];
                    let (codec, tag) = codecs[i % codecs.len()];
                    (
                        format!("part-00000-{tag}.c000.parquet"),
                        parquet_bytes(&rows, codec, spec.row_group_rows),
                    )
                }
                Format::JsonLines => {
                    let mut text = String::new();
                    for (e, c, t) in &rows {
                        text += &json_line(e, *c, *t);
                        text.push('\n');
                    }
                    match i % 3 {
                        0 => ("part-00000.json.gz".to_string(), gzip(text.as_bytes())),
                        1 => ("part-00000.json.zst".to_string(), zstd(text.as_bytes())),
                        _ => ("part-00000.json".to_string(), text.into_bytes()),
                    }
                }
            };
            put(store, &format!("{dir}/{name}"), bytes).await;
            put(store, &format!("{dir}/.{name}.crc"), b"crc".to_vec()).await;
        }
    }
    put(store, &format!("{prefix}/_SUCCESS"), Vec::new()).await;
    truth
}

/// The error that ends the read of `unit` from `from` (which must fail).
pub async fn read_error<S>(
    source: &S,
    unit: &WorkUnit,
    from: &Position,
) -> murmur_source_snapshot::Error
where
    S: SnapshotSource,
    S::Item: fmt::Debug,
{
    source
        .read(unit, from)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err()
}

pub async fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store.put(&Path::from(key), bytes.into()).await.unwrap();
}

/// Reads every unit from the beginning (at most `concurrency` at once),
/// checks the chunk invariants of every unit and returns all records.
pub async fn read_all<S>(
    source: &S,
    units: &[WorkUnit],
    concurrency: usize,
) -> Vec<murmur_core::Record<S::Item>>
where
    S: SnapshotSource,
{
    let starts: Vec<_> = units
        .iter()
        .map(|u| (u.clone(), Position::Beginning))
        .collect();
    let chunks: Vec<Chunk<S::Item>> = source
        .scan(&starts, concurrency)
        .try_collect()
        .await
        .unwrap();
    let mut by_unit: BTreeMap<String, Vec<&Chunk<S::Item>>> = BTreeMap::new();
    for c in &chunks {
        by_unit.entry(unit_key(&c.start)).or_default().push(c);
    }
    assert_eq!(by_unit.len(), units.len(), "every unit yields chunks");
    for (key, cs) in &by_unit {
        check_unit_chunks(key, cs);
    }
    chunks.into_iter().flat_map(|c| c.records).collect()
}

/// The unit key of an object or scan position.
pub fn unit_key(p: &Position) -> String {
    match p {
        Position::Object { key, .. } => key.to_string(),
        Position::Scan { segment, .. } => format!("segment-{segment}"),
        other => panic!("unexpected chunk position {other}"),
    }
}

/// Chunks of one unit are contiguous from the beginning, only the final one
/// is `last`, and records lie inside their chunk.
pub fn check_unit_chunks<T>(key: &str, chunks: &[&Chunk<T>]) {
    assert!(!chunks.is_empty());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.last, i + 1 == chunks.len(), "{key}: chunk {i} last flag");
        if i > 0 {
            assert_eq!(chunks[i - 1].end, c.start, "{key}: chunks are contiguous");
        }
        if let (Position::Object { unit: s, .. }, Position::Object { unit: e, .. }) =
            (&c.start, &c.end)
        {
            assert!(s <= e, "{key}: chunk start <= end");
            for r in &c.records {
                let Position::Row { row: at } = r.position else {
                    panic!("record position")
                };
                assert!(*s <= at && at < *e, "{key}: record {at} inside [{s}, {e})");
            }
        }
    }
    if let Position::Object { unit, .. } = &chunks[0].start {
        assert_eq!(*unit, 0, "{key}: first chunk starts at 0");
    }
}
