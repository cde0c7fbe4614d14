//! `murmur-worker` as a user runs it: overlapping exports deduplicated by
//! event id, a finished backfill never run twice (also through a config
//! file), SIGTERM stopping cleanly in the backfill and in live with nothing
//! left to replay, bad lines routed to the dead-letter object, a bad live
//! message stopping the worker unless it skips them, and the demo.

use crate::common::*;
use murmur_core::store::RowKey;
use murmur_core::{StateStore as _, Window};
use std::path::Path;
use std::time::Duration;

fn backfill_only(export: &Path, data: &Path) -> Vec<String> {
    [
        "run",
        "--backfill",
        "jsonl",
        "--from",
        &export.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
        "--chunk-rows",
        "500",
        "--live",
        "none",
        "--progress",
        "never",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A live-only `run` of `topic` into `data` until everything produced so
/// far, with `extra` flags.
fn live_only(topic: &Topic, data: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--backfill",
        "none",
        "--live",
        "kafka",
        "--kafka-brokers",
        &topic.brokers,
        "--kafka-topic",
        TOPIC,
        "--data-dir",
        &data.to_string_lossy(),
        "--until",
        &topic.until(),
        "--progress",
        "never",
    ]
    .map(str::to_owned)
    .to_vec();
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// Sum of every stored (entity, hour) value of the events' keys.
async fn stored_total(data: &Path, n: u64) -> i64 {
    let keys: Vec<RowKey> = truth(n)
        .keys()
        .map(|(e, h)| RowKey::new(e.as_str(), Window::hour().bucket_of(h * HOUR).unwrap()))
        .collect();
    embedded(data, "events")
        .get_many(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.map_or(0, |v| v.value.as_int().unwrap()))
        .sum()
}

#[test]
fn overlapping_export_objects_count_each_event_once_with_dedup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 6_000;
    let export = p(&dir, "export");
    write_export(&export, n);
    // A retried Spark task left a second copy of three hours' output.
    let (mut dup_lines, mut dup_count) = (0u64, 0i64);
    let mut hours: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    hours.sort();
    for hour in &hours[2..5] {
        let text = std::fs::read_to_string(hour.join("part-00000.json")).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            dup_lines += 1;
            dup_count += v["count"].as_i64().unwrap();
        }
        std::fs::write(hour.join("part-00001.json"), text).unwrap();
    }
    assert!(dup_lines > 300, "{dup_lines}");

    let mut args = backfill_only(&export, &p(&dir, "dedup"));
    args.push("--dedup".into());
    let s = finished(&args, &Kill::Never);
    assert_eq!(s["backfill"], "completed");
    assert_eq!(s["duplicates"], dup_lines, "{s}");
    assert_eq!(s["backfill_records"], n + dup_lines, "{s}");
    rt.block_on(compare_sums(&embedded(&p(&dir, "dedup"), "events"), n));

    // Without --dedup the copies are counted: the control shows the test
    // data really overlaps.
    let s = finished(&backfill_only(&export, &p(&dir, "plain")), &Kill::Never);
    assert_eq!(s["duplicates"], 0, "{s}");
    let truth_total: i64 = truth(n).values().sum();
    assert_eq!(
        rt.block_on(stored_total(&p(&dir, "plain"), n)),
        truth_total + dup_count
    );
}

