//! JSON Lines and Parquet sources over a local directory, memory and S3
//! (moto), on data sets written by this crate's own helper.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::common::*;
use futures::{StreamExt as _, TryStreamExt as _};
use murmur_core::{CountEvent, HandoffToken, Position, Record};
use murmur_source_snapshot::{
    BadRecordPolicy, Chunk, CountEventColumns, CountEventLines, Error, JsonLinesOptions,
    JsonLinesSource, LanePlan, ObjectListing, ParquetOptions, ParquetSource, SnapshotSource,
    WorkUnit,
};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

const SPEC: Spec = Spec {
    days: 3,
    hours: 4,
    rows: 1000,
    entities: 50,
    row_group_rows: 300,
};

fn local_store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    (dir, Arc::new(store))
}

fn json_source(listing: ObjectListing) -> JsonLinesSource<CountEventLines> {
    let options = JsonLinesOptions {
        chunk_lines: 100,
        ..Default::default()
    };
    JsonLinesSource::with_options(
        listing,
        CountEventLines,
        options,
        BadRecordPolicy::default(),
    )
    .unwrap()
}

fn parquet_source(listing: ObjectListing) -> ParquetSource<CountEventColumns> {
    let options = ParquetOptions {
        chunk_rows: 128,
        ..Default::default()
    };
    ParquetSource::with_options(
        listing,
        CountEventColumns,
        options,
        BadRecordPolicy::default(),
    )
    .unwrap()
}

fn values(records: Vec<Record<CountEvent>>) -> Vec<CountEvent> {
    records.into_iter().map(|r| r.value).collect()
}

