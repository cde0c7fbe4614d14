//! The Kafka source against librdkafka's in-process mock cluster.

use crate::common::{Runner, drive, drive_to_error};
use murmur_core::{CheckpointStore, HandoffToken, LaneId, MemoryStore, Position};
use murmur_source_live::{
    CountEvent, Decoder, Error, HEADER_ERROR, HEADER_PAYLOAD_CUT, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, KafkaConfig, KafkaSource, LiveSource, OnExpired,
    SourceEvent, Start, kafka_lane,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

fn event(entity: &str, i: i64) -> Vec<u8> {
    format!(r#"{{"entity_id":"{entity}","count":1,"occurred_at_unix_ms":{i}}}"#).into_bytes()
}

/// Produces `n` events to `partition`, message timestamps `t0 + i * 1000`.
async fn produce(p: &FutureProducer, topic: &str, partition: i32, n: i64, t0: i64) {
    for i in 0..n {
        let payload = event(&format!("p{partition}"), i);
        p.send(
            FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(&payload)
                .timestamp(t0 + i * 1000),
            Duration::from_secs(5),
        )
        .await
        .expect("produce");
    }
}

/// Reads `source` from `checkpoints` (else the earliest offset) until
/// offset `end` of a lane is acknowledged: each delivered record's
/// (offset, entity), and the source's dead letters.
async fn read_to_offset(
    name: &'static str,
    source: KafkaSource<CountEvent>,
    checkpoints: Arc<MemoryStore>,
    end: i64,
) -> (Vec<(i64, String)>, u64) {
    let mut runner = Runner::new(name, source, checkpoints, Start::Earliest);
    drive(&mut runner, 30, |r| {
        r.acked_ends
            .values()
            .flatten()
            .any(|e| *e == Position::Offset { offset: end })
    })
    .await;
    let good = runner
        .delivered
        .iter()
        .map(|(_, r)| (offset(&r.position), r.value.entity_id.to_string()))
        .collect();
    (good, runner.source.metrics().dead_letters)
}

fn offset(p: &Position) -> i64 {
    match p {
        Position::Offset { offset } => *offset,
        other => panic!("not an offset: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_starts_exactly_at_token_offsets() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", 3, 1).unwrap();
    let p = producer(&brokers);
    for partition in 0..3 {
        produce(&p, "events", partition, 30, 1_000_000).await;
    }
    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: BTreeMap::from([(0, 4), (1, 10), (2, 29)]),
    };
    let source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "events"),
        Decoder::count_events(),
    )
    .await
    .unwrap();

    // Resolution is concrete and equals the token; other policies resolve too.
    for (partition, want) in [(0, 4), (1, 10), (2, 29)] {
        let lane = kafka_lane("events", partition);
        let at = source
            .resolve_start(&lane, &Start::Token(token.clone()))
            .await
            .unwrap();
        assert_eq!(at, Position::Offset { offset: want });
        assert_eq!(
            source.resolve_start(&lane, &Start::Earliest).await.unwrap(),
            Position::Offset { offset: 0 }
        );
        assert_eq!(
            source.resolve_start(&lane, &Start::Latest).await.unwrap(),
            Position::Offset { offset: 30 }
        );
    }
    let wrong_topic = HandoffToken::Kafka {
        topic: "other".into(),
        offsets: BTreeMap::from([(0, 0)]),
    };
    let err = source
        .resolve_start(&kafka_lane("events", 0), &Start::Token(wrong_topic))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Token { .. }), "{err}");

    let checkpoints = Arc::new(MemoryStore::new());
    let mut runner = Runner::new("token", source, checkpoints.clone(), Start::Token(token));
    runner.chunks_per_batch = 2;
    drive(&mut runner, 30, |r| {
        r.acked.lock().unwrap().len() == 26 + 20 + 1 && r.open_records() == 0
    })
    .await;
    assert_eq!(runner.assigned_events, 1);

    let mut per_lane: BTreeMap<LaneId, Vec<i64>> = BTreeMap::new();
    for (lane, r) in runner.delivered.iter() {
        per_lane
            .entry(lane.clone())
            .or_default()
            .push(offset(&r.position));
    }
    for (partition, first) in [(0, 4), (1, 10), (2, 29)] {
        let offsets = &per_lane[&kafka_lane("events", partition)];
        assert_eq!(
            offsets[0], first,
            "partition {partition}: first delivered offset"
        );
        assert_eq!(
            *offsets,
            (first..30).collect::<Vec<_>>(),
            "partition {partition}: in order, no gap"
        );
        let state = checkpoints
            .lane(&kafka_lane("events", partition))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.position, Position::Offset { offset: 30 });
    }
    // Records carry their event; the decoder took event time from the payload.
    let (_, first) = &runner.delivered[0];
    assert_eq!(first.event_time_ms, first.value.occurred_at_ms);

    // A pending range re-reads exactly.
    let replay = runner
        .source
        .read_range(
            &kafka_lane("events", 1),
            &Position::Offset { offset: 12 },
            &Position::Offset { offset: 15 },
        )
        .await
        .unwrap();
    assert_eq!(
        replay
            .iter()
            .map(|r| offset(&r.position))
            .collect::<Vec<_>>(),
        vec![12, 13, 14]
    );
    assert_eq!(
        replay
            .iter()
            .map(|r| r.value.occurred_at_ms)
            .collect::<Vec<_>>(),
        vec![12, 13, 14]
    );
    let m = runner.source.metrics();
    assert_eq!((m.records, m.replayed, m.dead_letters), (47, 3, 0));

    // A crash after a batch intent was recorded: the next run re-reads
    // exactly the pending range, then goes on from its end.
    drop(runner);
    produce(&p, "events", 0, 5, 2_000_000).await;
    let lane0 = kafka_lane("events", 0);
    let pending = murmur_core::BatchIntent {
        lane: lane0.clone(),
        seq: checkpoints
            .lane(&lane0)
            .await
            .unwrap()
            .unwrap()
            .committed_seq
            + 1,
        start: Position::Offset { offset: 30 },
        end: Position::Offset { offset: 33 },
        bad_records: 0,
    };
    checkpoints.begin_batch(&pending).await.unwrap();
    let source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "events"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let mut again = Runner::new("restart", source, checkpoints.clone(), Start::Earliest);
    drive(&mut again, 30, |r| {
        r.acked.lock().unwrap().len() == 5 && r.open_records() == 0
    })
    .await;
    let acked: Vec<(LaneId, i64)> = again
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(l, r)| (l.clone(), offset(&r.position)))
        .collect();
    assert_eq!(
        acked,
        (30..35).map(|o| (lane0.clone(), o)).collect::<Vec<_>>()
    );
    assert_eq!(again.source.metrics().replayed, 3);
    assert_eq!(
        checkpoints.lane(&lane0).await.unwrap().unwrap().position,
        Position::Offset { offset: 35 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_timestamp_start() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let p = producer(&brokers);
    let t0 = 1_700_000_000_000;
    for partition in 0..2 {
        produce(&p, "clicks", partition, 20, t0).await;
    }
    let source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "clicks").partitions([1]),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let lane = kafka_lane("clicks", 1);
    // Between message 10 (t0 + 10 s) and 11: the first at or after is 11.
    let at = Start::Timestamp(t0 + 10_500);
    assert_eq!(
        source.resolve_start(&lane, &at).await.unwrap(),
        Position::Offset { offset: 11 }
    );
    assert_eq!(
        source
            .resolve_start(&lane, &Start::Timestamp(t0 + 10_000))
            .await
            .unwrap(),
        Position::Offset { offset: 10 }
    );
    // After the last message: the end of the log.
    assert_eq!(
        source
            .resolve_start(&lane, &Start::Timestamp(t0 + 999_000))
            .await
            .unwrap(),
        Position::Offset { offset: 20 }
    );
    let err = source
        .start_lane(&kafka_lane("clicks", 0), &Position::Offset { offset: 0 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownLane { .. }), "{err}");

    let mut runner = Runner::new("timestamp", source, Arc::new(MemoryStore::new()), at);
    drive(&mut runner, 30, |r| {
        r.acked.lock().unwrap().len() == 9 && r.open_records() == 0
    })
    .await;
    let offsets: Vec<i64> = runner
        .delivered
        .iter()
        .map(|(_, r)| offset(&r.position))
        .collect();
    assert_eq!(offsets, (11..20).collect::<Vec<_>>());
    assert!(runner.delivered.iter().all(|(l, _)| *l == lane));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_expired_token_offsets_are_refused() {
    // The mock broker keeps at most 5 MiB per partition and drops the oldest
    // message sets beyond that: real retention, so the low watermark moves.
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("big", 1, 1).unwrap();
    let p = producer(&brokers);
    let payload = vec![b'x'; 600 * 1024];
    for _ in 0..12 {
        p.send(
            FutureRecord::<(), _>::to("big")
                .partition(0)
                .payload(&payload),
            Duration::from_secs(5),
        )
        .await
        .expect("produce");
    }
    let lane = kafka_lane("big", 0);
    let token = |offset| {
        Start::Token(HandoffToken::Kafka {
            topic: "big".into(),
            offsets: BTreeMap::from([(0, offset)]),
        })
    };
    let source = KafkaSource::<CountEvent>::connect(
        KafkaConfig::assign(&brokers, "big"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let earliest = offset(&source.resolve_start(&lane, &Start::Earliest).await.unwrap());
    assert!(
        earliest > 0,
        "the broker trimmed the log (low watermark {earliest})"
    );

    let err = source.resolve_start(&lane, &token(0)).await.unwrap_err();
    match &err {
        Error::OffsetExpired {
            topic,
            partition,
            wanted,
            earliest: e,
            latest,
            missing,
        } => {
            assert_eq!(
                (topic.as_str(), *partition, *wanted, *e, *latest, *missing),
                ("big", 0, 0, earliest, 12, earliest)
            );
        }
        other => panic!("expected OffsetExpired, got {other}"),
    }
    let msg = err.to_string();
    for part in [
        "topic big",
        "partition 0",
        "offset 0",
        &format!("offsets {earliest}..12"),
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    // A retained token offset is fine; one beyond the log end is refused.
    assert_eq!(
        source.resolve_start(&lane, &token(earliest)).await.unwrap(),
        Position::Offset { offset: earliest }
    );
    let err = source.resolve_start(&lane, &token(13)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::OffsetAhead {
                wanted: 13,
                latest: 12,
                ..
            }
        ),
        "{err}"
    );

    // An event-time cut older than the oldest retained message is refused
    // too: the deleted messages may have been after it. A cut the retained
    // messages cover resolves as usual.
    let cut = |at_ms| Start::Token(HandoffToken::EventTimeCut { at_ms });
    let hour_ago = murmur_core::store::now_ms() - 3_600_000;
    let err = source
        .resolve_start(&lane, &cut(hour_ago))
        .await
        .unwrap_err();
    match &err {
        Error::CutExpired {
            topic,
            partition,
            earliest: e,
            first_ms,
            ..
        } => {
            assert_eq!((topic.as_str(), *partition, *e), ("big", 0, earliest));
            assert!(*first_ms > hour_ago, "{err}");
        }
        other => panic!("expected CutExpired, got {other}"),
    }
    assert!(err.to_string().contains("were deleted"), "{err}");
    let future = murmur_core::store::now_ms() + 3_600_000;
    assert_eq!(
        source.resolve_start(&lane, &cut(future)).await.unwrap(),
        Position::Offset { offset: 12 }
    );
    let accepting = KafkaSource::<CountEvent>::connect(
        KafkaConfig::assign(&brokers, "big").on_expired(OnExpired::Earliest),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    assert_eq!(
        accepting
            .resolve_start(&lane, &cut(hour_ago))
            .await
            .unwrap(),
        Position::Offset { offset: earliest },
        "OnExpired::Earliest accepts the gap"
    );

    // An expired checkpoint is refused at start too; replays of expired ranges as well.
    let mut source = source;
    let SourceEvent::Assigned(lanes) = source.next().await.unwrap() else {
        panic!("assigned first")
    };
    assert_eq!(lanes, vec![lane.clone()]);
    let err = source
        .start_lane(&lane, &Position::Offset { offset: 0 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::OffsetExpired { wanted: 0, .. }),
        "{err}"
    );
    let err = source
        .read_range(
            &lane,
            &Position::Offset { offset: 0 },
            &Position::Offset { offset: 2 },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Replay { .. }), "{err}");

    // The caller may choose to accept the gap.
    let lenient = KafkaSource::<CountEvent>::connect(
        KafkaConfig::assign(&brokers, "big").on_expired(OnExpired::Earliest),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    assert_eq!(
        lenient.resolve_start(&lane, &token(0)).await.unwrap(),
        Position::Offset { offset: earliest }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_poison_messages_go_to_the_dead_letter_topic() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("orders", 1, 1).unwrap();
    cluster.create_topic("orders.dlq", 1, 1).unwrap();
    let p = producer(&brokers);
    // Over the decoder's limit, and over what a dead letter carries.
    let oversized = event("x", 0)
        .into_iter()
        .chain(std::iter::repeat_n(b' ', 600_000))
        .collect::<Vec<u8>>();
    let messages: Vec<Option<Vec<u8>>> = vec![
        Some(event("a", 1)),
        Some(b"{\"entity_id\": oops".to_vec()),
        Some(Vec::new()),
        Some(oversized.clone()),
        Some(event("b", 2)),
        None, // a tombstone
    ];
    for m in &messages {
        let mut r = FutureRecord::<(), [u8]>::to("orders").partition(0);
        if let Some(bytes) = m {
            r = r.payload(bytes.as_slice());
        }
        p.send(r, Duration::from_secs(5)).await.expect("produce");
    }
    let config = KafkaConfig::assign(&brokers, "orders").dead_letter_topic("orders.dlq");
    let source = KafkaSource::connect(config, Decoder::count_events().max_payload_bytes(1024))
        .await
        .unwrap();
    let (good, dead_letters) =
        read_to_offset("poison", source, Arc::new(MemoryStore::new()), 6).await;
    assert_eq!(good, vec![(0, "a".to_string()), (4, "b".to_string())]);
    assert_eq!(dead_letters, 4);

    // The dead letters, with headers naming where they came from and why.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders.dlq", 0, Offset::Beginning)
        .unwrap();
    dlq.assign(&tpl).unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while letters.len() < 4 && Instant::now() < deadline {
        if let Some(m) = dlq.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let headers: BTreeMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            letters.push((headers, m.payload().map(<[u8]>::to_vec)));
        }
    }
    assert_eq!(letters.len(), 4, "four dead letters");
    let by_offset: BTreeMap<i64, _> = letters
        .into_iter()
        .map(|(h, payload)| {
            (
                h[HEADER_SOURCE_OFFSET].parse::<i64>().unwrap(),
                (h, payload),
            )
        })
        .collect();
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 5]
    );
    for (offset, (h, payload)) in &by_offset {
        assert_eq!(h[HEADER_SOURCE_TOPIC], "orders", "the real source topic");
        assert_eq!(h[HEADER_SOURCE_PARTITION], "0");
        let mut expected_payload = messages[*offset as usize].clone().filter(|m| !m.is_empty());
        if *offset == 3 {
            // Cut to fit a message, and said so.
            expected_payload = Some(oversized[..512 * 1024].to_vec());
            let cut = &h[HEADER_PAYLOAD_CUT];
            assert!(
                cut.starts_with(&format!("{} bytes, sha256 ", oversized.len()))
                    && cut.ends_with("; the first 524288 kept"),
                "{cut}"
            );
        } else {
            assert!(!h.contains_key(HEADER_PAYLOAD_CUT), "{h:?}");
        }
        assert_eq!(
            payload.clone().filter(|m| !m.is_empty()),
            expected_payload,
            "offset {offset}"
        );
    }
    assert!(
        by_offset[&1].0[HEADER_ERROR].starts_with("invalid CountEvent JSON"),
        "{:?}",
        by_offset[&1].0
    );
    assert_eq!(by_offset[&2].0[HEADER_ERROR], "empty payload");
    assert_eq!(
        by_offset[&3].0[HEADER_ERROR],
        format!(
            "payload of {} bytes exceeds the limit of 1024 bytes",
            oversized.len()
        )
    );
    assert_eq!(by_offset[&5].0[HEADER_ERROR], "empty payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_rebalance_loses_and_duplicates_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = "rebalance";
    cluster.create_topic(topic, 4, 1).unwrap();
    let p = producer(&brokers);
    for partition in 0..4 {
        produce(&p, topic, partition, 50, 0).await;
    }
    // More records keep arriving during the rebalance.
    let late = tokio::spawn({
        let p = p.clone();
        async move {
            for round in 0..40 {
                for partition in 0..4 {
                    let payload = event("late", 1000 + round);
                    p.send(
                        FutureRecord::<(), _>::to(topic)
                            .partition(partition)
                            .payload(&payload),
                        Duration::from_secs(5),
                    )
                    .await
                    .expect("produce");
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    let total = 4 * 50 + 40 * 4;
    let config = || {
        KafkaConfig::subscribe(&brokers, topic, "murmur-group")
            .property("session.timeout.ms", "6000")
            .property("heartbeat.interval.ms", "500")
            .max_chunk_records(20)
    };
    let checkpoints = Arc::new(MemoryStore::new());
    let a = KafkaSource::connect(config(), Decoder::count_events())
        .await
        .unwrap();
    let mut a = Runner::new("a", a, checkpoints.clone(), Start::Earliest);
    a.chunks_per_batch = 3; // keep batches in flight across the revoke
    drive(&mut a, 30, |r| r.acked.lock().unwrap().len() >= 100).await;
    assert_eq!(a.lanes.len(), 4, "the first member gets every partition");

    let b = KafkaSource::connect(config(), Decoder::count_events())
        .await
        .unwrap();
    let mut b = Runner::new("b", b, checkpoints.clone(), Start::Earliest);
    b.chunks_per_batch = 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked = a.acked.lock().unwrap().len() + b.acked.lock().unwrap().len();
        if acked >= total && late.is_finished() && !b.lanes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {acked} of {total} acknowledged"
        );
        tokio::join!(
            a.step(Duration::from_millis(100)),
            b.step(Duration::from_millis(100))
        );
    }
    a.flush_all().await;
    b.flush_all().await;
    assert!(
        a.revoked_events >= 1,
        "the first member saw its partitions revoked"
    );
    assert_eq!(
        a.lanes.len() + b.lanes.len(),
        4,
        "partitions split: a {:?}, b {:?}",
        a.lanes,
        b.lanes
    );
    assert!(!a.lanes.is_empty() && !b.lanes.is_empty());

    eprintln!(
        "rebalance: a acked {} (revoked {}x, now {:?}), b acked {} (now {:?})",
        a.acked.lock().unwrap().len(),
        a.revoked_events,
        a.lanes,
        b.acked.lock().unwrap().len(),
        b.lanes
    );
    let mut seen = BTreeSet::new();
    for (lane, r) in a
        .acked
        .lock()
        .unwrap()
        .iter()
        .chain(b.acked.lock().unwrap().iter())
    {
        assert!(
            seen.insert((lane.clone(), offset(&r.position))),
            "{lane} offset {} acknowledged twice",
            r.position
        );
    }
    assert_eq!(seen.len(), total, "every record acknowledged exactly once");
    for partition in 0..4 {
        let lane = kafka_lane(topic, partition);
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|(l, _)| *l == lane)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(offsets, (0..90).collect::<Vec<_>>(), "{lane}");
        let state = checkpoints.lane(&lane).await.unwrap().unwrap();
        assert_eq!(
            (state.position, state.pending),
            (Position::Offset { offset: 90 }, None)
        );
    }
    // Leaving the group is prompt.
    let started = Instant::now();
    let (Runner { source: a, .. }, Runner { source: b, .. }) = (a, b);
    tokio::join!(a.shutdown(), b.shutdown());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// Without a dead-letter topic, a bad message stops the source with
/// `Error::BadMessage` naming its partition, offset and reason; nothing from
/// it on is delivered or acknowledged. A restart from the same checkpoints
/// with `skip_bad_messages` logs and counts it and goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_a_dead_letter_topic_stops_at_a_bad_message_unless_told_to_skip() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("orders", 1, 1).unwrap();
    let p = producer(&brokers);
    let send = async |m: &[u8]| {
        p.send(
            FutureRecord::<(), [u8]>::to("orders")
                .partition(0)
                .payload(m),
            Duration::from_secs(5),
        )
        .await
        .expect("produce");
    };
    send(&event("a", 1)).await;
    let source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "orders"),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let checkpoints = Arc::new(MemoryStore::new());
    let mut runner = Runner::new("no-dlq", source, checkpoints.clone(), Start::Earliest);
    // "a" is acknowledged before the bad message arrives.
    drive(&mut runner, 30, |r| {
        r.acked_ends.values().flatten().any(|e| offset(e) == 1)
    })
    .await;
    send(b"{oops").await;
    send(&event("b", 2)).await;
    let err = drive_to_error(&mut runner, 30)
        .await
        .expect("the bad message stops the source");
    assert!(matches!(err, Error::BadMessage { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("bad message at orders/0@1: invalid CountEvent JSON: key must be a string")
            && err.ends_with(
                "no dead-letter topic is configured to take it (configure one, or skip bad messages to log and count them)"
            ),
        "{err}"
    );
    let delivered: Vec<i64> = runner
        .delivered
        .iter()
        .map(|(_, r)| offset(&r.position))
        .collect();
    assert_eq!(delivered, [0], "nothing from the bad message on");
    let lane = kafka_lane("orders", 0);
    let at = checkpoints.lane(&lane).await.unwrap().unwrap().position;
    assert_eq!(at, Position::Offset { offset: 1 });

    // The restart, told to skip: on from the checkpoint, past the message.
    let source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, "orders").skip_bad_messages(),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let (good, dead_letters) = read_to_offset("no-dlq-skip", source, checkpoints, 3).await;
    assert_eq!(good, vec![(2, "b".to_string())]);
    assert_eq!(dead_letters, 1);
}
