//! The bad-input corpus: every kind of broken input, with the exact message
//! an operator gets.

use std::sync::Arc;

use crate::common::*;
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt as _;
use murmur_core::Position;
use murmur_source_snapshot::{
    BadRecordPolicy, CountEventColumns, CountEventLines, Error, JsonLinesOptions, JsonLinesSource,
    ObjectListing, ParquetSource, SnapshotSource,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;

fn good(entity: &str) -> String {
    json_line(entity, 1, MAY_1_2026_MS)
}

/// Reads one JSON Lines object with `max` tolerated bad records; returns the
/// records read (or the error) and the bad records reported.
async fn read_json(name: &str, bytes: Vec<u8>, max: u64) -> (Result<usize, Error>, Vec<String>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, &format!("in/{name}"), bytes).await;
    let options = JsonLinesOptions {
        max_line_bytes: 1024,
        ..Default::default()
    };
    let source = JsonLinesSource::with_options(
        ObjectListing::new(store, Path::from("in")),
        CountEventLines,
        options,
        BadRecordPolicy::max_bad_records(max),
    )
    .unwrap();
    let unit = source.list_units().await.unwrap().remove(0);
    let result = source
        .read(&unit, &Position::Beginning)
        .try_collect::<Vec<_>>()
        .await
        .map(|chunks| chunks.iter().map(|c| c.records.len()).sum());
    let bad = source
        .bad_records()
        .samples()
        .iter()
        .map(ToString::to_string)
        .collect();
    (result, bad)
}

async fn read_parquet(bytes: Vec<u8>) -> (Result<usize, Error>, Vec<String>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, "in/part-0.parquet", bytes).await;
    let source = ParquetSource::with_options(
        ObjectListing::new(store, Path::from("in")),
        CountEventColumns,
        Default::default(),
        BadRecordPolicy::max_bad_records(10),
    )
    .unwrap();
    let unit = source.list_units().await.unwrap().remove(0);
    let result = source
        .read(&unit, &Position::Beginning)
        .try_collect::<Vec<_>>()
        .await
        .map(|chunks| chunks.iter().map(|c| c.records.len()).sum());
    let bad = source
        .bad_records()
        .samples()
        .iter()
        .map(ToString::to_string)
        .collect();
    (result, bad)
}

fn lines(lines: &[&str]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

#[tokio::test]
async fn json_bad_syntax_is_a_bad_record() {
    let (ok, bad) = read_json(
        "a.json",
        lines(&[&good("a"), r#"{"entity_id": "b", "count": 1,"#, &good("c")]),
        5,
    )
    .await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        [
            "`in/a.json`: line 2: invalid CountEvent JSON: EOF while parsing a value at line 1 column 30"
        ]
    );
}

#[tokio::test]
async fn json_wrong_type_is_a_bad_record() {
    let line = r#"{"entity_id":"b","count":"three","occurred_at":"2026-05-01T00:00:00Z"}"#;
    let (ok, bad) = read_json("a.json", lines(&[line, &good("a")]), 5).await;
    assert_eq!(ok.unwrap(), 1);
    assert_eq!(
        bad,
        [
            r#"`in/a.json`: line 1: invalid CountEvent JSON: invalid type: string "three", expected i64 at line 1 column 32"#
        ]
    );
}

#[tokio::test]
async fn json_missing_field_is_a_bad_record() {
    let line = r#"{"entity_id":"b","occurred_at":"2026-05-01T00:00:00Z"}"#;
    let (ok, bad) = read_json("a.json", lines(&[&good("a"), &good("a"), line]), 5).await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        ["`in/a.json`: line 3: invalid CountEvent JSON: missing field `count` at line 1 column 54"]
    );
}

#[tokio::test]
async fn json_bad_timestamp_is_a_bad_record() {
    let line = r#"{"entity_id":"b","count":1,"occurred_at":"2026-05-01 25:00:00"}"#;
    let (ok, bad) = read_json("a.json", lines(&[line]), 5).await;
    assert_eq!(ok.unwrap(), 0);
    assert_eq!(
        bad,
        [
            r#"`in/a.json`: line 1: invalid RFC 3339 timestamp "2026-05-01 25:00:00" in occurred_at: input is out of range"#
        ]
    );
}

#[tokio::test]
async fn json_over_long_line_is_a_bad_record_and_reading_goes_on() {
    let long = format!(
        r#"{{"entity_id":"{}","count":1,"occurred_at":"2026-05-01T00:00:00Z"}}"#,
        "x".repeat(5000)
    );
    let (ok, bad) = read_json(
        "a.json.gz",
        gzip(&lines(&[&good("a"), &long, &good("b")])),
        5,
    )
    .await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        ["`in/a.json.gz`: line 2: line of 5063 bytes exceeds max_line_bytes (1024)"]
    );
}

#[tokio::test]
async fn truncated_gzip_is_a_corrupt_object() {
    let body: Vec<String> = (0..2000).map(|i| good(&format!("e{i}"))).collect();
    let refs: Vec<&str> = body.iter().map(String::as_str).collect();
    let mut gz = gzip(&lines(&refs));
    gz.truncate(gz.len() / 2);
    let (err, _) = read_json("a.json.gz", gz, 5).await;
    let err = err.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }));
    assert_eq!(
        err.to_string(),
        "object `in/a.json.gz`: corrupt or truncated gzip stream: unexpected end of file"
    );
}

