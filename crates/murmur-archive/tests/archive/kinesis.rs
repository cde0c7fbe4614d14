//! Kinesis (kinesalite, real 56-digit sequence numbers) -> archive: batches
//! cut inside GetRecords chunks at record sequence numbers, every record in
//! exactly one object.

use crate::common::*;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use murmur_archive::{Archive, ArchiveOptions, Encoder};
use murmur_bootstrap::LiveOptions;
use murmur_core::{CheckpointStore, HandoffToken, MemoryStore, Position};
use murmur_source_live::{
    Decoder, KinesisConfig, KinesisSource, SequenceNumber, Start, kinesis_lane,
};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn kinesalite(test: &str) -> Option<Client> {
    let endpoint = require_env("MURMUR_KINESALITE_ENDPOINT", test)?;
    let config = aws_config::from_env().endpoint_url(endpoint).load().await;
    Some(Client::new(&config))
}

async fn create_stream(k: &Client, shards: i32) -> String {
    let name = unique("archive");
    k.create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} did not become active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_batches_split_at_sequence_numbers_and_land_once() {
    let Some(k) = kinesalite("the Kinesis archive test").await else {
        return;
    };
    let stream = create_stream(&k, 2).await;
    let shards = k.list_shards().stream_name(&stream).send().await.unwrap();
    let shards: Vec<(String, String)> = shards
        .shards()
        .iter()
        .map(|s| {
            (
                s.shard_id().to_owned(),
                s.hash_key_range().unwrap().starting_hash_key().to_owned(),
            )
        })
        .collect();
    const N: i64 = 300;
    let mut last: BTreeMap<String, SequenceNumber> = BTreeMap::new();
    let mut want = Vec::new();
    for (s, (shard, hash_key)) in shards.iter().enumerate() {
        let p = i32::try_from(s).unwrap();
        for block in (0..N).collect::<Vec<_>>().chunks(100) {
            let entries = block
                .iter()
                .map(|&i| {
                    want.push(format!("{p}-{i}"));
                    PutRecordsRequestEntry::builder()
                        .partition_key("pk")
                        .explicit_hash_key(hash_key)
                        .data(Blob::new(payload(&event(p, i))))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = k
                .put_records()
                .stream_name(&stream)
                .set_records(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
            let seq = out.records().last().unwrap().sequence_number().unwrap();
            last.insert(shard.clone(), SequenceNumber::parse(seq).unwrap());
        }
    }
    want.sort();

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let cps: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let mut options = ArchiveOptions::default();
    options.limits.max_records = 40;
    options.limits.max_age = Duration::from_secs(2);
    let archive = Archive::new(
        store.clone(),
        Path::from("kinesis"),
        cps.clone(),
        Encoder::count_events(),
        options,
    )
    .unwrap();
    let mut source = KinesisSource::connect(
        KinesisConfig::new(&stream).idle_wait(Duration::from_millis(200)),
        k.clone(),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let mut live = LiveOptions::from_token(HandoffToken::None);
    live.start = Start::Earliest;
    live.tick = Duration::from_millis(20);
    let lanes: Vec<_> = shards
        .iter()
        .map(|(id, _)| kinesis_lane(&stream, id))
        .collect();
    let caught_up = {
        let cps = cps.clone();
        let last = last.clone();
        let lanes = lanes.clone();
        async move {
            loop {
                let mut done = true;
                for (lane, want) in lanes.iter().zip(last.values()) {
                    let at = cps.lane(lane).await.unwrap().map(|s| s.position);
                    let reached = matches!(&at, Some(Position::Sequence { sequence })
                        if SequenceNumber::parse(sequence).is_some_and(|s| s >= *want));
                    done &= reached;
                }
                if done {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        archive.run(&mut source, &live, caught_up),
    )
    .await
    .expect("the archive caught up")
    .unwrap();

    // 300 records per shard in batches of 40: 7 full, and the aged tail.
    for lane in &lanes {
        let state = cps.lane(lane).await.unwrap().unwrap();
        assert_eq!(state.committed_seq, 8, "{lane}");
    }
    let objects = read_objects(&*store, &Path::from("kinesis")).await;
    let mut ids: Vec<String> = objects
        .iter()
        .flat_map(|o| o.events.iter().map(|e| e.event_id.clone().unwrap()))
        .collect();
    ids.sort();
    assert_eq!(ids, want, "every record in exactly one object");
    for o in &objects {
        let hour = partition_hour(&o.key);
        assert!(
            o.events
                .iter()
                .all(|e| (hour..hour + HOUR).contains(&e.occurred_at_ms))
        );
        // Named by the first and last record's sequence numbers (56 digits).
        let name = o.key.rsplit('/').next().unwrap();
        let parts: Vec<&str> = name.trim_end_matches(".parquet").rsplitn(3, '-').collect();
        assert!(parts[0].len() >= 50 && parts[1].len() >= 50, "{name}");
        assert!(SequenceNumber::parse(parts[1]) <= SequenceNumber::parse(parts[0]));
    }
}
