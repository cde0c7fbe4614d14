//! The bad-input corpus: every kind of broken input, with the exact message
//! an operator gets.

use std::sync::Arc;

use crate::common::*;
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt as _;
use murmur_core::{CountEvent, Position, RecordCheck};
use murmur_source_snapshot::{
    BadRecord, BadRecordPolicy, BadRecordSink, Chunk, CountEventColumns, CountEventLines, Error,
    JsonLinesOptions, JsonLinesSource, ObjectListing, ParquetSource, RecordLocation,
    SnapshotSource, WorkUnit,
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
    let options = JsonLinesOptions {
        max_line_bytes: 1024,
        ..Default::default()
    };
    let (source, unit) = json_source(name, bytes, options, max).await;
    read_unit(&source, &unit).await
}

async fn read_parquet(bytes: Vec<u8>) -> (Result<usize, Error>, Vec<String>) {
    let source = parquet_source(bytes).await;
    let unit = source.list_units().await.unwrap().remove(0);
    read_unit(&source, &unit).await
}

/// A Parquet source over one object `in/part-0.parquet` holding `bytes`,
/// tolerating 10 bad records.
async fn parquet_source(bytes: Vec<u8>) -> ParquetSource<CountEventColumns> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, "in/part-0.parquet", bytes).await;
    ParquetSource::with_options(
        ObjectListing::new(store, Path::from("in")),
        CountEventColumns,
        Default::default(),
        BadRecordPolicy::max_bad_records(10),
    )
    .unwrap()
}

/// Reads `unit` of `source` whole: the records read (or the error) and the
/// bad records reported.
async fn read_unit<S: SnapshotSource>(
    source: &S,
    unit: &WorkUnit,
) -> (Result<usize, Error>, Vec<String>) {
    let result = source
        .read(unit, &Position::Beginning)
        .try_collect::<Vec<_>>()
        .await
        .map(|chunks| records_and_bad(source, &chunks));
    let bad = source
        .bad_records()
        .samples()
        .iter()
        .map(ToString::to_string)
        .collect();
    (result, bad)
}

/// The records the chunks hold; checks that the bad records they report
/// are those the sink was told of.
fn records_and_bad<S: SnapshotSource>(source: &S, chunks: &[Chunk<S::Item>]) -> usize {
    let bad: u64 = chunks.iter().map(|c| c.bad).sum();
    assert_eq!(
        bad,
        source.bad_records().count(),
        "chunks report their bad records"
    );
    chunks.iter().map(|c| c.records.len()).sum()
}

/// The records of each chunk of `source`'s first unit, read whole.
async fn chunk_sizes<S: SnapshotSource>(source: &S) -> Vec<usize> {
    let unit = source.list_units().await.unwrap().remove(0);
    let chunks: Vec<_> = source
        .read(&unit, &Position::Beginning)
        .try_collect()
        .await
        .unwrap();
    chunks.iter().map(|c| c.records.len()).collect()
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

/// A JSON Lines source over one object `in/a.json` with three bad lines
/// among three good ones, in chunks of two lines, tolerating `max`.
async fn three_bad_lines(max: u64) -> (JsonLinesSource<CountEventLines>, WorkUnit) {
    let text = lines(&[&good("a"), "x", "y", &good("b"), "z", &good("c")]);
    let options = JsonLinesOptions {
        chunk_lines: 2,
        ..Default::default()
    };
    json_source("a.json", text, options, max).await
}

/// A JSON Lines source over one object `in/<name>` holding `bytes`,
/// tolerating `max` bad records, and its unit.
async fn json_source(
    name: &str,
    bytes: Vec<u8>,
    options: JsonLinesOptions,
    max: u64,
) -> (JsonLinesSource<CountEventLines>, WorkUnit) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, &format!("in/{name}"), bytes).await;
    let source = JsonLinesSource::with_options(
        ObjectListing::new(store, Path::from("in")),
        CountEventLines,
        options,
        BadRecordPolicy::max_bad_records(max),
    )
    .unwrap();
    let unit = source.list_units().await.unwrap().remove(0);
    (source, unit)
}

#[tokio::test]
async fn a_chunk_read_again_is_not_counted_again() {
    let (source, unit) = three_bad_lines(3).await;
    for from in [0, 0, 2, 4] {
        let from = Position::Object {
            index: 0,
            key: unit.key.clone(),
            unit: from,
        };
        let chunks: Vec<_> = source.read(&unit, &from).try_collect().await.unwrap();
        let bad: Vec<u64> = chunks.iter().map(|c| c.bad).collect();
        assert_eq!(
            bad[bad.len() - 1],
            1,
            "the last chunk's bad line, each read"
        );
    }
    assert_eq!(
        source.bad_records().count(),
        3,
        "each bad line counted once"
    );
    assert_eq!(source.bad_records().samples().len(), 3);
}

