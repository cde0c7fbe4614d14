//! Kafka (librdkafka's mock cluster) -> archive: batching limits, dead
//! letters, crashes mid-flush, and the round trip through the Parquet
//! snapshot source.

use crate::common::*;
use futures::stream::BoxStream;
use murmur_archive::{Archive, ArchiveOptions, BatchLimits, Encoder};
use murmur_bootstrap::{BackfillOptions, LiveOptions, backfill, live};
use murmur_core::monoid::Sum;
use murmur_core::{
    CheckpointStore, CountEvent, HandoffToken, LaneId, MemoryStore, Pipeline, StateStore, Window,
};
use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, LiveSource as _, Start, kafka_lane};
use murmur_source_snapshot::{CountEventColumns, ObjectListing, ParquetSource};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn options(limits: BatchLimits) -> ArchiveOptions {
    let mut o = ArchiveOptions::default();
    o.limits = limits;
    o.row_group_rows = 64;
    o
}

fn limits(max_records: usize, max_bytes: usize, max_age: Duration) -> BatchLimits {
    let mut l = BatchLimits::default();
    l.max_records = max_records;
    l.max_bytes = max_bytes;
    l.max_age = max_age;
    l
}

fn live_options() -> LiveOptions {
    let mut o = LiveOptions::from_token(HandoffToken::None);
    o.start = Start::Earliest;
    o.tick = Duration::from_millis(20);
    o
}

fn lanes(topic: &str, partitions: i32) -> Vec<LaneId> {
    (0..partitions).map(|p| kafka_lane(topic, p)).collect()
}

/// Each object holds consecutive offsets of one lane, named by its first
/// and last offset, all in the object's event-time hour; returns the event
/// ids of all objects (with repeats, if any).
fn check_objects(objects: &[Object], topic: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for o in objects {
        assert!(!o.events.is_empty(), "{} is empty", o.key);
        let hour = partition_hour(&o.key);
        for e in &o.events {
            assert!(
                (hour..hour + HOUR).contains(&e.occurred_at_ms),
                "{} holds an event of another hour ({})",
                o.key,
                e.occurred_at_ms
            );
        }
        let first = o.events[0].event_id.clone().unwrap();
        let last = o.events[o.events.len() - 1].event_id.clone().unwrap();
        let (p, i0) = first.split_once('-').unwrap();
        let (_, i1) = last.split_once('-').unwrap();
        let name = format!(
            "part-kafka-{topic}-{p}-{:020}-{:020}.parquet",
            i0.parse::<i64>().unwrap(),
            i1.parse::<i64>().unwrap()
        );
        assert!(o.key.ends_with(&name), "{} should end with {name}", o.key);
        ids.extend(o.events.iter().map(|e| e.event_id.clone().unwrap()));
    }
    ids
}

fn all_ids(partitions: i32, per_partition: i64) -> Vec<String> {
    let mut ids: Vec<String> = (0..partitions)
        .flat_map(|p| (0..per_partition).map(move |i| format!("{p}-{i}")))
        .collect();
    ids.sort();
    ids
}