/// Writes the data set, lists it, reads it all, compares with ground truth.
async fn totals_match(store: Arc<dyn ObjectStore>, format: Format) {
    let truth = write_dataset(&store, "events", &SPEC, format).await;
    let listing = ObjectListing::new(Arc::clone(&store), Path::from("events"));
    let units = listing.list().await.unwrap();
    // 12 partitions; `_SUCCESS` and the `.crc` files are skipped.
    assert_eq!(units.len(), 12);
    assert!(
        units.windows(2).all(|w| w[0].key < w[1].key),
        "lexicographic"
    );
    assert!(units.iter().enumerate().all(|(i, u)| u.index == i as u64));
    assert_eq!(units[0].partitions.get("day"), Some("01"));
    assert_eq!(units[0].partitions.get_i64("hour"), Some(0));
    let records = match format {
        Format::Parquet => values(read_all(&parquet_source(listing), &units, 3).await),
        Format::JsonLines => values(read_all(&json_source(listing), &units, 3).await),
    };
    assert_eq!(truth.rows, 12_000);
    assert_eq!(Truth::of_events(&records), truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_parquet_totals_match_ground_truth() {
    let (_dir, store) = local_store();
    totals_match(store, Format::Parquet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_jsonl_totals_match_ground_truth() {
    let (_dir, store) = local_store();
    totals_match(store, Format::JsonLines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_parquet_totals_match_ground_truth() {
    let Some((store, _bucket)) = s3_store("the S3 Parquet test") else {
        return;
    };
    totals_match(store, Format::Parquet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_jsonl_totals_match_ground_truth() {
    let Some((store, _bucket)) = s3_store("the S3 JSON Lines test") else {
        return;
    };
    totals_match(store, Format::JsonLines).await;
}

/// A filter on day=02 opens exactly the day=02 objects and nothing else.
async fn pruning_opens_only_matching_objects(inner: Arc<dyn ObjectStore>, format: Format) {
    let truth = write_dataset(&inner, "events", &SPEC, format).await;
    let counting = CountingStore::new(inner);
    let store: Arc<dyn ObjectStore> = counting.clone();
    let listing = ObjectListing::new(store, Path::from("events"))
        .partition_filter(|p| p.get_i64("day") == Some(2));
    let units = listing.list().await.unwrap();
    assert_eq!(units.len(), 4);
    let records = match format {
        Format::Parquet => values(read_all(&parquet_source(listing), &units, 2).await),
        Format::JsonLines => values(read_all(&json_source(listing), &units, 2).await),
    };
    assert_eq!(records.len() as u64, truth.per_day[&2].0);
    assert_eq!(
        records.iter().map(|e| e.count).sum::<i64>(),
        truth.per_day[&2].1
    );

    let touched: BTreeSet<String> = counting.requests_per_path().into_keys().collect();
    let expected: BTreeSet<String> = units.iter().map(|u| u.key.to_string()).collect();
    assert_eq!(touched, expected, "only day=02 objects were requested");
    match format {
        Format::Parquet => {
            assert!(
                counting.of(Op::Get).is_empty(),
                "Parquet is read with ranged requests only"
            );
            assert!(
                counting.of(Op::Head).is_empty(),
                "sizes come from the listing"
            );
        }
        Format::JsonLines => {
            assert!(
                counting.of(Op::Get).values().all(|&n| n == 1),
                "one streaming GET per object"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_partition_pruning_parquet() {
    let (_dir, store) = local_store();
    pruning_opens_only_matching_objects(store, Format::Parquet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_partition_pruning_jsonl() {
    let (_dir, store) = local_store();
    pruning_opens_only_matching_objects(store, Format::JsonLines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_partition_pruning_parquet_and_jsonl() {
    let Some((store, _)) = s3_store("the S3 pruning test") else {
        return;
    };
    let Some((store2, _)) = s3_store("the S3 pruning test") else {
        return;
    };
    pruning_opens_only_matching_objects(store, Format::Parquet).await;
    pruning_opens_only_matching_objects(store2, Format::JsonLines).await;
}

/// Reads lanes in order, stops after `stop_after` chunks, then resumes from
/// the saved checkpoints: every row is delivered exactly once in total.
async fn resume_delivers_exactly_once<S>(source: S, stop_after: usize, truth: &Truth)
where
    S: SnapshotSource<Item = CountEvent>,
{
    let units = source.list_units().await.unwrap();
    let plan = LanePlan::new("test", units, 3).unwrap();
    // Per lane checkpoint: (unit position in lane, position to resume from).
    let mut checkpoints: HashMap<String, (usize, Position)> = HashMap::new();
    let mut delivered: Vec<(String, u64, CountEvent)> = Vec::new();
    let deliver = |chunk: Chunk<CountEvent>, delivered: &mut Vec<_>| {
        let key = unit_key(&chunk.start);
        for r in chunk.records {
            let Position::Row { row } = r.position else {
                panic!("row position")
            };
            delivered.push((key.clone(), row, r.value));
        }
    };

    // Run 1: chunks round-robin over lanes until `stop_after` chunks, then "crash".
    let mut taken = 0;
    'run1: for lane in plan.lanes() {
        for (i, unit) in lane.units.iter().enumerate() {
            let mut chunks = source.read(unit, &Position::Beginning);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.unwrap();
                let end = chunk.end.clone();
                let last = chunk.last;
                deliver(chunk, &mut delivered);
                let next = if last {
                    (i + 1, Position::Beginning)
                } else {
                    (i, end)
                };
                checkpoints.insert(lane.lane.to_string(), next);
                taken += 1;
                if taken == stop_after {
                    break 'run1;
                }
            }
        }
    }
    let first_run = delivered.len();
    assert!(first_run > 0 && (first_run as u64) < truth.rows);

    // Run 2: resume every lane from its checkpoint.
    for lane in plan.lanes() {
        let (start_unit, from) = checkpoints
            .get(lane.lane.as_str())
            .cloned()
            .unwrap_or((0, Position::Beginning));
        for (i, unit) in lane.units.iter().enumerate().skip(start_unit) {
            let from = if i == start_unit {
                from.clone()
            } else {
                Position::Beginning
            };
            let chunks: Vec<_> = source.read(unit, &from).try_collect().await.unwrap();
            for chunk in chunks {
                deliver(chunk, &mut delivered);
            }
        }
    }
    let mut seen = BTreeMap::new();
    for (key, row, _) in &delivered {
        *seen.entry((key.clone(), *row)).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "no row delivered twice");
    assert_eq!(seen.len() as u64, truth.rows, "no row lost");
    let events: Vec<CountEvent> = delivered.into_iter().map(|d| d.2).collect();
    assert_eq!(&Truth::of_events(&events), truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_crash_delivers_every_record_once() {
    for (format, stop_after) in [
        (Format::Parquet, 1),
        (Format::Parquet, 23),
        (Format::JsonLines, 7),
        (Format::JsonLines, 61),
    ] {
        let (_dir, store) = local_store();
        let truth = write_dataset(&store, "events", &SPEC, format).await;
        let listing = ObjectListing::new(store, Path::from("events"));
        match format {
            Format::Parquet => {
                resume_delivers_exactly_once(parquet_source(listing), stop_after, &truth).await
            }
            Format::JsonLines => {
                resume_delivers_exactly_once(json_source(listing), stop_after, &truth).await
            }
        }
    }
}

/// A Parquet and a JSON Lines source over the data set, written to memory.
async fn memory_sources() -> (
    ParquetSource<CountEventColumns>,
    JsonLinesSource<CountEventLines>,
) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    write_dataset(&store, "p", &SPEC, Format::Parquet).await;
    write_dataset(&store, "j", &SPEC, Format::JsonLines).await;
    (
        parquet_source(ObjectListing::new(Arc::clone(&store), Path::from("p"))),
        json_source(ObjectListing::new(Arc::clone(&store), Path::from("j"))),
    )
}

/// Reading from any chunk's start reproduces that chunk exactly; chunk
/// boundaries follow row groups (Parquet) and multiples of the chunk size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_chunk_start_reproduces_the_chunk() {
    let (parquet, json) = memory_sources().await;

    async fn check<S: SnapshotSource<Item = CountEvent>>(source: &S, expected_bounds: &[u64]) {
        let unit = &source.list_units().await.unwrap()[5];
        let chunks: Vec<_> = source
            .read(unit, &Position::Beginning)
            .try_collect()
            .await
            .unwrap();
        let bounds: Vec<u64> = chunks
            .iter()
            .map(|c| match c.end {
                Position::Object { unit, .. } => unit,
                _ => panic!(),
            })
            .collect();
        assert_eq!(bounds, expected_bounds);
        for chunk in &chunks {
            let again: Vec<_> = source.read(unit, &chunk.start).try_collect().await.unwrap();
            assert_eq!(&again[0], chunk, "replay of {}", chunk.start);
        }
        // Resuming mid-chunk: the first chunk ends at the next boundary.
        let from = Position::Object {
            index: unit.index,
            key: unit.key.clone(),
            unit: 200,
        };
        let partial: Vec<_> = source.read(unit, &from).try_collect().await.unwrap();
        assert_eq!(partial[0].start, from);
        assert_eq!(
            partial[0].records.len(),
            (chunks_end_after(&bounds, 200) - 200) as usize
        );
        // Past the end: an error naming the object; at the end: one empty last chunk.
        let end_pos = Position::Object {
            index: unit.index,
            key: unit.key.clone(),
            unit: 1000,
        };
        let at_end: Vec<_> = source.read(unit, &end_pos).try_collect().await.unwrap();
        assert_eq!(at_end.len(), 1);
        assert!(at_end[0].last && at_end[0].records.is_empty());
        let past = Position::Object {
            index: unit.index,
            key: unit.key.clone(),
            unit: 1001,
        };
        let err = read_error(source, unit, &past).await;
        assert!(matches!(err, Error::Position { .. }), "{err}");
        let wrong = Position::Object {
            index: 0,
            key: "elsewhere".into(),
            unit: 0,
        };
        let err = read_error(source, unit, &wrong).await;
        assert!(
            err.to_string().contains("belongs to object `elsewhere`"),
            "{err}"
        );
    }
    fn chunks_end_after(bounds: &[u64], row: u64) -> u64 {
        *bounds.iter().find(|&&b| b > row).unwrap()
    }
    // Row groups of 300 rows, chunks of at most 128 rows inside them.
    check(
        &parquet,
        &[128, 256, 300, 428, 556, 600, 728, 856, 900, 1000],
    )
    .await;
    // Chunks of 100 lines.
    check(&json, &[100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]).await;
}

/// A record vector given back with `recycle` is the one a later read fills,
/// emptied first (records left in it are dropped, not delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_record_vector_is_filled_by_the_next_read() {
    let (parquet, json) = memory_sources().await;

    async fn check<S: SnapshotSource<Item = CountEvent>>(source: &S) {
        let units = source.list_units().await.unwrap();
        // Read to the end: no reader is still at work (taking vectors) when
        // the vector is given back.
        let all = async |unit: &WorkUnit| -> Vec<Chunk<CountEvent>> {
            let chunks = source.read(unit, &Position::Beginning);
            chunks.try_collect().await.unwrap()
        };
        let expected = all(&units[1]).await.swap_remove(0);
        // Given back with some of its records still in it.
        let mut given = all(&units[0]).await.swap_remove(0).records;
        // A capacity no read asks for: a fresh vector cannot pass for it.
        given.truncate(10);
        given.reserve(5000);
        let (at, capacity) = (given.as_ptr(), given.capacity());
        source.recycle(given);
        let chunk = all(&units[1]).await.swap_remove(0);
        assert_eq!(
            (chunk.records.as_ptr(), chunk.records.capacity()),
            (at, capacity),
            "the vector given back"
        );
        assert_eq!(chunk, expected, "only the unit's own records");
    }
    check(&parquet).await;
    check(&json).await;
}

/// Only the decoder's columns are fetched: a wide payload column is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_reads_only_the_projected_columns() {
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let n = 5000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("occurred_at_unix_ms", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("e{}", i % 10)),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("{i:0>400}")),
            )),
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| 1))),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| MAY_1_2026_MS + i),
            )),
        ],
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .build();
    let mut bytes = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let size = bytes.len() as u64;
    put(&inner, "wide/part-0.parquet", bytes).await;

    let counting = CountingStore::new(inner);
    let store: Arc<dyn ObjectStore> = counting.clone();
    let source = ParquetSource::new(
        ObjectListing::new(store, Path::from("wide")),
        CountEventColumns,
    );
    let units = source.list_units().await.unwrap();
    let records = read_all(&source, &units, 1).await;
    assert_eq!(records.len(), 5000);
    let fetched = counting.bytes_of("wide/part-0.parquet");
    assert!(
        size > 2_000_000,
        "the payload column dominates the file ({size} bytes)"
    );
    assert!(fetched * 10 < size, "fetched {fetched} of {size} bytes");
}

/// Row groups whose event-time statistics miss the range are not fetched;
/// rows outside the range are dropped from the kept ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_event_time_range_skips_row_groups_by_statistics() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // 1000 rows with increasing times, 10 row groups of 100.
    let rows: Vec<(String, i64, i64)> = (0..1000)
        .map(|i| (format!("e{}", i % 7), 1, MAY_1_2026_MS + i * 1000))
        .collect();
    put(
        &inner,
        "t/part-0.parquet",
        parquet_bytes(&rows, parquet::basic::Compression::SNAPPY, 100),
    )
    .await;
    let counting = CountingStore::new(inner);
    let store: Arc<dyn ObjectStore> = counting.clone();
    let range = MAY_1_2026_MS + 250_000..MAY_1_2026_MS + 420_000; // rows 250..420
    let options = ParquetOptions {
        event_time_range: Some(range.clone()),
        ..Default::default()
    };
    let source = ParquetSource::with_options(
        ObjectListing::new(store, Path::from("t")),
        CountEventColumns,
        options,
        BadRecordPolicy::default(),
    )
    .unwrap();
    let unit = source.list_units().await.unwrap().remove(0);
    let chunks: Vec<_> = source
        .read(&unit, &Position::Beginning)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        chunks.len(),
        10,
        "one chunk per row group, pruned ones empty"
    );
    let non_empty: Vec<usize> = (0..10).filter(|&g| !chunks[g].records.is_empty()).collect();
    assert_eq!(non_empty, vec![2, 3, 4]);
    let n: usize = chunks.iter().map(|c| c.records.len()).sum();
    assert_eq!(n, 170);
    assert!(
        chunks
            .iter()
            .flat_map(|c| &c.records)
            .all(|r| range.contains(&r.event_time_ms))
    );
    // Footer fetch + one fetch per kept row group (3), not 10.
    let fetches = counting.of(Op::GetRange)["t/part-0.parquet"];
    assert_eq!(fetches, 1 + 3, "pruned row groups are not fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_comes_from_the_manifest_or_an_explicit_token() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&store, "events/day=01/a.json", b"{}\n".to_vec()).await;
    let listing = ObjectListing::new(Arc::clone(&store), Path::from("events"));
    assert_eq!(json_source(listing.clone()).handoff().await.unwrap(), None);

    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: [(0, 42), (1, 17)].into(),
    };
    put(
        &store,
        "events/_murmur_handoff.json",
        token.to_json().into_bytes(),
    )
    .await;
    assert_eq!(
        json_source(listing.clone()).handoff().await.unwrap(),
        Some(token.clone())
    );
    // The manifest is not data.
    assert_eq!(listing.list().await.unwrap().len(), 1);

    let explicit = HandoffToken::EventTimeCut { at_ms: 5 };
    let source = json_source(listing.clone().with_handoff(explicit.clone()));
    assert_eq!(source.handoff().await.unwrap(), Some(explicit));

    put(
        &store,
        "events/_murmur_handoff.json",
        b"{\"kind\":\"kafka\"}".to_vec(),
    )
    .await;
    let err = json_source(listing).handoff().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "handoff manifest `events/_murmur_handoff.json`: not a handoff token: missing field `topic`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_go_to_the_dead_letter_object_and_good_ones_through() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let good = json_line("a", 2, MAY_1_2026_MS);
    let text = format!("{good}\r\nnot json\n\n{good}\n{{\"entity_id\":\"b\"}}\n{good}");
    put(&store, "in/day=01/x.json", text.into_bytes()).await;
    let policy =
        BadRecordPolicy::max_bad_records(2).with_dead_letter(Arc::clone(&store), Path::from("dlq"));
    let source = JsonLinesSource::with_options(
        ObjectListing::new(Arc::clone(&store), Path::from("in")),
        CountEventLines,
        JsonLinesOptions::default(),
        policy,
    )
    .unwrap();
    let units = source.list_units().await.unwrap();
    let records = read_all(&source, &units, 1).await;
    // CRLF stripped, blank line skipped, last line without newline read.
    assert_eq!(records.len(), 3);
    let lines: Vec<u64> = records
        .iter()
        .map(|r| match r.position {
            Position::Row { row } => row,
            _ => panic!(),
        })
        .collect();
    assert_eq!(lines, vec![0, 3, 5]);
    assert_eq!(source.bad_records().count(), 2);
    // One chunk (the default 100,000 lines), one object, named by the unit
    // and the chunk's first line.
    let mut objects = dead_letters(&store, "dlq").await;
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        ["dlq/in/day=01/x.json/lines-1.jsonl"]
    );
    let dlq = objects.pop_first().unwrap().1;
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0]["object"], "in/day=01/x.json");
    assert_eq!(dlq[0]["location"]["line"], 2);
    assert_eq!(
        dlq[0]["reason"],
        "invalid CountEvent JSON: expected ident at line 1 column 2"
    );
    assert_eq!(dlq[0]["raw"], "not json");
    assert_eq!(dlq[1]["location"]["line"], 5);
    assert_eq!(
        dlq[1]["reason"],
        "invalid CountEvent JSON: missing field `count` at line 1 column 17"
    );
}