#[test]
fn a_completed_backfill_is_not_run_again_also_through_a_config_file() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 5_000;
    let (export, data) = (p(&dir, "export"), p(&dir, "data"));
    write_export(&export, n);
    let s = finished(&backfill_only(&export, &data), &Kill::Never);
    assert_eq!(s["backfill"], "completed", "{s}");
    assert_eq!(s["backfill_records"], n, "{s}");
    let rows = s["rows"].as_u64().unwrap();
    assert!(rows > 0);

    // The same settings from a config file; the command line adds --json.
    let config = p(&dir, "worker.toml");
    std::fs::write(
        &config,
        format!(
            "backfill = \"jsonl\"\nfrom = {:?}\ndata-dir = {:?}\nlive = \"none\"\nprogress = \"never\"\nlanes = 3\n",
            export.to_string_lossy(),
            data.to_string_lossy()
        ),
    )
    .unwrap();
    let args: Vec<String> = ["--json", "run", "--config", &config.to_string_lossy()]
        .map(str::to_owned)
        .to_vec();
    let s = finished(&args, &Kill::Never);
    assert_eq!(s["backfill"], "already_completed", "{s}");
    assert_eq!(s["backfill_records"], 0, "{s}");
    assert_eq!(s["rows"], 0, "{s}");
    rt.block_on(compare_sums(&embedded(&data, "events"), n));

    // A misspelt setting is refused before anything runs.
    std::fs::write(&config, "lanez = 3\n").unwrap();
    let out = worker_with(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown setting `lanez`") && err.contains("worker.toml"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_cleanly_in_backfill_and_live_and_leaves_nothing_to_replay() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let history = 20_000;
    write_export(&p(&dir, "export"), history);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(history));
    let mut args = run_args(&p(&dir, "export"), &topic.brokers);
    args.extend(["--data-dir".into(), p(&dir, "data").display().to_string()]);
    let producer = keep_producing(topic.clone(), 20);

    let s = finished(
        &args,
        &Kill::Term {
            pattern: "batch committed",
            nth: 3,
            delay: Duration::from_millis(5),
        },
    );
    assert_eq!(s["backfill"], "stopped", "{s}");
    assert_eq!(s["replayed"], 0, "{s}");
    let first = s["backfill_records"].as_u64().unwrap();
    assert!(first > 0 && first < history, "{s}");

    for _ in 0..2 {
        let s = finished(
            &args,
            &Kill::Term {
                pattern: "lane started",
                nth: PARTITIONS as usize,
                delay: Duration::from_millis(400),
            },
        );
        assert_eq!(
            s["replayed"], 0,
            "a graceful stop leaves no open batch: {s}"
        );
        assert!(
            s["backfill"] == "completed" || s["backfill"] == "already_completed",
            "{s}"
        );
    }
    producer.finish();

    let mut last = args.clone();
    last.extend(["--until".to_owned(), topic.until()]);
    let s = finished(&last, &Kill::Never);
    assert_eq!(s["replayed"], 0, "{s}");
    assert_eq!(s["backfill"], "already_completed", "{s}");
    let n = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n > history);
    rt.block_on(compare_sums(&embedded(&p(&dir, "data"), "events"), n));
}

#[test]
fn bad_lines_go_to_dead_letters_once_and_the_threshold_fails_the_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 3_000;
    let export = p(&dir, "export");
    write_export(&export, n);
    let first = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .min()
        .unwrap()
        .join("part-00000.json");
    let mut text = std::fs::read_to_string(&first).unwrap();
    let good_lines = text.lines().count();
    text.push_str("{\"entity_id\": \"e001\", \"count\": \n");
    text.push_str("{\"entity_id\": \"e001\", \"occurred_at\": \"2026-05-08T00:00:00Z\"}\n");
    std::fs::write(&first, text).unwrap();
    let object = first
        .strip_prefix(&export)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Inside the export, as a user keeping rejects beside their input
    // might: a later run must not read them as input.
    let rejects = export.join("rejects");
    let with_rejects = |data: &str, max: &str| {
        let mut args = backfill_only(&export, &p(&dir, data));
        args.extend(
            [
                "--max-bad-records",
                max,
                "--dead-letter",
                &rejects.to_string_lossy(),
            ]
            .map(str::to_owned),
        );
        args
    };
    // The chunk (500 lines) the two bad lines are in, named by its first.
    let chunk = format!(
        "events-backfill/{object}/lines-{}.jsonl",
        good_lines / 500 * 500 + 1
    );

    for data in ["data", "again"] {
        let s = finished(&with_rejects(data, "2"), &Kill::Never);
        // 2, not 4: the first run's dead letters are not input.
        assert_eq!(s["bad_records"], 2, "{s}");
        assert_eq!(s["backfill_records"], n, "{s}");
        rt.block_on(compare_sums(&embedded(&p(&dir, data), "events"), n));
        // The second run of the same run id rewrote the chunk's object,
        // it did not add one.
        let dead = dead_letters(&rejects);
        assert_eq!(dead.keys().collect::<Vec<_>>(), [&chunk], "{dead:?}");
        let dead = &dead[&chunk];
        assert_eq!(dead.len(), 2, "{dead:?}");
        for (k, d) in dead.iter().enumerate() {
            assert_eq!(d["object"], object.as_str(), "{d}");
            assert_eq!(d["location"]["line"], good_lines + 1 + k, "{d}");
            assert!(!d["reason"].as_str().unwrap().is_empty(), "{d}");
        }
    }

    // One bad record allowed, two found: the run fails naming the object,
    // and the chunk that failed it is in the dead letters.
    let mut args = with_rejects("strict", "1");
    args.extend(["--run-id", "strict"].map(str::to_owned));
    let out = worker_with(&args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&object), "{err}");
    let dead = dead_letters(&rejects.join("strict"));
    assert_eq!(dead.values().map(Vec::len).sum::<usize>(), 2, "{dead:?}");
    assert_eq!(dead_letters(&rejects).len(), 2);

    // A mistyped export is an error, not created empty by its dead letters.
    let typo = p(&dir, "exprot");
    let mut args = backfill_only(&typo, &p(&dir, "typo"));
    args.extend(["--dead-letter", &typo.join("rejects").to_string_lossy()].map(str::to_owned));
    let out = worker_with(&args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such directory"), "{err}");
    assert!(!typo.exists());
}