#[tokio::test]
async fn bad_records_carried_over_from_earlier_runs_count_toward_the_limit() {
    let (source, unit) = three_bad_lines(4).await;
    source.bad_records().carry_over(2).unwrap();
    let err = source
        .read(&unit, &Position::Beginning)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "too many bad records: 5 (2 of them committed by earlier runs or other workers) > max_bad_records 4; the last one: `in/a.json`: line 5: invalid CountEvent JSON: expected value at line 1 column 1"
    );
    // A resume with a lower limit than the run already passed fails at once.
    let (source, _) = three_bad_lines(4).await;
    assert_eq!(
        source.bad_records().carry_over(5).unwrap_err().to_string(),
        "too many bad records: 5 (5 of them committed by earlier runs or other workers) > max_bad_records 4; the last one: among those the run's lanes committed (see their dead letters)"
    );
    // Carrying over starts the count afresh: what was read before no
    // longer counts (its chunks will be read again).
    let (source, unit) = three_bad_lines(3).await;
    let chunks: Vec<_> = source
        .read(&unit, &Position::Beginning)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.iter().map(|c| c.bad).sum::<u64>(), 3);
    source.bad_records().carry_over(1).unwrap();
    assert_eq!(source.bad_records().count(), 0);
    let err = source
        .read(&unit, &Position::Beginning)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "too many bad records: 4 (1 of them committed by earlier runs or other workers) > max_bad_records 3;"
        ),
        "{err}"
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

/// `bytes` (a Parquet file) with its footer rewritten to claim `rows[g]`
/// rows for row group `g` (the data pages stay as written).
fn with_row_group_rows(bytes: &[u8], rows: &[i64]) -> Vec<u8> {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let data_end = n - 8 - footer;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::copy_from_slice(bytes))
        .unwrap();
    let mut builder = meta.into_builder();
    let groups = builder
        .take_row_groups()
        .into_iter()
        .zip(rows)
        .map(|(g, &r)| g.into_builder().set_num_rows(r).build().unwrap())
        .collect();
    let meta = builder.set_row_groups(groups).build();
    let mut out = bytes[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &meta)
        .finish()
        .unwrap();
    out
}