/// The dead-letter objects under `prefix`, by key, each as its lines.
async fn dead_letters(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let metas: Vec<_> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for meta in metas {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let lines = std::str::from_utf8(&bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        out.insert(meta.location.to_string(), lines);
    }
    out
}

/// Every dead letter's location (`line` or `row`), over all objects.
fn dead_letter_locations(objects: &BTreeMap<String, Vec<serde_json::Value>>) -> Vec<u64> {
    let mut at: Vec<u64> = objects
        .values()
        .flatten()
        .map(|l| {
            let loc = &l["location"];
            loc.get("line")
                .or(loc.get("row"))
                .unwrap()
                .as_u64()
                .unwrap()
        })
        .collect();
    at.sort_unstable();
    at
}

/// Dead letters are written chunk by chunk, before the chunk is handed on:
/// a read stopped after a chunk with bad records (a worker killed before it
/// ever finishes the scan) has already written that chunk's. The resume and
/// a replay of every chunk write the same objects again, so each bad record
/// ends up in exactly one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_durable_per_chunk_and_a_replay_rewrites_them() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let policy = || {
        BadRecordPolicy::max_bad_records(100)
            .with_dead_letter(Arc::clone(&store), Path::from("dlq"))
    };
    // JSON Lines, chunks of 4 lines; lines 2 and 3 (chunk 1) and 9 (chunk 3)
    // are bad.
    let good = json_line("a", 1, MAY_1_2026_MS);
    let text: Vec<String> = (1..=10)
        .map(|n| {
            if [2, 3, 9].contains(&n) {
                format!("bad {n}")
            } else {
                good.clone()
            }
        })
        .collect();
    put(&store, "in/x.json", text.join("\n").into_bytes()).await;
    let json = JsonLinesSource::with_options(
        ObjectListing::new(Arc::clone(&store), Path::from("in")),
        CountEventLines,
        JsonLinesOptions {
            chunk_lines: 4,
            ..Default::default()
        },
        policy(),
    )
    .unwrap();
    // Parquet, chunks of 4 rows; rows 5 (chunk 2) and 10 (chunk 3) have an
    // empty entity id.
    let rows: Vec<_> = (1..=10)
        .map(|n| {
            let entity = if n % 5 == 0 { "" } else { "e" };
            (entity.to_owned(), 1, MAY_1_2026_MS)
        })
        .collect();
    put(
        &store,
        "pq/x.parquet",
        parquet_bytes(&rows, parquet::basic::Compression::SNAPPY, 100),
    )
    .await;
    let parquet = ParquetSource::with_options(
        ObjectListing::new(Arc::clone(&store), Path::from("pq")),
        CountEventColumns,
        ParquetOptions {
            chunk_rows: 4,
            ..Default::default()
        },
        policy(),
    )
    .unwrap();

    // Stopped once the first chunk with bad records is handed on.
    let unit = json.list_units().await.unwrap().remove(0);
    let first = json
        .read(&unit, &Position::Beginning)
        .next()
        .await
        .unwrap()
        .unwrap();
    let objects = dead_letters(&store, "dlq/in").await;
    assert_eq!(objects["dlq/in/x.json/lines-1.jsonl"].len(), 2);
    let punit = parquet.list_units().await.unwrap().remove(0);
    let second = parquet
        .read(&punit, &Position::Beginning)
        .take(2)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .pop()
        .unwrap();
    let objects = dead_letters(&store, "dlq/pq").await;
    assert_eq!(objects["dlq/pq/x.parquet/rows-5.jsonl"].len(), 1);

    // The resumes, then a replay of everything.
    for from in [first.end.clone(), Position::Beginning] {
        json.read(&unit, &from)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    }
    for from in [second.end.clone(), Position::Beginning] {
        parquet
            .read(&punit, &from)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    }
    let objects = dead_letters(&store, "dlq").await;
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        [
            "dlq/in/x.json/lines-1.jsonl",
            "dlq/in/x.json/lines-9.jsonl",
            "dlq/pq/x.parquet/rows-5.jsonl",
            "dlq/pq/x.parquet/rows-9.jsonl",
        ]
    );
    assert_eq!(dead_letter_locations(&objects), [2, 3, 5, 9, 10]);
    assert_eq!(
        objects["dlq/pq/x.parquet/rows-9.jsonl"][0]["reason"],
        "CountEvent entity_id is empty"
    );
}

