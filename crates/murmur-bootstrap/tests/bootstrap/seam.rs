//! The backfill/live seam: one `Pipeline` value, a backfill from a JSON
//! Lines export, then live Kafka (librdkafka's in-process mock cluster) from
//! the handoff token — for a Kafka-offsets token and an event-time cut. The
//! stored values equal the fold of every event exactly once, also after the
//! live worker crashes part-way through a batch.

use murmur_bootstrap::{BackfillOptions, LiveOptions, backfill, live};
use murmur_core::monoid::{DynMonoid, Sum};
use murmur_core::store::{ApplyReport, RowKey, StateStore, StoredValue, WriteBatch};
use murmur_core::{
    CheckpointStore, FlushPolicy, HandoffToken, LaneId, MemoryStore, Pipeline, Position,
    StoreError, Window,
};
use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, LiveSource as _, kafka_lane};
use murmur_source_snapshot::{
    BadRecordPolicy, JsonLinesOptions, JsonLinesSource, ObjectListing, SerdeLines,
    SnapshotSource as _,
};
use object_store::ObjectStoreExt as _;
use object_store::memory::InMemory;
use object_store::path::Path;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The event type both stages decode into.
#[derive(Debug, Clone, serde::Deserialize)]
struct Ev {
    entity_id: String,
    count: i64,
    occurred_at_unix_ms: i64,
}

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_778_198_400_000;
const PARTITIONS: i32 = 3;

/// The events [`refusing_e3`] refuses.
fn refused(e: &(String, i64, i64)) -> bool {
    e.0 == "e3"
}

/// [`pipeline`], but its key function gives `e3`'s events an empty key:
/// the pipeline refuses them.
fn refusing_e3() -> Pipeline<Ev, Sum> {
    Pipeline::builder("seam", Sum)
        .key_by(|e: &Ev| {
            if e.entity_id == "e3" {
                String::new()
            } else {
                e.entity_id.clone()
            }
        })
        .value(|e| e.count)
        .window(Window::hour())
        .build()
        .unwrap()
}

fn pipeline() -> Pipeline<Ev, Sum> {
    Pipeline::builder("seam", Sum)
        .key_by(|e: &Ev| e.entity_id.clone())
        .value(|e| e.count)
        .window(Window::hour())
        .build()
        .unwrap()
}

/// Event `i` of partition `p`: times increase with `i`.
fn ev(p: i32, i: i64) -> (String, i64, i64) {
    (
        format!("e{}", (i * 7 + p as i64) % 11),
        1 + (i % 3),
        T0 + i * 60_000 + p as i64,
    )
}

fn json(e: &(String, i64, i64)) -> String {
    format!(
        r#"{{"entity_id":"{}","count":{},"occurred_at_unix_ms":{}}}"#,
        e.0, e.1, e.2
    )
}

