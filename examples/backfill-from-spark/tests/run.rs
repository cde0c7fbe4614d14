//! The example on a small JSON Lines export (Hive partitions, `_SUCCESS`,
//! handoff manifest, a gzipped object): every line folded once, the token
//! taken from the manifest, and a second run does not backfill again.

use std::io::Write as _;

#[test]
fn backfills_a_small_export_once() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("events");
    let mut lines = 0;
    for day in 1..=3 {
        let part = export.join(format!("year=2026/month=05/day=0{day}"));
        std::fs::create_dir_all(&part).unwrap();
        let mut text = String::new();
        for i in 0..100 {
            text += &format!(
                "{{\"entity_id\":\"e{}\",\"count\":{},\"occurred_at\":\"2026-05-0{day}T{:02}:00:00Z\"}}\n",
                i % 7,
                1 + i % 3,
                i % 24
            );
            lines += 1;
        }
        if day == 2 {
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(part.join("part-00000.json.gz")).unwrap(),
                flate2::Compression::default(),
            );
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(part.join("part-00000.json"), text).unwrap();
        }
    }
    std::fs::write(export.join("_SUCCESS"), "").unwrap();
    let token = r#"{"kind":"kafka","topic":"events","offsets":{"0":300}}"#;
    std::fs::write(export.join("_murmur_handoff.json"), token).unwrap();
    let data = dir.path().join("data");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backfill-from-spark"))
            .args(["jsonl", export.to_str().unwrap(), data.to_str().unwrap()])
            .env("RUST_LOG", "error")
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
    assert!(
        first.contains(&format!("backfill completed: {lines} records")),
        "{first}"
    );
    assert!(first.contains(token), "{first}");
    let second = run();
    assert!(
        second.contains("already completed (not re-run)"),
        "{second}"
    );
}
