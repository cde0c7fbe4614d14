//! Crash harness: `murmur-worker` runs as a child process — JSON Lines
//! backfill, Kafka-offsets handoff through the export's manifest, live Kafka
//! while a producer keeps writing — and is SIGKILLed at random points spread
//! over the backfill, the seam and the live stage. After a final clean run,
//! every stored value equals the ground truth computed here (Sum), or is
//! byte-equal to a crash-free run (HyperLogLog, Top-K, Bloom).
//!
//! The kill points come from a seeded RNG (`MURMUR_CRASH_SEED` to replay a
//! failure; the seed is printed).

use crate::common::*;
use murmur_core::store::RowKey;
use murmur_core::{StateStore, Window};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

fn seed() -> u64 {
    let seed = std::env::var("MURMUR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash harness seed: MURMUR_CRASH_SEED={seed}");
    seed
}

/// `n` kill points: about half in the backfill (after a random number of
/// committed batches, a few milliseconds into the next one), a sixth at
/// the seam (right after the backfill's completion is logged), the rest in
/// live (a random time after every lane started).
fn plan(rng: &mut StdRng, n: usize) -> Vec<Kill> {
    (0..n)
        .map(|k| {
            let f = k as f64 / n as f64;
            if f < 0.5 {
                Kill::After {
                    pattern: "batch committed",
                    nth: rng.random_range(1..8),
                    delay: Duration::from_millis(rng.random_range(0..15)),
                }
            } else if f < 0.67 {
                Kill::After {
                    pattern: "completed",
                    nth: 1,
                    // Before the live lanes have started.
                    delay: Duration::from_millis(rng.random_range(0..3)),
                }
            } else {
                Kill::After {
                    pattern: "lane started",
                    nth: PARTITIONS as usize,
                    delay: Duration::from_millis(rng.random_range(50..700)),
                }
            }
        })
        .collect()
}

struct Crashed {
    kills: BTreeMap<String, usize>,
}

/// Runs the kill plan then a final clean run to the end of the topic.
fn crash_and_finish(
    topic: &Arc<Topic>,
    args: &[String],
    kills: Vec<Kill>,
    per_tick: u64,
) -> Crashed {
    let producer = keep_producing(topic.clone(), per_tick);
    let mut by_phase = BTreeMap::new();
    for kill in &kills {
        match run(worker_with(args), kill, LIMIT) {
            Ended::Killed(phase) => *by_phase.entry(format!("{phase:?}")).or_insert(0) += 1,
            Ended::Exited(status, out) => {
                panic!("a run without --until exited by itself ({status}): {out}")
            }
        }
    }
    producer.finish();
    let mut last = args.to_vec();
    last.extend(["--until".to_owned(), topic.until()]);
    match run(worker_with(&last), &Kill::Never, LIMIT) {
        Ended::Exited(..) => {}
        Ended::Killed(_) => unreachable!(),
    }
    eprintln!("kills by phase: {by_phase:?}");
    Crashed { kills: by_phase }
}

fn assert_spread(c: &Crashed, total: usize) {
    let n: usize = c.kills.values().sum();
    assert!(n >= total, "only {n} kills: {:?}", c.kills);
    for phase in ["Backfill", "Seam", "Live"] {
        assert!(
            c.kills.get(phase).copied().unwrap_or(0) >= 1,
            "no kill in the {phase} phase: {:?}",
            c.kills
        );
    }
}

fn hour_keys(entities: &[String], truth_hours: &[i64]) -> Vec<RowKey> {
    let w = Window::hour();
    entities
        .iter()
        .flat_map(|e| {
            truth_hours
                .iter()
                .map(move |h| RowKey::new(e.as_str(), w.bucket_of(h * HOUR).unwrap()))
        })
        .collect()
}

#[test]
fn sigkill_at_24_points_embedded_sum_is_exact() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let history = 36_000;
    write_export(&p(&dir, "export"), history);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(history));
    let mut args = run_args(&p(&dir, "export"), &topic.brokers);
    args.extend(["--data-dir".into(), p(&dir, "data").display().to_string()]);
    let mut rng = StdRng::seed_from_u64(seed());
    let crashed = crash_and_finish(&topic, &args, plan(&mut rng, 24), 30);
    assert_spread(&crashed, 20);
    let n = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n > history, "live events were produced");
    rt.block_on(compare_sums(&embedded(&p(&dir, "data"), "events"), n));
}