async fn produce(brokers: &str, p: i32, range: std::ops::Range<i64>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for i in range {
        let e = ev(p, i);
        producer
            .send(
                FutureRecord::<(), _>::to("events")
                    .partition(p)
                    .payload(&json(&e))
                    .timestamp(e.2),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

/// A JSON Lines export of events `[0, n)` of each partition.
async fn export(n: i64) -> JsonLinesSource<SerdeLines<Ev>> {
    export_with(n, BadRecordPolicy::default()).await
}

/// [`export`] with `bad` for its bad records.
async fn export_with(n: i64, bad: BadRecordPolicy) -> JsonLinesSource<SerdeLines<Ev>> {
    JsonLinesSource::with_options(
        ObjectListing::new(export_store(n).await, Path::from("export")),
        SerdeLines::new(|e: &Ev| e.occurred_at_unix_ms),
        JsonLinesOptions::default(),
        bad,
    )
    .unwrap()
}

/// The objects of [`export`]: `export/part-<p>.json`.
async fn export_store(n: i64) -> Arc<InMemory> {
    let store = Arc::new(InMemory::new());
    for p in 0..PARTITIONS {
        let text: String = (0..n).map(|i| json(&ev(p, i)) + "\n").collect();
        store
            .put(&Path::from(format!("export/part-{p}.json")), text.into())
            .await
            .unwrap();
    }
    store
}

fn truth(events: impl Iterator<Item = (String, i64, i64)>) -> BTreeMap<(String, i64), i64> {
    let mut t = BTreeMap::new();
    for (e, c, at) in events {
        *t.entry((e, at.div_euclid(HOUR))).or_default() += c;
    }
    t
}

async fn stored(
    store: &dyn StateStore,
    truth: &BTreeMap<(String, i64), i64>,
) -> BTreeMap<(String, i64), i64> {
    let keys: Vec<RowKey> = truth
        .keys()
        .map(|(e, h)| RowKey::new(e.as_str(), Window::hour().bucket_of(h * HOUR).unwrap()))
        .collect();
    let got = store.get_many(&keys).await.unwrap();
    truth
        .keys()
        .cloned()
        .zip(
            got.into_iter()
                .map(|v| v.map_or(0, |v| v.value.as_int().unwrap())),
        )
        .collect()
}

/// Resolves when every partition's lane checkpoint reached `end`.
async fn caught_up(cps: Arc<dyn CheckpointStore>, end: i64) {
    loop {
        let mut done = 0;
        for p in 0..PARTITIONS {
            if let Some(l) = cps.lane(&kafka_lane("events", p)).await.unwrap()
                && l.position == (Position::Offset { offset: end })
            {
                done += 1;
            }
        }
        if done == PARTITIONS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn decoder() -> Decoder<Ev> {
    Decoder::json().event_time(|e: &Ev| Some(e.occurred_at_unix_ms))
}

fn live_options(token: HandoffToken) -> LiveOptions {
    LiveOptions {
        flush: FlushPolicy {
            max_keys: 10,
            max_age: Duration::from_millis(100),
        },
        tick: Duration::from_millis(20),
        ..LiveOptions::from_token(token)
    }
}

/// Runs live on `config` from `token` while events `[200, 260)` of each
/// partition are produced, until every lane committed offset 260: the
/// source (for its metrics) and live's stats.
async fn live_while_producing(
    p: &Pipeline<Ev, Sum>,
    brokers: &str,
    config: KafkaConfig,
    state: Arc<dyn StateStore>,
    cps: Arc<dyn CheckpointStore>,
    token: &HandoffToken,
) -> (KafkaSource<Ev>, murmur_bootstrap::LiveStats) {
    let brokers = brokers.to_owned();
    let late = tokio::spawn(async move {
        for p in 0..PARTITIONS {
            produce(&brokers, p, 200..260).await;
        }
    });
    let mut source = KafkaSource::connect(config, decoder()).await.unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        live(
            p,
            &mut source,
            state,
            cps.clone(),
            &live_options(token.clone()),
            caught_up(cps, 260),
        ),
    )
    .await
    .expect("live caught up")
    .unwrap();
    late.await.unwrap();
    (source, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_offsets_token_seam_is_exact() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    // History: 200 events per partition, exported at offset 150 (the
    // export holds events [0, 150), the token says live starts at 150).
    for p in 0..PARTITIONS {
        produce(&brokers, p, 0..200).await;
    }
    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: (0..PARTITIONS).map(|p| (p, 150)).collect(),
    };
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem.clone()));
    let p = pipeline();
    let opts = BackfillOptions {
        token: Some(token.clone()),
        ..BackfillOptions::new("seam-kafka")
    };
    let out = backfill(&p, &export(150).await, state.clone(), cps.clone(), &opts)
        .await
        .unwrap();
    assert_eq!(out.token(), Some(&token));

    let config = KafkaConfig::assign(&brokers, "events");
    let (_, stats) =
        live_while_producing(&p, &brokers, config, state.clone(), cps.clone(), &token).await;
    assert_eq!(
        stats.records,
        3 * 110,
        "live read exactly offsets 150..260 of each partition"
    );
    let want = truth((0..PARTITIONS).flat_map(|p| (0..260).map(move |i| ev(p, i))));
    assert_eq!(
        stored(&*state, &want).await,
        want,
        "no gap and no double count at the seam"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_cut_seam_is_exact() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    for p in 0..PARTITIONS {
        produce(&brokers, p, 0..200).await;
    }
    // The export was taken later than the cut (it holds [0, 170)), but the
    // producer could not record offsets: cut at event 120's time.
    let cut = T0 + 120 * 60_000;
    let token = HandoffToken::EventTimeCut { at_ms: cut };
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem.clone()));
    // The pipeline refuses e3's events: those before the cut are the
    // backfill's bad records, those at or after it live's dead letters,
    // none of them both (live reads from 10 minutes before the cut).
    let p = refusing_e3();
    let side = |range: std::ops::Range<i64>| {
        (0..PARTITIONS)
            .flat_map(|p| range.clone().map(move |i| ev(p, i)))
            .filter(refused)
            .count() as u64
    };
    let (before, after) = (side(0..120), side(120..200));
    let opts = BackfillOptions {
        token: Some(token.clone()),
        ..BackfillOptions::new("seam-cut")
    };
    let export = export_with(170, BadRecordPolicy::max_bad_records(before)).await;
    backfill(&p, &export, state.clone(), cps.clone(), &opts)
        .await
        .unwrap();
    assert_eq!(export.bad_records().count(), before);
    // No dead-letter topic: the refused events are logged and counted.
    let config = KafkaConfig::assign(&brokers, "events")
        .event_time_cut_skew(Duration::from_secs(600))
        .skip_bad_messages();
    let mut source = KafkaSource::connect(config, decoder()).await.unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        live(
            &p,
            &mut source,
            state.clone(),
            cps.clone(),
            &live_options(token),
            caught_up(cps.clone(), 200),
        ),
    )
    .await
    .expect("live caught up")
    .unwrap();
    assert_eq!(
        stats.records,
        3 * 80 - after,
        "live kept exactly the events at or after the cut"
    );
    assert!(before > 0 && after > 0);
    assert_eq!(source.metrics().dead_letters, after);
    assert_eq!(stats.before_cut, 3 * 10, "live read from the cut's skew");
    for p in 0..PARTITIONS {
        let lane = cps.lane(&kafka_lane("events", p)).await.unwrap().unwrap();
        assert!(lane.committed_seq > 0);
    }
    let want = truth(
        (0..PARTITIONS)
            .flat_map(|p| (0..200).map(move |i| ev(p, i)))
            .filter(|e| !refused(e)),
    );
    assert_eq!(
        stored(&*state, &want).await,
        want,
        "no gap and no double count at the cut"
    );
}