#[tokio::test]
async fn parquet_row_group_with_more_rows_than_its_footer_says_is_corrupt() {
    let rows: Vec<_> = (0..200)
        .map(|i| (format!("e{i}"), 1, MAY_1_2026_MS + i))
        .collect();
    let bytes = parquet_bytes(&rows, parquet::basic::Compression::SNAPPY, 100);
    assert_eq!(read_parquet(bytes.clone()).await.0.unwrap(), 200);
    // Row group 0 holds 100 rows but claims 50: an error, not a read that
    // never ends (or one that drops the extra rows).
    let claims_fewer = with_row_group_rows(&bytes, &[50, 100]);
    let (err, _) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        read_parquet(claims_fewer),
    )
    .await
    .expect("the read ends");
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/part-0.parquet`: row group 0 column `entity_id`: the footer says 100 values for 50 rows"
    );
    // The last row group too: its extra rows are not dropped.
    let (err, _) = read_parquet(with_row_group_rows(&bytes, &[100, 60])).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.starts_with("object `in/part-0.parquet`: ") && err.contains("row group 1"),
        "{err}"
    );
    let (err, _) = read_parquet(with_row_group_rows(&bytes, &[100, -5])).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "object `in/part-0.parquet`: row group 1 has an impossible row count -5 in the footer"
    );
}

/// A row group whose other rows' times all miss the event-time range is
/// still read when it holds null event times: each null is a bad record,
/// however the rows fall into row groups.
#[tokio::test]
async fn parquet_null_event_times_are_bad_rows_even_in_row_groups_out_of_range() {
    use murmur_source_snapshot::ParquetOptions;
    let hour = 3_600_000;
    let times = [
        // Row group 0: out of range, and one null.
        Some(MAY_1_2026_MS),
        None,
        // Row group 1: in range.
        Some(MAY_1_2026_MS + 5 * hour),
        Some(MAY_1_2026_MS + 5 * hour),
        // Row group 2: out of range, no null (pruned).
        Some(MAY_1_2026_MS + 9 * hour),
        Some(MAY_1_2026_MS + 9 * hour),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("occurred_at_unix_ms", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a"; 6])),
            Arc::new(Int64Array::from(vec![1; 6])),
            Arc::new(Int64Array::from(times.to_vec())),
        ],
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(2))
        .build();
    let mut bytes = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, "in/part-0.parquet", bytes).await;
    let source = ParquetSource::with_options(
        ObjectListing::new(store, Path::from("in")),
        CountEventColumns,
        ParquetOptions {
            event_time_range: Some(MAY_1_2026_MS + 4 * hour..MAY_1_2026_MS + 6 * hour),
            ..Default::default()
        },
        BadRecordPolicy::max_bad_records(10),
    )
    .unwrap();
    assert_eq!(
        chunk_sizes(&source).await,
        [0, 2, 0],
        "records per row group"
    );
    let bad: Vec<String> = source
        .bad_records()
        .samples()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        bad,
        ["`in/part-0.parquet`: row 2: column `occurred_at_unix_ms` is null"]
    );
}

/// A JSON Lines object rewritten between the listing and the read is an
/// error naming it: its line positions would point at other records. The
/// listed ETag catches it first; from a store without ETags, the size.
#[tokio::test]
async fn json_object_changed_since_the_listing_is_an_error() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let first = lines(&[&good("a"), &good("b")]);
    let listed = first.len();
    put(&store, "in/part-0.json", first).await;
    let source = JsonLinesSource::new(
        ObjectListing::new(Arc::clone(&store), Path::from("in")),
        CountEventLines,
    );
    let mut unit = source.list_units().await.unwrap().remove(0);
    let rewritten = lines(&[&good("a"), &good("b"), &good("c")]);
    let now = rewritten.len();
    put(&store, "in/part-0.json", rewritten).await;
    let err = read_error(&source, &unit, &Position::Beginning).await;
    assert!(matches!(err, Error::Rewritten { .. }), "{err}");
    unit.e_tag = None;
    let err = read_error(&source, &unit, &Position::Beginning).await;
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "object `in/part-0.json`: changed since it was listed ({listed} bytes then, {now} now); \
             restore it, or start a new run over the new objects"
        )
    );
}

/// Chunk sizes up to the type's maximum mean one chunk per row group or
/// object, not an overflow.
#[tokio::test]
async fn the_largest_chunk_sizes_give_one_chunk_per_row_group_or_object() {
    use murmur_source_snapshot::ParquetOptions;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let rows: Vec<_> = (0..300)
        .map(|i| (format!("e{i}"), 1, MAY_1_2026_MS + i))
        .collect();
    put(
        &store,
        "in/part-0.parquet",
        parquet_bytes(&rows, parquet::basic::Compression::SNAPPY, 100),
    )
    .await;
    let parquet = ParquetSource::with_options(
        ObjectListing::new(Arc::clone(&store), Path::from("in")),
        CountEventColumns,
        ParquetOptions {
            chunk_rows: usize::MAX,
            ..Default::default()
        },
        BadRecordPolicy::default(),
    )
    .unwrap();
    let sizes = chunk_sizes(&parquet).await;
    assert_eq!(sizes, [100, 100, 100]);

    let text: Vec<String> = (0..300).map(|i| good(&format!("e{i}"))).collect();
    let text: Vec<&str> = text.iter().map(String::as_str).collect();
    put(&store, "json/part-0.json", lines(&text)).await;
    let json = JsonLinesSource::with_options(
        ObjectListing::new(store, Path::from("json")),
        CountEventLines,
        JsonLinesOptions {
            chunk_lines: u64::MAX,
            ..Default::default()
        },
        BadRecordPolicy::default(),
    )
    .unwrap();
    let sizes = chunk_sizes(&json).await;
    assert_eq!(sizes, [300]);
}

/// Events that decode but that no pipeline could fold (an empty entity id,
/// a time in nanoseconds) are bad records with their line or row, in both
/// formats; the scan goes on.
#[tokio::test]
async fn events_no_pipeline_could_fold_are_bad_records() {
    let nanos = r#"{"entity_id":"n","count":1,"occurred_at_unix_ms":1778248800000000000}"#;
    let (ok, bad) = read_json(
        "a.json",
        lines(&[&good("a"), &good(""), nanos, &good("d")]),
        5,
    )
    .await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        [
            "`in/a.json`: line 2: CountEvent entity_id is empty",
            "`in/a.json`: line 3: CountEvent occurred_at_ms 1778248800000000000 is outside the supported range (±9223372036854775 ms)"
        ]
    );

    let bytes = parquet_with(
        vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("occurred_at_unix_ms", DataType::Int64, false),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a", "", "c"])),
            Arc::new(Int64Array::from(vec![1, 1, 1])),
            Arc::new(Int64Array::from(vec![MAY_1_2026_MS; 3])),
        ],
    );
    let (ok, bad) = read_parquet(bytes).await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        ["`in/part-0.parquet`: row 2: CountEvent entity_id is empty"]
    );
}

/// Records an installed check refuses (a pipeline's: a key it cannot
/// store) are bad records with their line or row and the check's reason,
/// in both formats, the same ones on a read again (not counted again); the
/// last check installed holds; the scan goes on.
#[tokio::test]
async fn records_the_installed_check_refuses_are_bad_records() {
    let check = || -> RecordCheck<CountEvent> {
        Arc::new(|r| match r.value.entity_id.as_str() {
            "b" => Err("pipeline p: entity key \"\": is empty".to_owned()),
            _ => Ok(()),
        })
    };
    let (source, unit) = json_source(
        "a.json",
        lines(&[&good("a"), &good("b"), "x", &good("b"), &good("c")]),
        JsonLinesOptions::default(),
        5,
    )
    .await;
    source.check_records(Arc::new(|_| Err("an earlier check".to_owned())));
    source.check_records(check());
    let (ok, bad) = read_unit(&source, &unit).await;
    assert_eq!(ok.unwrap(), 2);
    let (again, _) = read_unit(&source, &unit).await;
    assert_eq!(again.unwrap(), 2);
    assert_eq!(source.bad_records().count(), 3, "a read again counts none");
    assert_eq!(
        bad,
        [
            "`in/a.json`: line 2: pipeline p: entity key \"\": is empty",
            "`in/a.json`: line 3: invalid CountEvent JSON: expected value at line 1 column 1",
            "`in/a.json`: line 4: pipeline p: entity key \"\": is empty",
        ]
    );

    let source = parquet_source(parquet_with(
        vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("occurred_at_unix_ms", DataType::Int64, false),
        ],
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c", "b"])),
            Arc::new(Int64Array::from(vec![1, 1, 1, 1])),
            Arc::new(Int64Array::from(vec![MAY_1_2026_MS; 4])),
        ],
    ))
    .await;
    source.check_records(check());
    let unit = source.list_units().await.unwrap().remove(0);
    let (ok, bad) = read_unit(&source, &unit).await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(
        bad,
        [
            "`in/part-0.parquet`: row 2: pipeline p: entity key \"\": is empty",
            "`in/part-0.parquet`: row 4: pipeline p: entity key \"\": is empty",
        ]
    );
}

/// The chunk that passes the threshold writes its dead letters before any
/// other reader is stopped: a stopped reader can end the run (and the
/// process) at once, and the letters of the chunk that failed it must be
/// there. The dead-letter store here takes 300 ms per PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_readers_stop_only_once_the_failing_chunks_dead_letters_are_written() {
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    let dlq = Arc::new(InMemory::new());
    let slow = ThrottledStore::new(
        Arc::clone(&dlq),
        ThrottleConfig {
            wait_put_per_call: std::time::Duration::from_millis(300),
            ..ThrottleConfig::default()
        },
    );
    let sink = Arc::new(BadRecordSink::new(
        BadRecordPolicy::max_bad_records(0).with_dead_letter(Arc::new(slow), Path::from("dlq")),
    ));
    let failing = {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let mut chunk = sink.chunk("in/a.json", "lines-1".into());
            chunk
                .report(BadRecord {
                    object: "in/a.json".into(),
                    location: RecordLocation::Line(1),
                    reason: "not JSON".into(),
                    raw: Some("{".into()),
                })
                .await
        })
    };
    // Another reader checks while the PUT is on its way, then after it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let during = sink.check();
    let written = dlq.list(None).try_collect::<Vec<_>>().await.unwrap().len();
    assert!(
        during.is_ok() || written == 1,
        "a reader was stopped before the failing chunk's dead letters were written: {during:?}"
    );
    let err = failing.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::TooManyBadRecords { .. }), "{err}");
    let listed = dlq.list(None).try_collect::<Vec<_>>().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].location.as_ref(), "dlq/in/a.json/lines-1.jsonl");
    assert!(
        matches!(sink.check(), Err(Error::TooManyBadRecords { .. })),
        "every reader stops once they are written"
    );
}