#[test]
fn sigkill_embedded_sketches_are_byte_equal_to_a_crash_free_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let history = 12_000;
    write_export(&p(&dir, "export"), history);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(history));
    let mut rng = StdRng::seed_from_u64(seed());
    // The spread over phases is asserted over the three sketches together:
    // 8 kills leave one or two seam slots per sketch, and on a loaded
    // machine the live lanes can start inside a seam kill's delay.
    let mut all = Crashed {
        kills: BTreeMap::new(),
    };
    for aggregate in ["distinct", "top", "seen"] {
        let mut base = run_args(&p(&dir, "export"), &topic.brokers);
        // A sketch has one row per hour: at 40 keys a lane's backfill is
        // one batch, done before most kills planned for it. At 3 it is
        // about six, so those kills land in the backfill.
        let keys = base.iter().position(|a| a == "--flush-max-keys").unwrap() + 1;
        base[keys] = "3".to_owned();
        let with = |data: &str| -> Vec<String> {
            let mut a = base.clone();
            a.extend(
                [
                    "--aggregate",
                    aggregate,
                    "--data-dir",
                    &p(&dir, data).display().to_string(),
                ]
                .map(str::to_owned),
            );
            a
        };
        let crashed = crash_and_finish(&topic, &with(aggregate), plan(&mut rng, 8), 15);
        let n: usize = crashed.kills.values().sum();
        assert!(n >= 8, "{aggregate}: only {n} kills: {:?}", crashed.kills);
        for (phase, k) in crashed.kills {
            *all.kills.entry(phase).or_insert(0) += k;
        }
        // The crash-free reference over exactly the same events.
        let reference = format!("{aggregate}-reference");
        let mut clean = with(&reference);
        clean.extend(["--until".to_owned(), topic.until()]);
        assert!(matches!(
            run(worker_with(&clean), &Kill::Never, LIMIT),
            Ended::Exited(..)
        ));

        let n = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
        let hours: Vec<i64> = {
            let mut h: Vec<i64> = truth(n).keys().map(|(_, h)| *h).collect();
            h.sort_unstable();
            h.dedup();
            h
        };
        let keys = hour_keys(&["*".to_owned()], &hours);
        let crashed_rows = rt
            .block_on(embedded(&p(&dir, aggregate), "events").get_many(&keys))
            .unwrap();
        let clean_rows = rt
            .block_on(embedded(&p(&dir, &reference), "events").get_many(&keys))
            .unwrap();
        let present = clean_rows.iter().filter(|r| r.is_some()).count();
        assert_eq!(present, hours.len(), "{aggregate}: a row per hour");
        for ((key, a), b) in keys.iter().zip(&crashed_rows).zip(&clean_rows) {
            assert_eq!(
                a.as_ref().map(|v| &v.value),
                b.as_ref().map(|v| &v.value),
                "{aggregate}: row {key:?} differs from the crash-free run"
            );
        }
        eprintln!(
            "{aggregate}: {} rows byte-equal to the crash-free run",
            hours.len()
        );
    }
    assert_spread(&all, 24);
}

#[test]
fn sigkill_at_20_points_dynamodb_sum_is_exact() {
    let Some(endpoint) = service("AWS_ENDPOINT_URL") else {
        return;
    };
    eprintln!("DynamoDB at {endpoint}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let history = 6_000;
    write_export(&p(&dir, "export"), history);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(history));
    let _moto = moto_heavy();
    let table = unique_table("crash");
    let mut args = run_args(&p(&dir, "export"), &topic.brokers);
    args.extend(dynamodb_flags(&table));
    args.push("--create-tables".into());
    let mut rng = StdRng::seed_from_u64(seed());
    let crashed = crash_and_finish(&topic, &args, plan(&mut rng, 20), 10);
    assert_spread(&crashed, 20);
    let n = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let store = murmur_state_ddb::DynamoDbStore::new(
            &client,
            murmur_state_ddb::StoreConfig::new(&table),
        );
        compare_sums(&store, n).await;
    });
}