/// A chunk's dead letters past 8 MiB continue in a second object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_long_bad_lines_splits_its_dead_letters() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let long = "x".repeat(1_000_000);
    let text: Vec<String> = (0..10).map(|_| long.clone()).collect();
    put(&store, "in/x.json", text.join("\n").into_bytes()).await;
    let source = JsonLinesSource::with_options(
        ObjectListing::new(Arc::clone(&store), Path::from("in")),
        CountEventLines,
        JsonLinesOptions::default(),
        BadRecordPolicy::max_bad_records(10)
            .with_dead_letter(Arc::clone(&store), Path::from("dlq")),
    )
    .unwrap();
    let units = source.list_units().await.unwrap();
    assert!(read_all(&source, &units, 1).await.is_empty());
    let objects = dead_letters(&store, "dlq").await;
    let sizes: Vec<(&str, usize)> = objects.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    // Each line is just over 1 MB as a dead letter: the first object
    // takes lines until it reaches 8 MiB.
    assert_eq!(
        sizes,
        [
            ("dlq/in/x.json/lines-1.2.jsonl", 1),
            ("dlq/in/x.json/lines-1.jsonl", 9)
        ]
    );
    assert_eq!(
        dead_letter_locations(&objects),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_bounds_concurrency_and_keeps_order_within_objects() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    write_dataset(&store, "events", &SPEC, Format::JsonLines).await;
    let source = json_source(ObjectListing::new(store, Path::from("events")));
    let units: Vec<(WorkUnit, Position)> = source
        .list_units()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u, Position::Beginning))
        .collect();
    // With concurrency 2, at most 2 units are ever in progress at once.
    let mut in_progress = BTreeSet::new();
    let mut max_in_progress = 0;
    let mut last_line: HashMap<String, u64> = HashMap::new();
    let mut chunks = source.scan(&units, 2);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        let key = unit_key(&chunk.start);
        in_progress.insert(key.clone());
        max_in_progress = max_in_progress.max(in_progress.len());
        for r in &chunk.records {
            let Position::Row { row: unit } = r.position else {
                panic!()
            };
            let prev = last_line.insert(key.clone(), unit);
            assert!(prev.is_none_or(|p| p < unit), "order within an object");
        }
        if chunk.last {
            in_progress.remove(&key);
        }
    }
    assert_eq!(max_in_progress, 2);
    assert_eq!(last_line.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_across_read_buffers_are_each_read_once_in_order() {
    // About 1.6 MB of lines of varied length, every fifth ending in CRLF:
    // many lines straddle the reader's buffer and are assembled across
    // refills; the rest are passed straight from the buffer.
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let n = 12_000usize;
    let entity = |i: usize| format!("e{i}-{}", "x".repeat(i % 97));
    let mut text = String::new();
    for i in 0..n {
        text += &json_line(&entity(i), (i % 7 + 1) as i64, MAY_1_2026_MS + i as i64);
        text += if i % 5 == 0 { "\r\n" } else { "\n" };
    }
    assert!(text.len() > 1_500_000, "{}", text.len());
    put(&store, "in/x.json", text.into_bytes()).await;
    let source = json_source(ObjectListing::new(Arc::clone(&store), Path::from("in")));
    let units = source.list_units().await.unwrap();
    let records = read_all(&source, &units, 1).await;
    assert_eq!(records.len(), n);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            (r.value.entity_id.as_str(), r.value.count),
            (entity(i).as_str(), (i % 7 + 1) as i64),
            "line {i}"
        );
        assert!(
            r.position == Position::Row { row: i as u64 },
            "line {i}: {}",
            r.position
        );
    }
}

