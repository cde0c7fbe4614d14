//! Replay into a shadow version and an atomic swap, against DynamoDB
//! (moto) while live events flow: a `run` worker serves queries and writes
//! version 0; `replay --to-version 1` backfills version 1 from the same
//! export, catches up from its token and swaps the alias; the worker moves
//! its writes to version 1 at a batch boundary. Queries equal the ground
//! truth before and after the swap, version 1 holds every event exactly
//! once, and a stale swap is refused.

use crate::common::*;
use crate::http::{Api, Served, check_queries, wait_for_all};
use murmur_core::{AliasStore as _, StoreError};
use murmur_state_ddb::{DynamoDbAliasStore, DynamoDbStore, StoreConfig};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn replay_into_a_new_version_and_swap_while_live_events_flow() {
    if service("AWS_ENDPOINT_URL").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 4_000;
    let export = p(&dir, "export");
    write_export(&export, n);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(n));
    let _moto = moto_heavy();
    let table = unique_table("replay");
    let aliases = format!("{table}-aliases");
    let mut store = dynamodb_flags(&table);
    store.push("--create-tables".into());

    // Batches of up to 1,000 rows: moto answers a few hundred requests a
    // second, and two writers share it here.
    let run_args = |export: &std::path::Path, brokers: &str| {
        let mut args = run_args(export, brokers);
        let at = args.iter().position(|a| a == "--flush-max-keys").unwrap();
        args[at + 1] = "1000".into();
        args
    };
    // The live worker, on version 0, serving queries.
    let mut live = run_args(&export, &topic.brokers);
    live.extend(store.iter().cloned());
    live.extend(["--listen", "127.0.0.1:0"].map(str::to_owned));
    let served = Served::spawn(&live);
    let api = Api::new(&served, "events");
    let health = |api: &Api| {
        let body = rt.block_on(api.get("/healthz")).1;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let wait = |what: &str, ok: &dyn Fn(&Value) -> bool| {
        let started = Instant::now();
        loop {
            let h = health(&api);
            if ok(&h) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "never {what}: {h}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("live", &|h| h["stage"] == "live");

    // Before the swap: exact on version 0.
    let producer = keep_producing(topic.clone(), 5);
    std::thread::sleep(Duration::from_millis(500));
    producer.finish();
    let before = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        assert_eq!(wait_for_all(&api, before).await, 0, "answered by version 0");
        check_queries(&api, before).await;
    });

    // Replay while events flow (20 a second: moto, on one core, serves
    // both writers): backfill version 1, catch up to what was produced when
    // the replay started, swap.
    let producer = keep_producing(topic.clone(), 1);
    std::thread::sleep(Duration::from_millis(300));
    let mut replay: Vec<String> = ["replay", "--to-version", "1"].map(str::to_owned).to_vec();
    replay.extend(run_args(&export, &topic.brokers).into_iter().skip(1));
    replay.extend(store.iter().cloned());
    replay.extend(["--until".to_owned(), topic.until()]);
    let started = Instant::now();
    let s = finished(&replay, &Kill::Never);
    eprintln!("replay into version 1 took {:.1?}: {s}", started.elapsed());
    assert_eq!(s["swapped"], true, "{s}");
    assert_eq!(s["version"], 1);
    assert_eq!(s["backfill"], "completed");
    assert_eq!(s["backfill_records"], n);
    assert!(
        s["live_records"].as_u64().unwrap() > 0,
        "the catch-up read live events: {s}"
    );

    // The worker moves its writes to version 1 while events still flow.
    wait("on version 1", &|h| h["version"] == 1);
    std::thread::sleep(Duration::from_millis(500));
    producer.finish();
    rt.block_on(topic.produce(300));
    let total = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        assert_eq!(wait_for_all(&api, total).await, 1, "answered by version 1");
        check_queries(&api, total).await;
        // Every row of version 1 holds the fold of every event exactly once.
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let v1 = DynamoDbStore::new(&client, StoreConfig::new(format!("{table}_v1")));
        compare_sums(&v1, total).await;

        // A stale swap is refused, and changes nothing.
        let alias = DynamoDbAliasStore::new(&client, StoreConfig::new(&aliases));
        match alias.swap("events", 1).await {
            Err(StoreError::StaleSwap {
                active, requested, ..
            }) => assert_eq!((active, requested), (1, 1)),
            other => panic!("a second swap to 1 must be refused: {other:?}"),
        }
        assert_eq!(alias.active("events").await.unwrap(), Some(1));
    });
    // So is a replay into a version that is not newer.
    let out = worker_with(&replay).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a replay into the active version must fail"
    );
    assert!(
        stderr.contains("the active version is 1") && stderr.contains("replay into version 2"),
        "{stderr}"
    );

    let s = summary(&served.stop());
    assert_eq!(s["version"], 1, "the worker ended on version 1: {s}");
    assert_eq!(s["backfill_records"], n);
}

/// A bad export redone on the embedded store (one process at a time: the
/// worker is stopped while the replay runs): version 1 holds the corrected
/// history, queries follow the swap, version 0 is left as it was.
#[test]
fn replay_of_a_corrected_export_on_the_embedded_store() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let data = p(&dir, "data").to_string_lossy().into_owned();
    // The first export lost its last 1,000 events; the corrected one has all.
    let (short, full) = (3_000, 4_000);
    write_export(&p(&dir, "short"), short);
    write_export(&p(&dir, "full"), full);
    let args = |cmd: &[&str], export: &str| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
        a.extend(
            [
                "--backfill",
                "jsonl",
                "--from",
                &p(&dir, export).to_string_lossy(),
                "--live",
                "none",
                "--data-dir",
                &data,
                "--progress",
                "never",
            ]
            .map(str::to_owned),
        );
        a
    };
    let s = finished(&args(&["run"], "short"), &Kill::Never);
    assert_eq!(
        (s["backfill_records"].as_u64(), s["version"].as_u64()),
        (Some(short), Some(0))
    );
    let s = finished(
        &args(&["replay", "--to-version", "1"], "full"),
        &Kill::Never,
    );
    assert_eq!(s["swapped"], true, "{s}");
    assert_eq!(s["backfill_records"], full);

    let served = Served::spawn(
        &["serve", "--data-dir", &data, "--listen", "127.0.0.1:0"].map(str::to_owned),
    );
    let api = Api::new(&served, "events");
    rt.block_on(async {
        assert_eq!(wait_for_all(&api, full).await, 1, "answered by version 1");
        check_queries(&api, full).await;
    });
    served.stop();
    // Version 0 is untouched, and a later run writes version 1.
    rt.block_on(compare_sums(
        &embedded(std::path::Path::new(&data), "events"),
        short,
    ));
    let s = finished(&args(&["run"], "full"), &Kill::Never);
    assert_eq!(
        (s["backfill"].as_str(), s["version"].as_u64()),
        (Some("already_completed"), Some(1))
    );
    let out = worker_with(&args(&["replay", "--to-version", "1"], "full"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a swap never goes back"));
}
