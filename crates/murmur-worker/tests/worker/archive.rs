//! `murmur-worker archive` SIGKILLed at random points while it writes
//! batches: after a clean final run, every message is in exactly one
//! Parquet object.

use crate::common::*;
use arrow_array::cast::AsArray as _;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The event ids in every `.parquet` file under `dir`, per file.
fn archived(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                let mut ids = Vec::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    let col = batch.column_by_name("event_id").unwrap().as_string::<i32>();
                    ids.extend(col.iter().map(|v| v.unwrap().to_owned()));
                }
                let key = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(key, ids);
            }
        }
    }
    out
}

#[test]
fn sigkill_mid_batch_every_message_lands_in_exactly_one_object() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_broker, topic) = Topic::new();
    const N: u64 = 3_000;
    rt.block_on(topic.produce(N));
    let dir = tempdir();
    let out = p(&dir, "archive");
    let data = p(&dir, "data");
    let args: Vec<String> = [
        "archive",
        "--live",
        "kafka",
        "--kafka-brokers",
        &topic.brokers,
        "--kafka-topic",
        TOPIC,
        "--to",
        &out.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
        "--max-records",
        "100",
        "--max-age",
        "300ms",
        "--row-group-rows",
        "32",
        "--until",
        &topic.until(),
        "--progress",
        "never",
        "--log",
        "info,murmur_archive=debug",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let seed = std::env::var("MURMUR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_a4c1);
    eprintln!("archive kill seed {seed} (MURMUR_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..6 {
        // Right after a batch was written the next ones are being
        // encoded and uploaded: kill a few milliseconds into that.
        let kill = Kill::After {
            pattern: "batch archived",
            nth: rng.random_range(1..8),
            delay: Duration::from_millis(rng.random_range(0..40)),
        };
        match run(worker_with(&args), &kill, Duration::from_secs(120)) {
            Ended::Killed(_) => kills += 1,
            Ended::Exited(..) => break,
        }
    }
    assert!(kills >= 4, "only {kills} kills landed");
    let summary = finished(&args, &Kill::Never);
    eprintln!("final run: {summary}");

    let files = archived(&out);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for ids in files.values() {
        for id in ids {
            *seen.entry(id.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "archived twice: {twice:?}");
    let want: BTreeMap<String, usize> = (0..N).map(|i| (format!("ev-{i}"), 1)).collect();
    assert_eq!(
        seen.len(),
        want.len(),
        "{} of {N} messages archived",
        seen.len()
    );
    assert_eq!(seen, want);
    for key in files.keys() {
        assert!(
            key.starts_with("year=2026/month=05/day=0") && key.contains("/part-kafka-events-"),
            "{key}"
        );
    }
}
