//! The example against kinesalite: 300 events put to a 2-shard stream, the
//! export holds the first 200 with their last sequence numbers as the
//! token; after the run every hourly sum equals the fold of all 300, and a
//! second run neither backfills nor reads anything again.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use murmur_core::store::RowKey;
use murmur_core::{EmbeddedStore, StateStore as _, Window};
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000;
/// 2026-05-08T00:00:00Z.
const T0: i64 = 1_778_198_400_000;

fn event(i: i64) -> (String, i64, i64) {
    (format!("e{}", i % 5), 1 + i % 3, T0 + (i % 7) * HOUR + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_kinesis_from_the_token_is_exact() {
    if std::env::var("AWS_ENDPOINT_URL_KINESIS").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs this through `cargo xtask test` (kinesalite)"
        );
        eprintln!("skipped: no kinesalite (run through `cargo xtask test`)");
        return;
    }
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let kinesis = aws_sdk_kinesis::Client::new(&aws);
    let stream = format!("kinesis-handoff-{}", std::process::id());
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let (mut lines, mut last_seq) = (String::new(), BTreeMap::new());
    for i in 0..300 {
        let (e, c, t) = event(i);
        let json = format!(r#"{{"entity_id":"{e}","count":{c},"occurred_at_unix_ms":{t}}}"#);
        let put = kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(&e)
            .data(Blob::new(json.clone()))
            .send()
            .await
            .unwrap();
        if i < 200 {
            lines += &json;
            lines.push('\n');
            last_seq.insert(put.shard_id().to_owned(), put.sequence_number().to_owned());
        }
    }
    std::fs::write(export.join("part-00000.json"), lines).unwrap();
    let token =
        serde_json::json!({"kind": "kinesis", "stream": stream, "sequence_numbers": last_seq});
    std::fs::write(export.join("_murmur_handoff.json"), token.to_string()).unwrap();
    std::fs::write(export.join("_SUCCESS"), "").unwrap();

    let data = dir.path().join("data");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinesis-handoff"))
            .args([
                export.to_str().unwrap(),
                &stream,
                data.to_str().unwrap(),
                "3",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run();
    assert!(first.contains("Completed"), "{first}");
    assert!(first.contains("live: 100 records"), "{first}");
    let second = run();
    assert!(second.contains("AlreadyCompleted"), "{second}");
    assert!(second.contains("live: 0 records"), "{second}");

    let mut truth: BTreeMap<RowKey, i64> = BTreeMap::new();
    for i in 0..300 {
        let (e, c, t) = event(i);
        let key = RowKey::new(e.as_str(), Window::hour().bucket_of(t).unwrap());
        *truth.entry(key).or_default() += c;
    }
    let store = EmbeddedStore::open(data.join("murmur.redb"))
        .unwrap()
        .with_namespace("hourly_sums");
    let keys: Vec<RowKey> = truth.keys().cloned().collect();
    let got: Vec<i64> = store
        .get_many(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.map_or(0, |v| v.value.as_int().unwrap()))
        .collect();
    let want: Vec<i64> = truth.values().copied().collect();
    assert_eq!(got, want, "no gap and no double count at the seam");
}