async fn archive_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    upto: i64,
    archive: &Archive<CountEvent>,
    checkpoints: Arc<dyn CheckpointStore>,
) {
    let mut source = KafkaSource::connect(
        KafkaConfig::assign(brokers, topic).group_id("archiver"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        archive.run(
            &mut source,
            &live_options(),
            caught_up(checkpoints.clone(), lanes(topic, partitions), upto),
        ),
    )
    .await;
    if outcome.is_err() {
        let mut states = Vec::new();
        for lane in lanes(topic, partitions) {
            states.push(checkpoints.lane(&lane).await.unwrap());
        }
        panic!(
            "the archive did not catch up: {states:?} {:?}",
            archive.metrics()
        );
    }
    outcome.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_honour_the_record_and_byte_limits_and_split_by_hour() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", 2, 1).unwrap();
    const N: i64 = 700;
    for p in 0..2 {
        produce(
            &brokers,
            "events",
            p,
            (0..N).map(|i| payload(&event(p, i))).collect(),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());

    // Records: at most 100 per batch, cut inside chunks.
    let mem = MemoryStore::new();
    let cps: Arc<dyn CheckpointStore> = Arc::new(mem.clone());
    let archive = Archive::new(
        store.clone(),
        Path::from("by-records"),
        cps.clone(),
        Encoder::count_events(),
        options(limits(100, usize::MAX, Duration::from_secs(3600))),
    )
    .unwrap();
    archive_topic(&brokers, "events", 2, N, &archive, cps.clone()).await;
    for lane in lanes("events", 2) {
        let state = cps.lane(&lane).await.unwrap().unwrap();
        assert_eq!(
            state.committed_seq, 7,
            "{lane}: 700 records in batches of 100"
        );
    }
    let objects = read_objects(&*store, &Path::from("by-records")).await;
    let mut ids = check_objects(&objects, "events");
    ids.sort();
    assert_eq!(ids, all_ids(2, N), "every message in exactly one object");
    let m = archive.metrics();
    assert_eq!((m.batches, m.records), (14, 1_400));
    assert_eq!(m.objects, objects.len() as u64);
    // A batch of 100 events 37 s apart spans one or two hours.
    assert!(
        (14..=28).contains(&objects.len()),
        "{} objects",
        objects.len()
    );

    // Bytes: the batches are exactly the greedy packing of the events'
    // sizes under the limit.
    let encoder = Encoder::count_events();
    let max_bytes = 40 * encoder.bytes(&event(0, 0));
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let archive = Archive::new(
        store.clone(),
        Path::from("by-bytes"),
        cps.clone(),
        Encoder::count_events(),
        // The lane's last, partial batch is cut by age: reading the 700
        // messages takes far less than that, so only the tail is aged.
        options(limits(usize::MAX, max_bytes, Duration::from_secs(5))),
    )
    .unwrap();
    archive_topic(&brokers, "events", 2, N, &archive, cps.clone()).await;
    for p in 0..2 {
        let mut batches = 0;
        let mut open = 0;
        for i in 0..N {
            let b = encoder.bytes(&event(p, i));
            if open > 0 && open + b > max_bytes {
                batches += 1;
                open = 0;
            }
            open += b;
        }
        batches += 1;
        let state = cps.lane(&kafka_lane("events", p)).await.unwrap().unwrap();
        assert_eq!(state.committed_seq, batches, "partition {p}");
        assert!(
            batches > 10,
            "the byte limit cut the lane ({batches} batches)"
        );
    }
    let objects = read_objects(&*store, &Path::from("by-bytes")).await;
    let mut ids = check_objects(&objects, "events");
    ids.sort();
    assert_eq!(ids, all_ids(2, N));
    for o in &objects {
        let bytes: usize = o.events.iter().map(|e| encoder.bytes(e)).sum();
        assert!(bytes <= max_bytes, "{}: {bytes} bytes", o.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aged_batch_is_written_and_acknowledged_while_the_archive_runs() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("slow", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let archive = Arc::new(
        Archive::new(
            store.clone(),
            Path::from("aged"),
            cps.clone(),
            Encoder::count_events(),
            options(limits(usize::MAX, usize::MAX, Duration::from_millis(300))),
        )
        .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let archive = archive.clone();
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let mut source = KafkaSource::connect(
                KafkaConfig::assign(&brokers, "slow"),
                Decoder::count_events(),
            )
            .await
            .unwrap();
            archive
                .run(&mut source, &live_options(), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        })
    };
    produce(
        &brokers,
        "slow",
        0,
        (0..10).map(|i| payload(&event(0, i))).collect(),
    )
    .await;
    // Neither the record nor the byte limit can cut this batch: only age.
    tokio::time::timeout(
        Duration::from_secs(30),
        caught_up(cps.clone(), lanes("slow", 1), 10),
    )
    .await
    .expect("the aged batch was committed while running");
    let objects = read_objects(&*store, &Path::from("aged")).await;
    let ids = check_objects(&objects, "slow");
    assert_eq!(ids.len(), 10);
    stop.send(()).unwrap();
    let stats = run.await.unwrap();
    assert_eq!(stats.records, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_not_into_a_file() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("mixed", 1, 1).unwrap();
    cluster.create_topic("mixed.dlq", 1, 1).unwrap();
    let poison: [&[u8]; 3] = [
        b"{not json",
        b"",
        br#"{"entity_id":"x","occurred_at_unix_ms":5}"#,
    ];
    let mut payloads = Vec::new();
    let mut valid = Vec::new();
    for i in 0..60 {
        if i % 20 == 7 {
            payloads.push(poison[(i / 20) as usize].to_vec());
        } else {
            let e = event(0, i);
            payloads.push(payload(&e));
            valid.push(e);
        }
    }
    produce(&brokers, "mixed", 0, payloads).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let archive = Archive::new(
        store.clone(),
        Path::from("mixed"),
        cps.clone(),
        Encoder::count_events(),
        options(limits(25, usize::MAX, Duration::from_secs(1))),
    )
    .unwrap();
    let mut source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "mixed").dead_letter_topic("mixed.dlq"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        archive.run(
            &mut source,
            &live_options(),
            caught_up(cps.clone(), lanes("mixed", 1), 60),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(source.metrics().dead_letters, 3);
    let objects = read_objects(&*store, &Path::from("mixed")).await;
    let archived: Vec<CountEvent> = objects.into_iter().flat_map(|o| o.events).collect();
    assert_eq!(
        archived, valid,
        "the 57 valid events, in order, and nothing else"
    );

    // The dead-letter topic holds the three payloads, with their offsets.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-check")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("mixed.dlq", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            use rdkafka::message::{Headers as _, Message as _};
            let m = m.unwrap();
            let offset = m
                .headers()
                .unwrap()
                .iter()
                .find(|h| h.key == murmur_source_live::HEADER_SOURCE_OFFSET)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            dead.push((m.payload().unwrap_or_default().to_vec(), offset));
        }
    }
    let want: Vec<(Vec<u8>, Option<String>)> = poison
        .iter()
        .zip(["7", "27", "47"])
        .map(|(p, o)| (p.to_vec(), Some(o.to_owned())))
        .collect();
    assert_eq!(dead, want);
}

/// A store that stops answering writes after `limit` of them: the process
/// "dies" in the middle of a flush (some objects of a batch written, its
/// intent recorded, its commit not).
#[derive(Debug)]
struct Freezing {
    inner: Arc<dyn ObjectStore>,
    writes: AtomicUsize,
    limit: usize,
}

impl std::fmt::Display for Freezing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Freezing({})", self.inner)
    }
}

impl Freezing {
    async fn gate(&self) {
        if self.writes.fetch_add(1, Ordering::SeqCst) >= self.limit {
            futures::future::pending::<()>().await;
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Freezing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.gate().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.gate().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
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

/// The group's committed offset of each partition (`None`: none yet).
fn committed(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "archiver")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| {
            let o = got.find_partition(topic, p).unwrap().offset();
            (
                p,
                if let Offset::Offset(o) = o {
                    Some(o)
                } else {
                    None
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_flush_every_message_lands_in_exactly_one_object() {
    let Some((s3, _bucket)) = s3_store("archive crash test on S3") else {
        return;
    };
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("crashy", 2, 1).unwrap();
    const N: i64 = 1_500;
    for p in 0..2 {
        produce(
            &brokers,
            "crashy",
            p,
            (0..N).map(|i| payload(&event(p, i))).collect(),
        )
        .await;
    }
    let prefix = Path::from("crashy");
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let opts = options(limits(120, usize::MAX, Duration::from_secs(2)));
    let mut existing_seen = 0;
    // Three "crashes" after a pseudo-random number of object writes each,
    // then a run to the end. The checkpoint store outlives the process,
    // like an embedded file or a DynamoDB table.
    let mut seed = 0x9e37_79b9_u64;
    for round in 0..4 {
        let limit = if round < 3 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            5 + (seed >> 33) as usize % 9
        } else {
            usize::MAX
        };
        let freezing = Arc::new(Freezing {
            inner: s3.clone(),
            writes: AtomicUsize::new(0),
            limit,
        });
        let archive = Archive::new(
            freezing.clone(),
            prefix.clone(),
            cps.clone(),
            Encoder::count_events(),
            opts,
        )
        .unwrap();
        if round < 3 {
            let run = archive_topic(&brokers, "crashy", 2, N, &archive, cps.clone());
            // Frozen mid-flush: the run cannot finish. Wait until a write
            // hangs (however slow the machine), give concurrent writes a
            // moment to land or hang too, then kill the run (drop it at its
            // await point).
            let frozen = async {
                while freezing.writes.load(Ordering::SeqCst) <= limit {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            tokio::select! {
                () = run => panic!("round {round}: the frozen run finished"),
                _ = tokio::time::timeout(Duration::from_secs(120), frozen) => {}
            }
            assert!(
                freezing.writes.load(Ordering::SeqCst) > limit,
                "round {round}: no write reached the freeze in 120 s"
            );
        } else {
            archive_topic(&brokers, "crashy", 2, N, &archive, cps.clone()).await;
        }
        // Each run first re-writes the pending batches the previous one
        // left; objects that had landed before the freeze are found.
        existing_seen += archive.metrics().objects_existing;
        // Offsets are committed only after the objects holding them exist.
        let objects = read_objects(&*s3, &prefix).await;
        let mut covered: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for o in &objects {
            for e in &o.events {
                let (p, i) = e.event_id.as_deref().unwrap().split_once('-').unwrap();
                covered
                    .entry(p.parse().unwrap())
                    .or_default()
                    .insert(i.parse().unwrap());
            }
        }
        for (p, offset) in committed(&brokers, "crashy", 2) {
            if let Some(offset) = offset {
                let have = covered.get(&p).cloned().unwrap_or_default();
                assert!(
                    (0..offset).all(|i| have.contains(&i)),
                    "round {round}: partition {p} committed at {offset} before its objects existed"
                );
            }
        }
    }
    let objects = read_objects(&*s3, &prefix).await;
    let mut ids = check_objects(&objects, "crashy");
    ids.sort();
    assert_eq!(ids, all_ids(2, N), "every message in exactly one object");
    assert!(
        existing_seen > 0,
        "a restart found objects of a pending batch already written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_backfills_to_the_state_of_the_live_aggregation() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("views", 3, 1).unwrap();
    const N: i64 = 400;
    for p in 0..3 {
        produce(
            &brokers,
            "views",
            p,
            (0..N).map(|i| payload(&event(p, i))).collect(),
        )
        .await;
    }
    let pipeline = || {
        Pipeline::builder("views", Sum)
            .key_by_str(|e: &CountEvent| &e.entity_id)
            .value(|e| e.count)
            .window(Window::hour())
            .build()
            .unwrap()
    };

    // Live aggregation of the stream.
    let live_state = MemoryStore::new();
    let mut source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "views"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let live_cps: Arc<dyn CheckpointStore> = Arc::new(live_state.clone());
    tokio::time::timeout(
        Duration::from_secs(60),
        live(
            &pipeline(),
            &mut source,
            Arc::new(live_state.clone()),
            live_cps.clone(),
            &live_options(),
            caught_up(live_cps, lanes("views", 3), N),
        ),
    )
    .await
    .unwrap()
    .unwrap();

    // The archive of the same stream, on S3 when moto runs, else a
    // local directory.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = match s3_store("archive round trip on S3") {
        Some((s3, _)) => s3,
        None => Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
    };
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let archive = Archive::new(
        store.clone(),
        Path::from("archive/views"),
        cps.clone(),
        Encoder::count_events(),
        options(limits(150, usize::MAX, Duration::from_secs(2))),
    )
    .unwrap();
    archive_topic(&brokers, "views", 3, N, &archive, cps).await;

    // Backfilled by the Parquet snapshot source into the same pipeline.
    let backfilled = MemoryStore::new();
    let source = ParquetSource::new(
        ObjectListing::new(store, Path::from("archive/views")),
        CountEventColumns,
    );
    let outcome = backfill(
        &pipeline(),
        &source,
        Arc::new(backfilled.clone()) as Arc<dyn StateStore>,
        Arc::new(backfilled.clone()) as Arc<dyn CheckpointStore>,
        &BackfillOptions::new("from-archive"),
    )
    .await
    .unwrap();
    let murmur_bootstrap::BackfillOutcome::Completed { stats, .. } = outcome else {
        panic!("backfill did not complete: {outcome:?}");
    };
    assert_eq!(stats.records, 3 * N as u64);
    let values = |m: &MemoryStore| -> Vec<_> {
        m.rows()
            .into_iter()
            .map(|(k, r)| (k, r.stored_value()))
            .collect()
    };
    let want = values(&live_state);
    assert!(
        want.len() >= 13 * 4,
        "13 entities over 4+ hours: {} rows",
        want.len()
    );
    assert_eq!(values(&backfilled), want, "same rows, same values");
}