/// Applies `budget` rows in total, then fails.
struct Crashing {
    inner: MemoryStore,
    budget: AtomicUsize,
}

#[async_trait::async_trait]
impl StateStore for Crashing {
    fn name(&self) -> &str {
        "crashing"
    }
    async fn apply(&self, m: &dyn DynMonoid, b: &WriteBatch) -> Result<ApplyReport, StoreError> {
        let mut part = b.clone();
        part.rows.truncate(self.budget.load(Ordering::SeqCst));
        self.budget.fetch_sub(part.rows.len(), Ordering::SeqCst);
        let r = self.inner.apply(m, &part).await?;
        if part.rows.len() < b.rows.len() {
            return Err(StoreError::Backend {
                store: "crashing".into(),
                operation: "apply",
                source: "killed".into(),
            });
        }
        Ok(r)
    }
    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        self.inner.get_many(keys).await
    }
}

/// A live worker killed mid-batch (its store fails) leaves one pending
/// batch; restarts replay it exactly, leaving out the same refused records
/// as its first read, also after a restart that stopped at a refused
/// message for want of a dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_crash_mid_batch_then_restart_is_exact() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    for p in 0..PARTITIONS {
        produce(&brokers, p, 0..300).await;
    }
    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: (0..PARTITIONS).map(|p| (p, 0)).collect(),
    };
    let mem = MemoryStore::new();
    let cps: Arc<dyn CheckpointStore> = Arc::new(mem.clone());
    // The pipeline refuses e3's events, which the source skips: the
    // replayed batch must leave out the same records its first read did.
    let p = refusing_e3();
    let skipping = || KafkaConfig::assign(&brokers, "events").skip_bad_messages();
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(37),
    });
    let mut source = KafkaSource::connect(skipping(), decoder()).await.unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        live(
            &p,
            &mut source,
            crashing,
            cps.clone(),
            &live_options(token.clone()),
            caught_up(cps.clone(), 300),
        ),
    )
    .await
    .expect("the crash comes before the deadline");
    assert!(first.is_err(), "the store crashed mid-batch");
    drop(source);
    let pending = (0..PARTITIONS)
        .filter(|q| futures_pending(&mem, *q))
        .count();
    assert_eq!(pending, 1, "the crash left one pending batch");

    // Restarted without a dead-letter topic or skipping, it stops at the
    // first refused message (in the replay or after it), naming it.
    let mut source = KafkaSource::connect(KafkaConfig::assign(&brokers, "events"), decoder())
        .await
        .unwrap();
    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        live(
            &p,
            &mut source,
            Arc::new(mem.clone()),
            cps.clone(),
            &live_options(token.clone()),
            caught_up(cps.clone(), 300),
        ),
    )
    .await
    .expect("stopped before the deadline")
    .unwrap_err()
    .to_string();
    assert!(
        stopped.contains("bad message at events/") && stopped.contains("entity key \"\": is empty"),
        "{stopped}"
    );
    drop(source);

    let mut source = KafkaSource::connect(skipping(), decoder()).await.unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        live(
            &p,
            &mut source,
            Arc::new(mem.clone()),
            cps.clone(),
            &live_options(token),
            caught_up(cps.clone(), 300),
        ),
    )
    .await
    .expect("caught up")
    .unwrap();
    assert!(source.metrics().dead_letters > 0);
    let want = truth(
        (0..PARTITIONS)
            .flat_map(|p| (0..300).map(move |i| ev(p, i)))
            .filter(|e| !refused(e)),
    );
    assert_eq!(
        stored(&mem, &want).await,
        want,
        "exact after crash and restarts"
    );
    assert!(stats.records > 0);
    assert!(
        (0..PARTITIONS).all(|q| !futures_pending(&mem, q)),
        "the pending batch was replayed"
    );
}