#[test]
fn demo_checks_itself_and_a_second_run_resumes() {
    let dir = tempdir();
    let data = p(&dir, "demo");
    let demo = || {
        let out = worker()
            .args([
                "--progress",
                "never",
                "demo",
                "--data-dir",
                &data.to_string_lossy(),
                "--history-events",
                "4000",
                "--live-events",
                "800",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("OK: every value equals"), "{stdout}");
        stdout
    };
    let first = demo();
    assert!(first.contains("\"backfill\":\"completed\""), "{first}");
    let second = demo();
    assert!(
        second.contains("\"backfill\":\"already_completed\""),
        "{second}"
    );
}

/// A live-only run (`--backfill none`) keeps the token its first run was
/// given: restarted without `--token` it still drops events before the
/// cut (late ones arriving after the restart), and another token is
/// refused.
#[test]
fn a_live_only_run_keeps_its_cut_across_restarts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(90));
    let cut = event(60).2;
    let token = format!("{{\"kind\":\"event_time_cut\",\"at_ms\":{cut}}}");
    let args = |token: Option<&str>| {
        let token = token.map(|t| ["--token", t]);
        live_only(
            &topic,
            &p(&dir, "data"),
            token.as_ref().map_or(&[][..], |t| &t[..]),
        )
    };
    let first = finished(&args(Some(&token)), &Kill::Never);
    let kept = first["live_records"].as_u64().unwrap();
    assert!(
        kept > 0 && first["live_before_cut"].as_u64().unwrap() > 0,
        "{first}"
    );

    // Twenty early events arrive late; the restart has no --token.
    rt.block_on(topic.produce_again(20));
    let second = finished(&args(None), &Kill::Never);
    assert_eq!(
        second["live_before_cut"], 20,
        "the late events are dropped: {second}"
    );
    assert_eq!(second["live_records"], 0, "{second}");

    let other = format!("{{\"kind\":\"event_time_cut\",\"at_ms\":{}}}", cut - 1);
    let out = worker_with(&args(Some(&other))).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("began with token"), "{err}");
}

/// Without a dead-letter topic a live message that does not decode stops
/// the worker with an error naming its partition and offset; the restart
/// with `--skip-bad-messages` passes it by, and every other event is stored
/// exactly once over the two runs.
#[test]
fn a_bad_live_message_stops_the_worker_unless_it_skips_bad_messages() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(30));
    let (partition, offset) = rt.block_on(topic.produce_bad());
    rt.block_on(topic.produce(30));
    let data = p(&dir, "data");
    let args = |extra: &[&str]| live_only(&topic, &data, extra);
    let out = worker_with(&args(&[])).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "bad message at {TOPIC}/{partition}@{offset}: invalid CountEvent JSON"
        )) && err.contains("no dead-letter topic is configured"),
        "{err}"
    );

    let second = finished(&args(&["--skip-bad-messages"]), &Kill::Never);
    assert!(second["live_records"].as_u64().unwrap() > 0, "{second}");
    let want: i64 = (0..61).filter(|&i| i != 30).map(|i| event(i).1).sum();
    assert_eq!(rt.block_on(stored_total(&data, 61)), want);

    // A dead-letter topic and skipping are one or the other.
    let both = worker_with(&args(&[
        "--skip-bad-messages",
        "--kafka-dead-letter-topic",
        "dlq",
    ]))
    .output()
    .unwrap();
    assert!(!both.status.success());
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
