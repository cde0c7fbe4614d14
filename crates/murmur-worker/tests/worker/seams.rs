//! The seam through the worker binary for the handoff tokens and sources the
//! crash harness does not cover: Kinesis sequence numbers (kinesalite), an
//! event-time cut over Kafka, and a DynamoDB parallel-scan backfill (moto).
//! In each, events keep arriving while the backfill runs; the first run is
//! stopped with SIGTERM in live, the second runs to an `--until` token that
//! covers everything produced, and every stored value equals the ground
//! truth computed here.

use crate::common::*;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Stops gracefully once every live lane started (plus a moment of live).
fn term_in_live(lanes: usize) -> Kill {
    Kill::Term {
        pattern: "lane started",
        nth: lanes,
        delay: Duration::from_millis(500),
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A Kinesis stream with `PARTITIONS` shards on kinesalite; event `i` goes
/// to shard `partition(i)` by explicit hash key.
struct Stream {
    client: aws_sdk_kinesis::Client,
    name: String,
    /// (shard id, starting hash key) by partition index.
    shards: Vec<(String, String)>,
    /// Last sequence number per shard id, and how many events were put.
    state: std::sync::Mutex<(BTreeMap<String, String>, u64)>,
}

impl Stream {
    async fn create() -> Stream {
        let client = aws_sdk_kinesis::Client::new(&aws().await);
        let name = unique("murmur-worker");
        client
            .create_stream()
            .stream_name(&name)
            .shard_count(PARTITIONS)
            .send()
            .await
            .unwrap();
        for _ in 0..200 {
            let d = client
                .describe_stream_summary()
                .stream_name(&name)
                .send()
                .await
                .unwrap();
            if d.stream_description_summary().map(|s| s.stream_status())
                == Some(&StreamStatus::Active)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut shards: Vec<(String, String)> = client
            .list_shards()
            .stream_name(&name)
            .send()
            .await
            .unwrap()
            .shards()
            .iter()
            .map(|s| {
                (
                    s.shard_id().to_owned(),
                    s.hash_key_range().unwrap().starting_hash_key().to_owned(),
                )
            })
            .collect();
        shards.sort_by_key(|(_, h)| h.parse::<u128>().unwrap());
        assert_eq!(shards.len(), PARTITIONS as usize);
        Stream {
            client,
            name,
            shards,
            state: std::sync::Mutex::new((BTreeMap::new(), 0)),
        }
    }

    /// Every record of the stream, from each shard's trim horizon, as JSON
    /// (a dead-letter stream's envelopes).
    async fn json_records(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (shard, _) in &self.shards {
            let it = self
                .client
                .get_shard_iterator()
                .stream_name(&self.name)
                .shard_id(shard)
                .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap();
            let got = self
                .client
                .get_records()
                .shard_iterator(it.shard_iterator().unwrap())
                .send()
                .await
                .unwrap();
            out.extend(
                got.records()
                    .iter()
                    .map(|r| serde_json::from_slice(r.data().as_ref()).unwrap()),
            );
        }
        out
    }

    /// Puts the next `n` events, in order within each shard.
    async fn put(&self, n: u64) {
        let from = self.state.lock().unwrap().1;
        for chunk_start in (from..from + n).step_by(300) {
            let end = (chunk_start + 300).min(from + n);
            let entries: Vec<PutRecordsRequestEntry> = (chunk_start..end)
                .map(|i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key("pk")
                        .explicit_hash_key(&self.shards[partition(i) as usize].1)
                        .data(Blob::new(json(i)))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .client
                .put_records()
                .stream_name(&self.name)
                .set_records(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
            let mut state = self.state.lock().unwrap();
            for r in out.records() {
                let (shard, seq) = (r.shard_id().unwrap(), r.sequence_number().unwrap());
                state.0.insert(shard.to_owned(), seq.to_owned());
            }
        }
        self.state.lock().unwrap().1 = from + n;
    }

    fn put_so_far(&self) -> u64 {
        self.state.lock().unwrap().1
    }

    /// The token naming the last record put to each shard.
    fn token(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "kinesis",
            "stream": self.name,
            "sequence_numbers": self.state.lock().unwrap().0,
        })
    }
}

/// Runs the worker with `args` while `producer` keeps adding events —
/// stopped with SIGTERM a moment into live — then, once the producer is
/// finished, to `until()`, the token of everything produced. Returns both
/// summaries; the second run must have had nothing to replay.
fn through_the_seam(
    args: &[String],
    producer: Producer,
    until: impl FnOnce() -> String,
) -> (serde_json::Value, serde_json::Value) {
    let first = finished(args, &term_in_live(PARTITIONS as usize));
    producer.finish();
    let mut last = args.to_vec();
    last.extend(["--until".to_owned(), until()]);
    let second = finished(&last, &Kill::Never);
    assert_eq!(second["replayed"], 0, "{second}");
    (first, second)
}

fn live_args(export: &std::path::Path, data: &std::path::Path) -> Vec<String> {
    [
        "run",
        "--backfill",
        "jsonl",
        "--from",
        &export.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
        "--chunk-rows",
        "400",
        "--flush-max-keys",
        "40",
        "--flush-max-age",
        "100ms",
        "--progress",
        "never",
        "--log",
        "info,murmur_bootstrap=debug",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn kinesis_sequence_number_token_seam_is_exact() {
    if service("AWS_ENDPOINT_URL_KINESIS").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stream = Arc::new(rt.block_on(Stream::create()));
    let history = 9_000;
    rt.block_on(stream.put(history));
    let dir = tempdir();
    // The export holds exactly what was put before its token.
    write_export_with(&p(&dir, "export"), history, Some(stream.token()));
    let mut args = live_args(&p(&dir, "export"), &p(&dir, "data"));
    args.extend(["--live", "kinesis", "--kinesis-stream", &stream.name].map(str::to_owned));

    let putter = stream.clone();
    let producer = Producer::start(move |rt| rt.block_on(putter.put(30)));
    let (first, last) = through_the_seam(&args, producer, || stream.token().to_string());
    assert_eq!(first["backfill"], "completed", "{first}");
    assert_eq!(first["token"]["kind"], "kinesis", "{first}");
    assert_eq!(last["backfill"], "already_completed", "{last}");
    let n = stream.put_so_far();
    assert!(n > history + 100, "events arrived during the run: {n}");
    rt.block_on(compare_sums(&embedded(&p(&dir, "data"), "events"), n));
}

#[test]
fn event_time_cut_over_kafka_seam_is_exact() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    // The export runs past the cut (and has no offsets manifest); the topic
    // holds everything from the start, timestamped with event time.
    let cut_at = 8_000;
    write_export_with(&p(&dir, "export"), cut_at + 1_500, None);
    let cut_ms = event(cut_at).2;
    assert!(event(cut_at - 1).2 < cut_ms, "event times increase with i");
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(cut_at + 1_500));
    let mut args = live_args(&p(&dir, "export"), &p(&dir, "data"));
    args.extend(
        [
            "--live",
            "kafka",
            "--kafka-brokers",
            &topic.brokers,
            "--kafka-topic",
            TOPIC,
            "--token",
            &serde_json::json!({"kind": "event_time_cut", "at_ms": cut_ms}).to_string(),
            "--cut-skew",
            "10m",
        ]
        .map(str::to_owned),
    );

    let producer = keep_producing(topic.clone(), 30);
    let (first, _) = through_the_seam(&args, producer, || topic.until());
    assert_eq!(first["backfill"], "completed", "{first}");
    assert_eq!(first["backfill_after_cut"], 1_500, "{first}");
    let n = topic.produced.load(Ordering::SeqCst);
    rt.block_on(compare_sums(&embedded(&p(&dir, "data"), "events"), n));
}

/// A table keyed by `event_id`, with a stream of new images if `stream`.
async fn create_events_table(ddb: &aws_sdk_dynamodb::Client, table: &str, stream: bool) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("event_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("event_id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .set_stream_specification(stream.then(|| {
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .unwrap()
        }))
        .send()
        .await
        .unwrap();
}

/// Writes events `range` as items (`event_id` `ev-<i>`).
async fn put_events(ddb: &aws_sdk_dynamodb::Client, table: &str, range: std::ops::Range<u64>) {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let items: Vec<WriteRequest> = range
        .map(|i| {
            let (e, c, t) = event(i);
            let item = [
                ("event_id", AttributeValue::S(format!("ev-{i}"))),
                ("entity_id", AttributeValue::S(e)),
                ("count", AttributeValue::N(c.to_string())),
                ("occurred_at_unix_ms", AttributeValue::N(t.to_string())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    for chunk in items.chunks(25) {
        let mut pending = Some(
            std::iter::once((table.to_owned(), chunk.to_vec()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        while let Some(req) = pending.take() {
            let out = ddb
                .batch_write_item()
                .set_request_items(Some(req))
                .send()
                .await
                .unwrap();
            pending = out.unprocessed_items().filter(|u| !u.is_empty()).cloned();
        }
    }
}

/// A new table (named from `prefix`) holding events `[0, history)`, with a
/// stream of new images if `stream`.
async fn events_table(
    prefix: &str,
    history: u64,
    stream: bool,
) -> (aws_sdk_dynamodb::Client, String) {
    let ddb = aws_sdk_dynamodb::Client::new(&aws().await);
    let table = unique(prefix);
    create_events_table(&ddb, &table, stream).await;
    put_events(&ddb, &table, 0..history).await;
    (ddb, table)
}

/// A four-segment scan of `table` (`page` items a page) into `data`,
/// flushing every 40 keys, then `rest`.
fn scan_args(table: &str, page: u32, data: &std::path::Path, rest: &[&str]) -> Vec<String> {
    let page = page.to_string();
    let data = data.to_string_lossy();
    let head = [
        "run",
        "--backfill",
        "dynamodb",
        "--scan-table",
        table,
        "--scan-segments",
        "4",
        "--scan-page-size",
        &page,
        "--data-dir",
        &data,
        "--flush-max-keys",
        "40",
        "--flush-max-age",
        "100ms",
        "--progress",
        "never",
        "--log",
        "info,murmur_bootstrap=debug",
    ];
    head.iter().chain(rest).map(|a| (*a).to_owned()).collect()
}

/// SIGKILLs a run of `args` in its backfill, after its `nth` committed batch.
fn kill_in_backfill(args: &[String], nth: usize) {
    let ended = run(
        worker_with(args),
        &Kill::After {
            pattern: "batch committed",
            nth,
            delay: Duration::ZERO,
        },
        Duration::from_secs(240),
    );
    assert!(matches!(ended, Ended::Killed(Phase::Backfill)), "{ended:?}");
}

#[test]
fn dynamodb_scan_backfill_then_kafka_live_is_exact() {
    if service("AWS_ENDPOINT_URL").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let history = 4_000u64;
    let (_, table) = rt.block_on(events_table("history", history, false));
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(history));
    let dir = tempdir();
    let data = p(&dir, "data");
    // The offsets the table's history ends at (a Spark job's manifest would
    // carry them; here the explicit --token).
    let args = scan_args(
        &table,
        250,
        &data,
        &[
            "--token",
            &topic.until(),
            "--live",
            "kafka",
            "--kafka-brokers",
            &topic.brokers,
            "--kafka-topic",
            TOPIC,
        ],
    );

    let producer = keep_producing(topic.clone(), 30);
    let (first, _) = through_the_seam(&args, producer, || topic.until());
    assert_eq!(first["backfill"], "completed", "{first}");
    assert_eq!(first["backfill_records"], history, "{first}");
    let n = topic.produced.load(Ordering::SeqCst);
    assert!(n > history);
    rt.block_on(compare_sums(&embedded(&data, "events"), n));
}

#[test]
fn a_dynamodb_scan_resumed_after_a_crash_hands_live_its_first_stream_capture() {
    if service("AWS_ENDPOINT_URL").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (history, during) = (2_000u64, 300u64);
    let (ddb, table) = rt.block_on(events_table("streamed", history, true));
    let dlq = rt.block_on(Stream::create());
    // The history is older than the capture's cut (stream creation times
    // are whole seconds).
    std::thread::sleep(Duration::from_millis(2_500));
    let dir = tempdir();
    let data = p(&dir, "data");
    let args = scan_args(
        &table,
        50,
        &data,
        &[
            "--live",
            "dynamodb-streams",
            "--streams-table",
            &table,
            "--kinesis-dead-letter-stream",
            &dlq.name,
            // The resumed scan may meet the bad change too.
            "--max-bad-records",
            "1",
            "--dedup",
            "--stop-after-idle",
            "3s",
        ],
    );
    // The first run captures the stream's position, scans part of the
    // table and is killed.
    kill_in_backfill(&args, 5);
    // Changes made after the capture, before the resume; one of them does
    // not decode (its count is a string).
    rt.block_on(put_events(&ddb, &table, history..history + during));
    rt.block_on(async {
        use aws_sdk_dynamodb::types::AttributeValue;
        ddb.put_item()
            .table_name(&table)
            .item("event_id", AttributeValue::S("bad-0".into()))
            .item("entity_id", AttributeValue::S("e001".into()))
            .item("count", AttributeValue::S("many".into()))
            .item("occurred_at_unix_ms", AttributeValue::N(T0.to_string()))
            .send()
            .await
            .unwrap();
    });
    let second = finished(&args, &Kill::Never);
    assert_eq!(second["backfill"], "completed", "{second}");
    // Live reads the stream from the first run's capture: exactly the
    // changes made since, not every shard from its trim horizon (which
    // would read the whole history again).
    assert_eq!(second["live_records"], during, "{second}");
    rt.block_on(compare_sums(&embedded(&data, "events"), history + during));
    // The undecodable change went to the dead-letter stream.
    let letters = rt.block_on(dlq.json_records());
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["source_stream"], table.as_str());
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("many"), "{error}");
}

/// A table scan's bad items go to dead letters in a directory of their own,
/// each exactly once over a run SIGKILLed mid-scan and its resume.
#[test]
fn a_dynamodb_scan_dead_letters_each_bad_item_once_across_a_crash() {
    use aws_sdk_dynamodb::types::AttributeValue;
    if service("AWS_ENDPOINT_URL").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (history, bad) = (2_000u64, 5u64);
    let (ddb, table) = rt.block_on(events_table("poisoned", history, false));
    rt.block_on(async {
        for i in 0..bad {
            ddb.put_item()
                .table_name(&table)
                .item("event_id", AttributeValue::S(format!("bad-{i}")))
                .item("entity_id", AttributeValue::S("e001".into()))
                .item("count", AttributeValue::S("many".into()))
                .item("occurred_at_unix_ms", AttributeValue::N(T0.to_string()))
                .send()
                .await
                .unwrap();
        }
    });
    let dir = tempdir();
    let (data, rejects) = (p(&dir, "data"), p(&dir, "rejects"));
    let args = scan_args(
        &table,
        50,
        &data,
        &[
            "--max-bad-records",
            &bad.to_string(),
            "--dead-letter",
            &rejects.to_string_lossy(),
            "--live",
            "none",
        ],
    );
    kill_in_backfill(&args, 8);
    let second = finished(&args, &Kill::Never);
    assert_eq!(second["backfill"], "completed", "{second}");
    rt.block_on(compare_sums(&embedded(&data, "events"), history));

    let dead = dead_letters(&rejects);
    let mut keys: Vec<String> = Vec::new();
    for (object, lines) in &dead {
        // <run-id>/<table>#segment-<s>-of-4/page-....jsonl
        assert!(object.starts_with("events-backfill/"), "{object}");
        assert!(object.contains("segment-"), "{object}");
        for d in lines {
            let unit = d["object"].as_str().unwrap();
            assert!(unit.starts_with(&format!("{table}#segment-")), "{d}");
            assert!(d["reason"].as_str().unwrap().contains("count"), "{d}");
            keys.push(d["location"]["item"]["key"].as_str().unwrap().to_owned());
        }
    }
    keys.sort();
    let want: Vec<String> = (0..bad)
        .map(|i| format!("{{\"event_id\":{{\"S\":\"bad-{i}\"}}}}"))
        .collect();
    assert_eq!(keys, want, "{dead:?}");
}
