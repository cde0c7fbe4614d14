//! The Kinesis source against kinesalite (real 56-digit sequence numbers)
//! and, for shard leases, moto's DynamoDB.

use crate::common::{
    Runner, drive, drive_to_error, kinesalite, moto_dynamodb, stream_json, unique,
};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use murmur_core::{CheckpointStore, HandoffToken, LaneId, MemoryStore, Position, store::now_ms};
use murmur_source_live::{
    Decoder, Error, KinesisConfig, KinesisSource, LiveSource, SequenceNumber, Start,
    ensure_lease_table, kinesis_lane,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn wait_active(k: &Client, stream: &str) {
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {stream} did not become active");
}

async fn create_stream(k: &Client, shards: i32) -> String {
    let name = unique("murmur");
    k.create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(k, &name).await;
    name
}

/// (shard id, starting hash key) of the open shards.
async fn open_shards(k: &Client, stream: &str) -> Vec<(String, String)> {
    let out = k.list_shards().stream_name(stream).send().await.unwrap();
    out.shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .map(|s| {
            (
                s.shard_id().to_owned(),
                s.hash_key_range().unwrap().starting_hash_key().to_owned(),
            )
        })
        .collect()
}

fn event(entity: &str, i: i64) -> Vec<u8> {
    format!(r#"{{"entity_id":"{entity}","count":1,"occurred_at_unix_ms":{i}}}"#).into_bytes()
}

async fn put(k: &Client, stream: &str, hash_key: &str, payload: Vec<u8>) -> String {
    k.put_record()
        .stream_name(stream)
        .partition_key("pk")
        .explicit_hash_key(hash_key)
        .data(Blob::new(payload))
        .send()
        .await
        .unwrap()
        .sequence_number()
        .to_owned()
}

fn seq(p: &Position) -> SequenceNumber {
    match p {
        Position::Sequence { sequence } => {
            SequenceNumber::parse(sequence).expect("a sequence number")
        }
        other => panic!("not a sequence: {other}"),
    }
}

/// Reads `source` from `checkpoints` (else the trim horizon) until `n`
/// records are acknowledged: their entities, and the source's dead
/// letters.
async fn read_until(
    name: &'static str,
    source: KinesisSource<murmur_core::CountEvent>,
    checkpoints: Arc<MemoryStore>,
    n: usize,
) -> (Vec<String>, u64) {
    let mut runner = Runner::new(name, source, checkpoints, Start::Earliest);
    drive(&mut runner, 30, |r| {
        r.acked.lock().unwrap().len() == n && r.open_records() == 0
    })
    .await;
    let names = runner
        .delivered
        .iter()
        .map(|(_, r)| r.value.entity_id.to_string())
        .collect();
    (names, runner.source.metrics().dead_letters)
}

fn config(stream: &str) -> KinesisConfig {
    KinesisConfig::new(stream).idle_wait(Duration::from_millis(200))
}

#[tokio::test]
async fn kinesis_starts_after_token_sequence_numbers() {
    let Some(k) = kinesalite("kinesis_starts_after_token_sequence_numbers").await else {
        return;
    };
    let stream = create_stream(&k, 2).await;
    let shards = open_shards(&k, &stream).await;
    let mut seqs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (shard, hash) in &shards {
        for i in 0..20 {
            let s = put(&k, &stream, hash, event(shard, i)).await;
            seqs.entry(shard.clone()).or_default().push(s);
        }
    }
    // Real sequence numbers: 56 digits, beyond u128.
    for s in seqs.values().flatten() {
        assert_eq!(s.len(), 56, "{s}");
        assert!(s.parse::<u128>().is_err());
    }
    let (s0, s1) = (&shards[0].0, &shards[1].0);
    let token = HandoffToken::Kinesis {
        stream: stream.clone(),
        sequence_numbers: BTreeMap::from([
            (s0.clone(), seqs[s0][5].clone()),
            (s1.clone(), seqs[s1][12].clone()),
        ]),
    };
    let source = KinesisSource::connect(config(&stream), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let lane0 = kinesis_lane(&stream, s0);
    assert_eq!(
        source
            .resolve_start(&lane0, &Start::Token(token.clone()))
            .await
            .unwrap(),
        Position::Sequence {
            sequence: Arc::from(seqs[s0][5].as_str())
        }
    );
    let mut runner = Runner::new(
        "token",
        source,
        Arc::new(MemoryStore::new()),
        Start::Token(token),
    );
    drive(&mut runner, 30, |r| r.acked.lock().unwrap().len() == 14 + 7).await;
    for (shard, first) in [(s0, 6), (s1, 13)] {
        let lane = kinesis_lane(&stream, shard);
        let got: Vec<String> = runner
            .delivered
            .iter()
            .filter(|(l, _)| *l == lane)
            .map(|(_, r)| seq(&r.position).to_string())
            .collect();
        assert_eq!(
            got,
            seqs[shard][first..].to_vec(),
            "{lane}: exactly after the token, in order"
        );
    }
    // A pending range (after #2 up to and including #7) re-reads exactly.
    let replay = runner
        .source
        .read_range(
            &lane0,
            &Position::Sequence {
                sequence: Arc::from(seqs[s0][2].as_str()),
            },
            &Position::Sequence {
                sequence: Arc::from(seqs[s0][7].as_str()),
            },
        )
        .await
        .unwrap();
    let got: Vec<String> = replay
        .iter()
        .map(|r| seq(&r.position).to_string())
        .collect();
    assert_eq!(got, seqs[s0][3..=7].to_vec());
    assert_eq!(
        replay
            .iter()
            .map(|r| r.value.occurred_at_ms)
            .collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
    // A range whose last record the shard no longer holds (trimmed past
    // retention; here a sequence number between #7 and #8, or before #0)
    // is an error, not a short or empty replay.
    let between = decimal_add(&seqs[s0][7], 1);
    assert!(
        between.len() == seqs[s0][8].len() && between < seqs[s0][8],
        "{between} lies between #7 and #8"
    );
    let before_first = decimal_add(&seqs[s0][0], -1);
    for (from, end) in [
        (
            Position::Sequence {
                sequence: Arc::from(seqs[s0][2].as_str()),
            },
            between,
        ),
        (Position::Beginning, before_first),
    ] {
        let err = runner
            .source
            .read_range(
                &lane0,
                &from,
                &Position::Sequence {
                    sequence: Arc::from(end.as_str()),
                },
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("the shard no longer holds the range's records up to its end"),
            "{err}"
        );
    }
}

/// `n` (a decimal string) plus `d` (+1 or -1), as a decimal string of the
/// same length.
fn decimal_add(n: &str, d: i8) -> String {
    let mut digits: Vec<u8> = n.bytes().map(|b| b - b'0').collect();
    for x in digits.iter_mut().rev() {
        if d > 0 && *x < 9 {
            *x += 1;
            break;
        } else if d < 0 && *x > 0 {
            *x -= 1;
            break;
        }
        *x = if d > 0 { 0 } else { 9 };
    }
    digits.into_iter().map(|x| char::from(b'0' + x)).collect()
}

#[tokio::test]
async fn kinesis_at_timestamp_and_latest() {
    let Some(k) = kinesalite("kinesis_at_timestamp_and_latest").await else {
        return;
    };
    let stream = create_stream(&k, 1).await;
    let (shard, hash) = open_shards(&k, &stream).await.remove(0);
    for i in 0..10 {
        put(&k, &stream, &hash, event("before", i)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        put(&k, &stream, &hash, event("after", i)).await;
    }
    let source = KinesisSource::connect(config(&stream), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let lane = kinesis_lane(&stream, &shard);
    let at = source
        .resolve_start(&lane, &Start::Timestamp(cut))
        .await
        .unwrap();
    assert_eq!(
        at,
        Position::Sequence {
            sequence: Arc::from(format!("at_timestamp:{cut}"))
        }
    );
    let before = now_ms();
    let Position::Sequence { sequence } =
        source.resolve_start(&lane, &Start::Latest).await.unwrap()
    else {
        panic!()
    };
    let latest_ms: i64 = sequence
        .strip_prefix("at_timestamp:")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        latest_ms >= before && latest_ms <= now_ms(),
        "latest is pinned to the time it was resolved"
    );

    let mut runner = Runner::new(
        "timestamp",
        source,
        Arc::new(MemoryStore::new()),
        Start::Timestamp(cut),
    );
    drive(&mut runner, 30, |r| r.acked.lock().unwrap().len() == 10).await;
    let got: Vec<(String, i64)> = runner
        .delivered
        .iter()
        .map(|(_, r)| (r.value.entity_id.to_string(), r.value.occurred_at_ms))
        .collect();
    assert_eq!(
        got,
        (0..10)
            .map(|i| ("after".to_string(), i))
            .collect::<Vec<_>>()
    );
    // The checkpoint moved from the timestamp start to a real sequence number.
    let state = runner.checkpoints.lane(&lane).await.unwrap().unwrap();
    assert_eq!(seq(&state.position).as_str().len(), 56);
    // Nothing more arrives: still 10 after another idle round.
    runner.step(Duration::from_millis(500)).await;
    assert_eq!(runner.delivered.len(), 10);
}

#[tokio::test]
async fn kinesis_split_shard_reads_children_after_parents() {
    let Some(k) = kinesalite("kinesis_split_shard_reads_children_after_parents").await else {
        return;
    };
    let stream = create_stream(&k, 1).await;
    let (parent, hash) = open_shards(&k, &stream).await.remove(0);
    for i in 0..30 {
        put(&k, &stream, &hash, event("parent", i)).await;
    }
    let middle = (u128::MAX / 2 + 1).to_string();
    k.split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key(&middle)
        .send()
        .await
        .unwrap();
    wait_active(&k, &stream).await;
    let children = open_shards(&k, &stream).await;
    assert_eq!(children.len(), 2);
    for i in 0..30 {
        let (_, h) = &children[i as usize % 2];
        put(&k, &stream, h, event("child", i)).await;
    }
    let source = KinesisSource::connect(config(&stream), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let checkpoints = Arc::new(MemoryStore::new());
    let mut runner = Runner::new("split", source, checkpoints.clone(), Start::Earliest);
    drive(&mut runner, 40, |r| {
        r.acked.lock().unwrap().len() == 60 && r.open_records() == 0
    })
    .await;

    let kinds: Vec<&str> = runner
        .delivered
        .iter()
        .map(|(_, r)| r.value.entity_id.as_str())
        .collect();
    let last_parent = kinds.iter().rposition(|k| *k == "parent").unwrap();
    let first_child = kinds.iter().position(|k| *k == "child").unwrap();
    assert!(
        last_parent < first_child,
        "every parent record comes before any child record"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "parent").count(), 30);
    assert_eq!(kinds.iter().filter(|k| **k == "child").count(), 30);
    // The parent is recorded as finished; the children are read to their tips.
    let parent_lane = kinesis_lane(&stream, &parent);
    assert_eq!(
        checkpoints
            .lane(&parent_lane)
            .await
            .unwrap()
            .unwrap()
            .position,
        Position::End
    );
    assert_eq!(runner.acked_ends[&parent_lane].last(), Some(&Position::End));
    // ...and the runner was told, so it drops the lane (its guard is gone).
    assert_eq!(runner.finished, vec![parent_lane.clone()]);
    assert!(
        runner
            .source
            .guard(&parent_lane)
            .and_then(|g| g.check())
            .is_err()
    );
    for (child, _) in &children {
        let lane = kinesis_lane(&stream, child);
        let n = runner.delivered.iter().filter(|(l, _)| *l == lane).count();
        assert_eq!(n, 15, "{lane}");
    }
    // Children were only offered after the parent finished.
    assert!(runner.assigned_events >= 2);
}

#[tokio::test]
async fn kinesis_poison_records_go_to_the_dead_letter_stream() {
    let Some(k) = kinesalite("kinesis_poison_records_go_to_the_dead_letter_stream").await else {
        return;
    };
    let stream = create_stream(&k, 1).await;
    let dlq = create_stream(&k, 1).await;
    let (shard, hash) = open_shards(&k, &stream).await.remove(0);
    put(&k, &stream, &hash, event("a", 1)).await;
    let bad = put(&k, &stream, &hash, b"not json".to_vec()).await;
    let big = put(&k, &stream, &hash, vec![b'{'; 300]).await;
    put(&k, &stream, &hash, event("b", 2)).await;
    let source = KinesisSource::connect(
        config(&stream).dead_letter_stream(&dlq),
        k.clone(),
        Decoder::count_events().max_payload_bytes(256),
    )
    .await
    .unwrap();
    let (names, dead_letters) = read_until("poison", source, Arc::new(MemoryStore::new()), 2).await;
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(dead_letters, 2);

    let letters = stream_json(&k, &dlq).await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["source_stream"], stream.as_str());
    assert_eq!(letters[0]["shard_id"], shard.as_str());
    assert_eq!(letters[0]["sequence_number"], bad.as_str());
    assert_eq!(letters[0]["payload_base64"], "bm90IGpzb24=");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid CountEvent JSON")
    );
    assert_eq!(letters[1]["sequence_number"], big.as_str());
    assert_eq!(
        letters[1]["error"],
        "payload of 300 bytes exceeds the limit of 256 bytes"
    );
}

#[tokio::test]
async fn kinesis_workers_share_leases_and_take_over_a_killed_one() {
    let test = "kinesis_workers_share_leases_and_take_over_a_killed_one";
    let Some(k) = kinesalite(test).await else {
        return;
    };
    let Some(ddb) = moto_dynamodb(test).await else {
        return;
    };
    let table = unique("murmur-leases");
    ensure_lease_table(&ddb, &table).await.unwrap();
    ensure_lease_table(&ddb, &table).await.unwrap(); // idempotent
    let stream = create_stream(&k, 4).await;
    let shards = open_shards(&k, &stream).await;
    let wave = |tag: &'static str| {
        let (k, stream, shards) = (k.clone(), stream.clone(), shards.clone());
        async move {
            for (_, hash) in &shards {
                for i in 0..10 {
                    put(&k, &stream, hash, event(tag, i)).await;
                }
            }
        }
    };
    wave("w1").await;
    let lease = Duration::from_secs(3);
    let worker = |id: &str| {
        config(&stream)
            .worker_id(id)
            .leases(ddb.clone(), &table, lease)
    };
    let checkpoints = Arc::new(MemoryStore::new());
    let a = KinesisSource::connect(worker("a"), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let b = KinesisSource::connect(worker("b"), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let mut a = Runner::new("a", a, checkpoints.clone(), Start::Earliest);
    let mut b = Runner::new("b", b, checkpoints.clone(), Start::Earliest);
    let deadline = Instant::now() + Duration::from_secs(40);
    while a.acked.lock().unwrap().len() + b.acked.lock().unwrap().len() < 40
        || a.lanes.len() + b.lanes.len() < 4
    {
        assert!(
            Instant::now() < deadline,
            "wave 1 not consumed: a {:?} b {:?}",
            a.lanes,
            b.lanes
        );
        tokio::join!(
            a.step(Duration::from_millis(200)),
            b.step(Duration::from_millis(200))
        );
    }
    assert!(
        !a.lanes.is_empty() && !b.lanes.is_empty(),
        "both workers hold leases: a {:?} b {:?}",
        a.lanes,
        b.lanes
    );
    let a_lanes: BTreeSet<LaneId> = a.lanes.iter().cloned().collect();
    // Every lane is started by exactly one worker.
    assert!(b.lanes.iter().all(|l| !a_lanes.contains(l)));

    // Wave 2: worker a receives its part but never makes it durable, then dies.
    wave("w2").await;
    a.chunks_per_batch = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.open_records() < 10 {
        assert!(Instant::now() < deadline, "a did not receive wave 2");
        a.step(Duration::from_secs(5)).await;
    }
    let lost_by_a: Vec<(LaneId, Position)> = a
        .delivered
        .iter()
        .filter(|(_, r)| r.value.entity_id == "w2")
        .map(|(l, r)| (l.clone(), r.position.clone()))
        .collect();
    let acked_by_a = a.acked.clone();
    drop(a); // killed: no flush, no lease release

    let deadline = Instant::now() + Duration::from_secs(40);
    while acked_by_a.lock().unwrap().len() + b.acked.lock().unwrap().len() < 80
        || b.open_records() > 0
    {
        assert!(
            Instant::now() < deadline,
            "b did not take over: lanes {:?}, {} acknowledged",
            b.lanes,
            acked_by_a.lock().unwrap().len() + b.acked.lock().unwrap().len()
        );
        b.step(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.lanes.len(),
        4,
        "b holds every shard after a's leases expired"
    );
    assert!(b.source.metrics().leases_taken >= 4);

    eprintln!(
        "leases: a started {:?} and acked {} before it was killed holding {} unacknowledged; b acked {}, took {} leases",
        a_lanes,
        acked_by_a.lock().unwrap().len(),
        lost_by_a.len(),
        b.acked.lock().unwrap().len(),
        b.source.metrics().leases_taken
    );
    let mut seen = BTreeSet::new();
    for (lane, r) in acked_by_a
        .lock()
        .unwrap()
        .iter()
        .chain(b.acked.lock().unwrap().iter())
    {
        assert!(
            seen.insert((lane.clone(), seq(&r.position))),
            "{lane} {} acknowledged twice",
            r.position
        );
    }
    assert_eq!(seen.len(), 80, "every record acknowledged exactly once");
    // What a had received but not made durable was delivered again, by b.
    for (lane, pos) in lost_by_a {
        assert!(
            b.acked
                .lock()
                .unwrap()
                .iter()
                .any(|(l, r)| *l == lane && r.position == pos),
            "{lane} {pos} redelivered to b"
        );
    }
    // A graceful shutdown releases the leases, so others need not wait.
    let Runner { source, .. } = b;
    source.shutdown().await;
    let items = ddb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(items.items().len(), 4);
    for item in items.items() {
        assert!(!item.contains_key("owner"), "released: {item:?}");
        assert!(
            item.contains_key("checkpoint"),
            "acknowledged positions are recorded: {item:?}"
        );
    }
}

/// Without a dead-letter stream, a bad record stops the source with
/// `Error::BadMessage` naming its shard, sequence number and reason; a
/// restart from the same checkpoints with `skip_bad_messages` logs and
/// counts it and goes on from there.
#[tokio::test]
async fn kinesis_without_a_dead_letter_stream_stops_at_a_bad_record_unless_told_to_skip() {
    let Some(k) = kinesalite("kinesis_without_a_dead_letter_stream_stops_at_a_bad_record").await
    else {
        return;
    };
    let stream = create_stream(&k, 1).await;
    let (_, hash) = open_shards(&k, &stream).await.remove(0);
    put(&k, &stream, &hash, event("a", 1)).await;
    let checkpoints = Arc::new(MemoryStore::new());
    let source = KinesisSource::connect(config(&stream), k.clone(), Decoder::count_events())
        .await
        .unwrap();
    let mut runner = Runner::new(
        "kinesis-no-dlq",
        source,
        checkpoints.clone(),
        Start::Earliest,
    );
    // "a" is acknowledged before the bad record arrives.
    drive(&mut runner, 30, |r| {
        r.acked.lock().unwrap().len() == 1 && r.open_records() == 0
    })
    .await;
    let bad = put(&k, &stream, &hash, b"not json".to_vec()).await;
    put(&k, &stream, &hash, event("b", 2)).await;
    let err = drive_to_error(&mut runner, 30)
        .await
        .expect("the bad record stops the source");
    assert!(matches!(err, Error::BadMessage { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with(&format!(
            "bad message at {stream}/shardId-000000000000@{bad}: invalid CountEvent JSON"
        )) && err.contains("no dead-letter stream is configured"),
        "{err}"
    );
    let delivered: Vec<String> = runner
        .delivered
        .iter()
        .map(|(_, r)| r.value.entity_id.to_string())
        .collect();
    assert_eq!(delivered, ["a"], "nothing from the bad record on");

    // The restart, told to skip: on from the checkpoint, past the record.
    let source = KinesisSource::connect(
        config(&stream).skip_bad_messages(),
        k.clone(),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let (names, dead_letters) = read_until("kinesis-no-dlq-skip", source, checkpoints, 1).await;
    assert_eq!(names, vec!["b"]);
    assert_eq!(dead_letters, 1);
}
