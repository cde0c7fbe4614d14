//! Shared helpers: events, Kafka (librdkafka's mock cluster), S3 on moto,
//! reading archived objects back with the parquet crate.

use bytes::Bytes;
use futures::TryStreamExt as _;
use murmur_core::{CheckpointStore, CountEvent, LaneId, Position};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

pub const T0: i64 = 1_778_198_400_000; // 2026-05-08T00:00:00Z
pub const HOUR: i64 = 3_600_000;

/// Event `i` of partition `p`: 37 s apart, so a few hundred span hours.
pub fn event(p: i32, i: i64) -> CountEvent {
    CountEvent {
        entity_id: format!("user-{}", (i * 7 + i64::from(p)) % 13).into(),
        count: 1 + i % 3,
        occurred_at_ms: T0 + i * 37_000 + i64::from(p),
        event_id: Some(format!("{p}-{i}")),
    }
}

pub fn payload(e: &CountEvent) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

pub async fn produce(brokers: &str, topic: &str, partition: i32, payloads: Vec<Vec<u8>>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    for body in payloads {
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Resolves once every lane in `lanes` is committed at or past `offset`.
pub async fn caught_up(checkpoints: Arc<dyn CheckpointStore>, lanes: Vec<LaneId>, offset: i64) {
    loop {
        let mut done = true;
        for lane in &lanes {
            let at = checkpoints.lane(lane).await.unwrap().map(|s| s.position);
            if !matches!(at, Some(Position::Offset { offset: o }) if o >= offset) {
                done = false;
            }
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One archived object read back.
#[derive(Debug)]
pub struct Object {
    pub key: String,
    pub events: Vec<CountEvent>,
}

/// Every `.parquet` object under `prefix`, in key order, decoded.
pub async fn read_objects(store: &dyn ObjectStore, prefix: &Path) -> Vec<Object> {
    let mut metas: Vec<_> = store.list(Some(prefix)).try_collect().await.unwrap();
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::new();
    for meta in metas {
        if !meta.location.as_ref().ends_with(".parquet") {
            continue;
        }
        let bytes: Bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push(Object {
            key: meta.location.to_string(),
            events: decode(bytes),
        });
    }
    out
}

pub fn decode(bytes: Bytes) -> Vec<CountEvent> {
    use arrow_array::cast::AsArray as _;
    use arrow_array::types::Int64Type;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column_by_name("entity_id")
            .unwrap()
            .as_string::<i32>();
        let counts = batch
            .column_by_name("count")
            .unwrap()
            .as_primitive::<Int64Type>();
        let at = batch
            .column_by_name("occurred_at_unix_ms")
            .unwrap()
            .as_primitive::<Int64Type>();
        let event_ids = batch.column_by_name("event_id").unwrap().as_string::<i32>();
        for row in 0..batch.num_rows() {
            events.push(CountEvent {
                entity_id: ids.value(row).into(),
                count: counts.value(row),
                occurred_at_ms: at.value(row),
                event_id: (!arrow_array::Array::is_null(event_ids, row))
                    .then(|| event_ids.value(row).to_owned()),
            });
        }
    }
    events
}

/// The `year=/month=/day=/hour=` of a key, as the UTC hour's start (ms).
pub fn partition_hour(key: &str) -> i64 {
    let field = |name: &str| -> u32 {
        let start = key.find(&format!("{name}=")).unwrap() + name.len() + 1;
        key[start..].split('/').next().unwrap().parse().unwrap()
    };
    use chrono::TimeZone as _;
    chrono::Utc
        .with_ymd_and_hms(
            i32::try_from(field("year")).unwrap(),
            field("month"),
            field("day"),
            field("hour"),
            0,
            0,
        )
        .unwrap()
        .timestamp_millis()
}

pub fn require_env(name: &str, needed_for: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("SKIP {needed_for}: {name} is not set (run `cargo xtask test`)");
            None
        }
    }
}

/// A unique name for buckets, tables, prefixes.
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

/// Runs a python snippet with `MURMUR_PYTHON` (the test venv: boto3,
/// pyarrow, DuckDB); returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var("MURMUR_PYTHON").expect("MURMUR_PYTHON");
    let out = std::process::Command::new(python)
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
    String::from_utf8(out.stdout).unwrap()
}

/// An S3 store on a fresh moto bucket, or `None` (skip) without moto.
pub fn s3_store(needed_for: &str) -> Option<(Arc<dyn ObjectStore>, String)> {
    let endpoint = require_env("AWS_ENDPOINT_URL", needed_for)?;
    require_env("MURMUR_PYTHON", needed_for)?;
    let bucket = unique("arch");
    python(
        r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=sys.argv[2])
"#,
        &[&endpoint, &bucket],
    );
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .build()
        .unwrap();
    Some((Arc::new(store), bucket))
}