fn futures_pending(mem: &MemoryStore, p: i32) -> bool {
    let lane: LaneId = kafka_lane("events", p);
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            mem.lane(&lane)
                .await
                .unwrap()
                .is_some_and(|l| l.pending.is_some())
        })
    })
}

/// A pipeline that refuses one entity's events (its key function gives an
/// empty key) on both sides of a Kafka-offsets seam: the backfill
/// dead-letters the export's (object, line, reason, text) and commits them
/// as the run's bad records; live sends each of its to the dead-letter
/// topic with its payload and the reason; nothing stops, and every other
/// event is folded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_pipeline_refuses_are_dead_letters_on_both_sides_of_the_seam() {
    use murmur_source_live::{HEADER_ERROR, HEADER_SOURCE_OFFSET};
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Headers as _;

    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    for p in 0..PARTITIONS {
        produce(&brokers, p, 0..200).await;
    }
    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: (0..PARTITIONS).map(|p| (p, 150)).collect(),
    };
    let p = refusing_e3();
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem.clone()));

    // The backfill: the export's refused lines are its bad records.
    let in_export: Vec<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (0..150).map(move |i| (p, i)))
        .filter(|&(p, i)| refused(&ev(p, i)))
        .collect();
    let letters = Arc::new(InMemory::new());
    let source = export_with(
        150,
        BadRecordPolicy::max_bad_records(in_export.len() as u64)
            .with_dead_letter(letters.clone(), Path::from("dlq")),
    )
    .await;
    let opts = BackfillOptions {
        token: Some(token.clone()),
        ..BackfillOptions::new("seam-refused")
    };
    backfill(&p, &source, state.clone(), cps.clone(), &opts)
        .await
        .unwrap();
    assert_eq!(source.bad_records().count(), in_export.len() as u64);
    let lanes = cps.lanes("seam-refused").await.unwrap();
    assert_eq!(
        lanes.iter().map(|l| l.bad_records).sum::<u64>(),
        in_export.len() as u64
    );
    for part in 0..PARTITIONS {
        let text = letters
            .get(&Path::from(format!(
                "dlq/export/part-{part}.json/lines-1.jsonl"
            )))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&text)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<serde_json::Value> = in_export
            .iter()
            .filter(|(p, _)| *p == part)
            .map(|&(p, i)| {
                serde_json::json!({
                    "object": format!("export/part-{p}.json"),
                    "location": {"line": i + 1},
                    "reason": "pipeline seam: entity key \"\": is empty",
                    "raw": json(&ev(p, i)),
                })
            })
            .collect();
        assert_eq!(lines, want, "partition {part}'s export");
    }

    // Live from the token: its refused messages go to the dead-letter topic.
    let config = KafkaConfig::assign(&brokers, "events").dead_letter_topic("events.dlq");
    let (source, stats) =
        live_while_producing(&p, &brokers, config, state.clone(), cps.clone(), &token).await;
    let in_live: Vec<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (150..260).map(move |i| (p, i)))
        .filter(|&(p, i)| refused(&ev(p, i)))
        .collect();
    assert!(!in_live.is_empty() && !in_export.is_empty());
    assert_eq!(stats.records, 3 * 110 - in_live.len() as u64);
    assert_eq!(source.metrics().dead_letters, in_live.len() as u64);
    let want = truth(
        (0..PARTITIONS)
            .flat_map(|p| (0..260).map(move |i| ev(p, i)))
            .filter(|e| !refused(e)),
    );
    assert_eq!(stored(&*state, &want).await, want, "every other event once");

    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("events.dlq", 0, rdkafka::Offset::Beginning)
        .unwrap();
    dlq.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < in_live.len() && std::time::Instant::now() < deadline {
        if let Some(m) = dlq.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let header = |key: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == key))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap()
            };
            got.push((
                header(HEADER_SOURCE_OFFSET).parse::<i64>().unwrap(),
                header(HEADER_ERROR),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            ));
        }
    }
    got.sort();
    let mut want: Vec<(i64, String, String)> = in_live
        .iter()
        .map(|&(p, i)| {
            (
                i,
                "pipeline seam: entity key \"\": is empty".to_owned(),
                json(&ev(p, i)),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "one dead letter per refused live message");
}