#[tokio::test]
async fn gz_suffix_on_plain_text_is_a_corrupt_object() {
    let (err, _) = read_json("a.json.gz", lines(&[&good("a")]), 5).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/a.json.gz`: named as gzip but is not gzip (first bytes: [7b 22 65 6e])"
    );
    let (err, _) = read_json("empty.json.gz", Vec::new(), 5).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/empty.json.gz`: named as gzip but is not gzip (first bytes: [])"
    );
}

#[tokio::test]
async fn zstd_garbage_is_a_corrupt_object() {
    let mut bytes = vec![0x28, 0xb5, 0x2f, 0xfd];
    bytes.extend((0..500u32).map(|i| (i * 7919 % 251) as u8));
    let (err, _) = read_json("a.json.zst", bytes, 5).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.starts_with("object `in/a.json.zst`: corrupt or truncated zstd stream: "),
        "{err}"
    );
}

#[tokio::test]
async fn compression_is_detected_by_magic_bytes_without_a_suffix() {
    let (ok, _) = read_json("part-0", gzip(&lines(&[&good("a"), &good("b")])), 0).await;
    assert_eq!(ok.unwrap(), 2);
    let (ok, _) = read_json("part-1", zstd(&lines(&[&good("a")])), 0).await;
    assert_eq!(ok.unwrap(), 1);
}

#[tokio::test]
async fn too_many_bad_records_fails_the_scan() {
    let (err, bad) = read_json(
        "a.json",
        lines(&[&good("a"), "x", "y", &good("b"), "z", &good("c")]),
        2,
    )
    .await;
    assert_eq!(bad.len(), 3);
    assert_eq!(
        err.unwrap_err().to_string(),
        "too many bad records: 3 > max_bad_records 2; the last one: `in/a.json`: line 5: invalid CountEvent JSON: expected value at line 1 column 1"
    );
}

#[tokio::test]
async fn corrupt_parquet_footer_is_a_corrupt_object() {
    let mut bytes = parquet_bytes(
        &[("a".into(), 1, MAY_1_2026_MS)],
        parquet::basic::Compression::SNAPPY,
        100,
    );
    let n = bytes.len();
    bytes[n - 6] ^= 0xff; // inside the footer length / metadata
    bytes[n - 1] = b'X'; // the PAR1 magic
    let (err, _) = read_parquet(bytes).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/part-0.parquet`: not a readable Parquet file: Parquet error: Invalid Parquet file. Corrupt footer"
    );
    let (err, _) = read_parquet(b"PAR1".to_vec()).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.starts_with("object `in/part-0.parquet`: not a readable Parquet file: "),
        "{err}"
    );
}

fn parquet_with(fields: Vec<Field>, columns: Vec<arrow_array::ArrayRef>) -> Vec<u8> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

#[tokio::test]
async fn parquet_missing_column_is_one_schema_error() {
    let bytes = parquet_with(
        vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("occurred_at_unix_ms", DataType::Int64, false),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int64Array::from(vec![MAY_1_2026_MS])),
        ],
    );
    let (err, _) = read_parquet(bytes).await;
    let err = err.unwrap_err();
    assert!(matches!(err, Error::Schema { .. }));
    assert_eq!(
        err.to_string(),
        "object `in/part-0.parquet`: column `count`: missing (the file has: entity_id, occurred_at_unix_ms)"
    );
}

#[tokio::test]
async fn parquet_wrong_column_type_is_one_schema_error() {
    let bytes = parquet_with(
        vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("count", DataType::Utf8, false),
            Field::new("occurred_at_unix_ms", DataType::Int64, false),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["1"])),
            Arc::new(Int64Array::from(vec![MAY_1_2026_MS])),
        ],
    );
    let (err, _) = read_parquet(bytes).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/part-0.parquet`: column `count`: expected an integer column (Int64), found Utf8"
    );
}

#[tokio::test]
async fn parquet_null_in_a_required_column_is_a_bad_row() {
    let bytes = parquet_with(
        vec![
            Field::new("entity_id", DataType::Utf8, true),
            Field::new("count", DataType::Int64, true),
            Field::new("occurred_at_unix_ms", DataType::Int64, true),
        ],
        vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                None,
                Some("d"),
            ])),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(1), Some(1)])),
            Arc::new(Int64Array::from(vec![MAY_1_2026_MS; 4])),
        ],
    );
    let (ok, bad) = read_parquet(bytes).await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        [
            "`in/part-0.parquet`: row 2: column `count` is null",
            "`in/part-0.parquet`: row 3: column `entity_id` is null"
        ]
    );
}

#[tokio::test]
async fn truncated_parquet_is_a_corrupt_object() {
    let rows: Vec<_> = (0..5000)
        .map(|i| (format!("e{i}"), 1, MAY_1_2026_MS + i))
        .collect();
    let mut bytes = parquet_bytes(&rows, parquet::basic::Compression::SNAPPY, 1000);
    bytes.truncate(bytes.len() / 2);
    let (err, _) = read_parquet(bytes).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.starts_with("object `in/part-0.parquet`: not a readable Parquet file: "),
        "{err}"
    );
}