/// `read_in_order` is the units' own reads one after another (the first
/// from a mid-object position), starts the next unit while the current one
/// is consumed, and ends at the first error, naming its object.
async fn read_in_order_is_the_reads_concatenated(format: Format) {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    write_dataset(&inner, "events", &SPEC, format).await;
    let counting = CountingStore::new(Arc::clone(&inner));
    let store: Arc<dyn ObjectStore> = counting.clone();
    let listing = ObjectListing::new(Arc::clone(&store), Path::from("events"));
    let source: Box<dyn SnapshotSource<Item = CountEvent>> = match format {
        Format::Parquet => Box::new(parquet_source(listing)),
        Format::JsonLines => Box::new(json_source(listing)),
    };
    let units = source.list_units().await.unwrap();
    let mut expected = Vec::new();
    for (i, u) in units[2..7].iter().enumerate() {
        let from = if i == 0 {
            // A resume inside the object: the second chunk's start.
            let chunks: Vec<_> = source
                .read(u, &Position::Beginning)
                .try_collect()
                .await
                .unwrap();
            chunks[1].start.clone()
        } else {
            Position::Beginning
        };
        let chunks: Vec<_> = source.read(u, &from).try_collect().await.unwrap();
        expected.push((u.clone(), from, chunks));
    }
    let plan: Vec<_> = expected
        .iter()
        .map(|(u, p, _)| (u.clone(), p.clone()))
        .collect();
    let want: Vec<Chunk<CountEvent>> = expected.into_iter().flat_map(|(_, _, c)| c).collect();
    assert!(want.len() > 10, "{} chunks", want.len());

    counting.reset();
    let mut chunks = source.read_in_order(&plan, 1);
    let mut got = Vec::new();
    let mut unit = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        let Position::Object { key, .. } = &chunk.start else {
            panic!("object positions, got {}", chunk.start)
        };
        let k = plan.iter().position(|(u, _)| u.key == *key).unwrap();
        if unit != Some(k) {
            unit = Some(k);
            // At every unit's first chunk, the next unit is read already
            // (while this one is consumed) and the one after is not.
            if let Some((next, _)) = plan.get(k + 1) {
                for _ in 0..200 {
                    if counting.bytes_of(&next.key) > 0 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                assert!(
                    counting.bytes_of(&next.key) > 0,
                    "unit {k}: the next unit is read ahead"
                );
            }
            if let Some((after, _)) = plan.get(k + 2) {
                assert_eq!(
                    counting.bytes_of(&after.key),
                    0,
                    "unit {k}: only one unit ahead"
                );
            }
        }
        got.push(chunk);
    }
    assert_eq!(got, want);

    // The fourth object is not what its name says: the chunks of the
    // first three, then the error, then nothing.
    let bad = plan[3].0.key.to_string();
    inner
        .put(
            &Path::from(bad.as_str()),
            b"not a snapshot object at all".to_vec().into(),
        )
        .await
        .unwrap();
    let mut units = plan.clone();
    units[3].0.size = 28;
    let items: Vec<_> = source.read_in_order(&units, 1).collect().await;
    let ok = items.iter().take_while(|i| i.is_ok()).count();
    let before: usize = (0..3)
        .map(|i| {
            want.iter()
                .filter(|c| c.start.to_string().contains(&*plan[i].0.key))
                .count()
        })
        .sum();
    assert_eq!(ok, before);
    assert_eq!(items.len(), ok + 1, "the stream ends at the error");
    let err = items[ok].as_ref().unwrap_err().to_string();
    assert!(err.contains(&bad), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_read_in_order_is_the_reads_concatenated() {
    read_in_order_is_the_reads_concatenated(Format::Parquet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_read_in_order_is_the_reads_concatenated() {
    read_in_order_is_the_reads_concatenated(Format::JsonLines).await;
}

/// String columns reach a decoder as `Utf8View` whatever string type the
/// file holds (Utf8, LargeUtf8, nullable or not), with their values, nulls
/// and the other columns unchanged; a type error still names the file's type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_columns_are_read_as_views_with_their_values() {
    use arrow_array::{Int64Array, LargeStringArray, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use murmur_source_snapshot::{Batch, BatchDecoder, ColumnError, DecodedRows};

    let short: Vec<String> = (0..500).map(|i| format!("e-{i}")).collect();
    let long: Vec<String> = (0..500)
        .map(|i| format!("a-much-longer-entity-id-{i:08}"))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("large", DataType::LargeUtf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(&short)),
            Arc::new(LargeStringArray::from_iter(
                long.iter()
                    .enumerate()
                    .map(|(i, s)| (i % 7 != 0).then_some(s.as_str())),
            )),
            Arc::new(Int64Array::from_iter_values(0..500)),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    store
        .put(&Path::from("s/part-0.parquet"), bytes.into())
        .await
        .unwrap();

    struct Rows;
    impl BatchDecoder for Rows {
        type Item = (String, Option<String>, i64);
        fn columns(&self) -> Vec<String> {
            vec!["id".into(), "large".into(), "n".into()]
        }
        fn decode(
            &self,
            batch: &Batch<'_>,
            out: &mut DecodedRows<Self::Item>,
        ) -> Result<(), ColumnError> {
            let types: Vec<DataType> = batch
                .record_batch()
                .schema()
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            assert_eq!(
                types,
                [DataType::Utf8View, DataType::Utf8View, DataType::Int64]
            );
            let (id, large, n) = (
                batch.strings("id")?,
                batch.strings("large")?,
                batch.i64s("n")?,
            );
            out.extend((0..batch.num_rows()).map(|row| {
                let value = (
                    id.require(row)?.to_owned(),
                    large.get(row).map(str::to_owned),
                    n.require(row)?,
                );
                Ok(Record::new(value, 0))
            }));
            Ok(())
        }
    }
    let source = ParquetSource::new(
        ObjectListing::new(Arc::clone(&store), Path::from("s")),
        Rows,
    );
    let units = source.list_units().await.unwrap();
    let chunks: Vec<Chunk<_>> = source
        .read(&units[0], &Position::Beginning)
        .try_collect()
        .await
        .unwrap();
    let read: Vec<_> = chunks
        .into_iter()
        .flat_map(|c| c.records)
        .map(|r| r.value)
        .collect();
    let expected: Vec<_> = (0..500)
        .map(|i| {
            (
                short[i].clone(),
                (i % 7 != 0).then(|| long[i].clone()),
                i as i64,
            )
        })
        .collect();
    assert_eq!(read, expected);

    // Asking a string column for integers names the file's type.
    struct Wrong;
    impl BatchDecoder for Wrong {
        type Item = i64;
        fn columns(&self) -> Vec<String> {
            vec!["id".into()]
        }
        fn decode(
            &self,
            batch: &Batch<'_>,
            _out: &mut DecodedRows<i64>,
        ) -> Result<(), ColumnError> {
            batch.i64s("id").map(|_| ())
        }
    }
    let wrong = ParquetSource::new(ObjectListing::new(store, Path::from("s")), Wrong);
    let err = read_error(&wrong, &units[0], &Position::Beginning).await;
    assert_eq!(
        err.to_string(),
        "object `s/part-0.parquet`: column `id`: expected an integer column (Int64), found Utf8"
    );
}

/// `count` rows of entity `entity`: two calls with entities of one length
/// encode to objects of one size.
fn same_shape_rows(entity: &str, count: i64) -> Vec<(String, i64, i64)> {
    (0..20)
        .map(|i| (entity.to_string(), count, MAY_1_2026_MS + i))
        .collect()
}

/// An object of `format` holding `rows`.
fn object_bytes(format: Format, rows: &[(String, i64, i64)]) -> Vec<u8> {
    match format {
        Format::Parquet => parquet_bytes(rows, parquet::basic::Compression::UNCOMPRESSED, 100),
        Format::JsonLines => rows
            .iter()
            .map(|(e, c, t)| json_line(e, *c, *t) + "\n")
            .collect::<String>()
            .into_bytes(),
    }
}

/// Lists one object, rewrites it to the same size, reads the listed unit
/// (refused, naming the object and the listed ETag), then lists again and
/// reads the new version.
async fn rewritten_object<S>(store: &Arc<dyn ObjectStore>, source: &S, key: &str, format: Format)
where
    S: SnapshotSource<Item = CountEvent>,
{
    let first = object_bytes(format, &same_shape_rows("aaaa", 1));
    let second = object_bytes(format, &same_shape_rows("bbbb", 2));
    assert_eq!(first.len(), second.len(), "the rewrite keeps the size");
    put(store, key, first).await;
    let unit = source.list_units().await.unwrap().remove(0);
    let e_tag = unit.e_tag.clone().expect("the store gives ETags");
    put(store, key, second).await;
    let err = read_error(source, &unit, &Position::Beginning).await;
    assert!(matches!(err, Error::Rewritten { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "object `{key}`: rewritten since it was listed (it is no longer ETag {e_tag}); \
             restore it, or start a new run over the new objects"
        )
    );
    let unit = source.list_units().await.unwrap().remove(0);
    assert_ne!(unit.e_tag.as_deref(), Some(&*e_tag));
    let chunks: Vec<_> = source
        .read(&unit, &Position::Beginning)
        .try_collect()
        .await
        .unwrap();
    let records: Vec<_> = chunks.into_iter().flat_map(|c| c.records).collect();
    assert_eq!(records.len(), 20);
    assert!(
        records
            .iter()
            .all(|r| r.value.entity_id == "bbbb" && r.value.count == 2),
        "the new version is read"
    );
}

/// An object rewritten since the listing, even to the same size, is refused
/// rather than read at the listed positions: on a local directory and on S3,
/// for both formats.
async fn rewritten_objects_are_refused(store: Arc<dyn ObjectStore>) {
    let listing = |prefix: &str| ObjectListing::new(Arc::clone(&store), Path::from(prefix));
    rewritten_object(
        &store,
        &parquet_source(listing("pq")),
        "pq/part-0.parquet",
        Format::Parquet,
    )
    .await;
    rewritten_object(
        &store,
        &json_source(listing("js")),
        "js/part-0.json",
        Format::JsonLines,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rewritten_objects_are_refused() {
    let (_dir, store) = local_store();
    rewritten_objects_are_refused(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_rewritten_objects_are_refused() {
    let Some((store, _bucket)) = s3_store("the S3 rewritten-object test") else {
        return;
    };
    rewritten_objects_are_refused(store).await;
}
