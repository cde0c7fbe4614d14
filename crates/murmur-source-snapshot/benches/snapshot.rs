//! Snapshot read throughput on a Spark-shaped data set, against baselines
//! run on the same files in the same run:
//!
//! | Murmur | baselines |
//! |---|---|
//! | Parquet scan + aggregation (`entity_id` x day Sum) into murmur-core's `Aggregator` and `MemoryStore` | (a) decode-only of the same three columns with the parquet crate (strings as `Utf8View`, as the source reads them), (b) DuckDB `GROUP BY entity_id, day` |
//! | JSON Lines `.gz` scan + the same aggregation | (a) `gzip -dc \| wc -l`, (b) DuckDB `read_json` + `GROUP BY`, (c) inflate + parse: flate2 and serde_json into `CountEvent`, threads split the files |
//!
//! The same aggregation into the `EmbeddedStore` (redb, a durable commit per
//! batch: the worker's default store) is measured too, for what a worker
//! run costs; the ratios are the `MemoryStore`'s.
//!
//! ```text
//! cargo xtask bench snapshot    # sets MURMUR_PYTHON (installs the venv)
//! cargo bench -p murmur-source-snapshot --bench snapshot
//! ```
//!
//! Environment: `MURMUR_BENCH_ROWS` (default 20 000 000 rows in 720 hourly
//! partitions, Snappy Parquet and gzipped JSON Lines), `MURMUR_BENCH_DIR`
//! (where the data set is generated once and kept; default
//! `$TMPDIR/murmur-bench-snapshot-<rows>`), `MURMUR_BENCH_THREADS` (default:
//! all cores; used by Murmur, the decode baseline and DuckDB alike),
//! `MURMUR_PYTHON` (a python with `duckdb`, as `cargo xtask bench` sets
//! and `cargo xtask services` exports; without it the DuckDB baselines are
//! skipped),
//! `MURMUR_BENCH_RUNS` (default 3: that many rounds, each taking every
//! measurement of a format once, Murmur's and the baselines' in turn; a
//! measurement's fastest run is reported, and each ratio also within the
//! rounds), `MURMUR_BENCH_MAX_KEYS`
//! (Murmur's batch size; default that of `FlushPolicy::backfill`) and
//! `MURMUR_BENCH_ONLY` (`parquet` or `json`: that format's comparison alone;
//! `parquet-scan`, `parquet-aggregate`, `parquet-embedded`,
//! `parquet-store`, `json-scan`, `json-aggregate`, `json-embedded`,
//! `json-store` or `open-latency`: that measurement
//! alone, for profiling) and
//! `MURMUR_BENCH_LATENCY_MS` (default 20; 0 skips it): the delay added to
//! every object request in the open-latency measurement, one lane reading
//! 48 Parquet objects each after the last vs with `read_in_order`, with the
//! lane idle and with the lane busy as long after each object (its fold).

#[allow(dead_code)] // the bench uses the data set generator only
#[path = "../tests/snapshot/common.rs"]
mod common;

/// The allocator a production binary would use (the worker does): per-row
/// records are small, short-lived and freed on another thread than the one
/// that allocated them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::Array as _;
use arrow_array::cast::AsArray as _;
use arrow_array::types::Int64Type;
use futures::StreamExt as _;
use murmur_core::monoid::Sum;
use murmur_core::{
    Aggregator, CountEvent, EmbeddedStore, FlushPolicy, MemoryStore, Pipeline, Position,
    StateStore, Window, WriteBatch,
};
use murmur_source_snapshot::{
    CountEventColumns, CountEventLines, JsonLinesSource, LanePlan, ObjectListing, ParquetSource,
    SnapshotSource, UNITS_AHEAD, WorkUnit,
};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

const PARTITIONS: usize = 720; // 30 days x 24 hours

/// Objects read by the object-open latency measurement.
const LATENCY_UNITS: usize = 48;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes the data set unless a complete one is already there.
fn generate(dir: &FsPath, rows: usize, threads: usize) -> u64 {
    let stamp = dir.join("COMPLETE");
    if let Ok(s) = std::fs::read_to_string(&stamp) {
        eprintln!("data set: {} (reused)", dir.display());
        return s.trim().parse().unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
    let started = Instant::now();
    let spec = common::Spec {
        days: 30,
        hours: 24,
        rows: rows / PARTITIONS,
        entities: 100_000,
        row_group_rows: 1 << 20,
    };
    let parts: Vec<(u32, u32)> = (1..=30)
        .flat_map(|d| (0..24).map(move |h| (d, h)))
        .collect();
    let total_rows: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let parts = &parts;
                s.spawn(move || {
                    let mut n = 0u64;
                    for &(day, hour) in parts.iter().skip(t).step_by(threads) {
                        let data = common::partition_rows(&spec, day, hour);
                        n += data.len() as u64;
                        let pdir = dir.join(common::partition_dir("parquet", day, hour));
                        std::fs::create_dir_all(&pdir).unwrap();
                        let bytes = common::parquet_bytes(
                            &data,
                            parquet::basic::Compression::SNAPPY,
                            spec.row_group_rows,
                        );
                        std::fs::write(pdir.join("part-00000.snappy.parquet"), bytes).unwrap();
                        let jdir = dir.join(common::partition_dir("json", day, hour));
                        std::fs::create_dir_all(&jdir).unwrap();
                        let mut text = String::with_capacity(data.len() * 140);
                        for (e, c, t) in &data {
                            text += &common::json_line(e, *c, *t);
                            text.push('\n');
                        }
                        std::fs::write(
                            jdir.join("part-00000.json.gz"),
                            common::gzip(text.as_bytes()),
                        )
                        .unwrap();
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    std::fs::write(dir.join("parquet/_SUCCESS"), "").unwrap();
    std::fs::write(dir.join("json/_SUCCESS"), "").unwrap();
    std::fs::write(&stamp, total_rows.to_string()).unwrap();
    eprintln!(
        "data set: {} written in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    total_rows
}

fn du(path: &FsPath) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The result of one timed run: seconds, and (groups, sum of count) when
/// the run aggregates.
struct Run {
    secs: f64,
    groups: Option<u64>,
    total: Option<i64>,
}

/// Where [`murmur`] writes its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Nowhere: the batches are taken from the aggregator (encoded deltas)
    /// and their totals summed.
    Nothing,
    /// A `MemoryStore`.
    Memory,
    /// An `EmbeddedStore` in a new file in the temporary directory
    /// (`$TMPDIR`: a tmpfs there would measure no disk).
    Embedded,
}

/// Murmur: lanes over the units, each lane folding its chunks into an
/// `Aggregator` (Sum of `count` per `entity_id` x day) and applying a batch
/// to the store at the backfill flush policy's `max_keys`
/// ([`FlushPolicy::backfill`], or `MURMUR_BENCH_MAX_KEYS`), as the backfill
/// runner does. With [`Sink::Nothing`] the totals come from the deltas.
async fn murmur<S>(source: S, lanes: u32, into: Sink) -> Run
where
    S: SnapshotSource<Item = CountEvent> + Clone + 'static,
{
    let apply = into != Sink::Nothing;
    let memory = MemoryStore::new();
    // The file's directory lives as long as the run.
    let embedded = (into == Sink::Embedded).then(|| {
        let dir = tempfile::tempdir().unwrap();
        (
            EmbeddedStore::open(dir.path().join("bench.redb")).unwrap(),
            dir,
        )
    });
    let store: Arc<dyn StateStore> = match &embedded {
        Some((e, _)) => Arc::new(e.clone()),
        None => Arc::new(memory.clone()),
    };
    let pipeline = Pipeline::builder("bench", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .window(Window::day())
        .build()
        .unwrap();
    let flush = FlushPolicy {
        max_keys: env_usize("MURMUR_BENCH_MAX_KEYS", FlushPolicy::backfill().max_keys),
        ..FlushPolicy::backfill()
    };
    let started = Instant::now();
    // As murmur-bootstrap's backfill: the source refuses what the pipeline
    // would (a bad record), checking every record it decodes.
    source.check_records(pipeline.record_check());
    let units = source.list_units().await.unwrap();
    let plan = LanePlan::new("bench", units, lanes).unwrap();
    let mut tasks = Vec::new();
    for lane in plan.lanes().iter().cloned() {
        let (source, pipeline, store) = (source.clone(), pipeline.clone(), Arc::clone(&store));
        tasks.push(tokio::spawn(async move {
            let mut agg = Aggregator::new(pipeline.clone(), flush);
            let mut seq = 0;
            let mut taken = (0u64, 0i64);
            // As murmur-bootstrap's lane writer: each batch reuses the last
            // one's vector.
            let mut spare = Vec::new();
            let mut flush = async |agg: &mut Aggregator<CountEvent, Sum>| {
                if agg.is_empty() {
                    return;
                }
                seq += 1;
                let mut rows = std::mem::take(&mut spare);
                agg.take_into(&mut rows);
                let batch = WriteBatch {
                    lane: lane.lane.clone(),
                    seq,
                    rows,
                };
                taken.0 += batch.rows.len() as u64;
                if apply {
                    store.apply(pipeline.monoid(), &batch).await.unwrap();
                } else {
                    taken.1 += batch
                        .rows
                        .iter()
                        .map(|r| r.delta.as_int().unwrap())
                        .sum::<i64>();
                }
                spare = batch.rows;
            };
            let mut chunks = source.read_in_order(&from_start(&lane.units), UNITS_AHEAD);
            while let Some(chunk) = chunks.next().await {
                // By value, as murmur-bootstrap's lane writer folds, and
                // the vector given back as its backfill lane does.
                let mut records = chunk.unwrap().records;
                for record in records.drain(..) {
                    agg.push(&record, i64::MAX).unwrap();
                }
                source.recycle(records);
                if agg.should_flush() {
                    flush(&mut agg).await;
                }
            }
            // Batches span units (as in murmur-bootstrap's backfill): the
            // flush policy alone cuts them.
            flush(&mut agg).await;
            taken
        }));
    }
    let mut deltas = (0, 0);
    for t in tasks {
        let (n, total) = t.await.unwrap();
        deltas = (deltas.0 + n, deltas.1 + total);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {} row deltas",
        if apply { "applied" } else { "aggregate only" },
        deltas.0
    );
    if !apply {
        return Run {
            secs,
            groups: None,
            total: Some(deltas.1),
        };
    }
    let rows = match &embedded {
        Some((e, _)) => e.rows().await.unwrap(),
        None => memory.rows(),
    };
    let total = rows
        .iter()
        .map(|(_, row)| row.value.as_int().expect("Sum cells are integers"))
        .sum();
    Run {
        secs,
        groups: Some(rows.len() as u64),
        total: Some(total),
    }
}

/// Every unit, read from its beginning.
fn from_start(units: &[WorkUnit]) -> Vec<(WorkUnit, Position)> {
    units
        .iter()
        .map(|u| (u.clone(), Position::Beginning))
        .collect()
}

/// Murmur's read path alone: every unit through `scan` (concurrency =
/// threads), records counted and their `count` summed, nothing aggregated.
async fn murmur_scan_only<S>(source: S, threads: usize) -> Run
where
    S: SnapshotSource<Item = CountEvent>,
{
    let started = Instant::now();
    let units = source.list_units().await.unwrap();
    let mut chunks = source.scan(&from_start(&units), threads);
    let mut total = 0;
    while let Some(chunk) = chunks.next().await {
        total += chunk
            .unwrap()
            .records
            .iter()
            .map(|r| r.value.count)
            .sum::<i64>();
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        groups: None,
        total: Some(total),
    }
}

/// One lane reading `units` in order with every object request delayed
/// (a remote store): each unit's read drained before the next one is
/// opened (`ahead == None`, how a lane read before `read_in_order`), or
/// [`SnapshotSource::read_in_order`] with `ahead` units read ahead. After
/// each unit's last chunk the lane is busy for `busy` (its fold and write).
async fn lane_read<S: SnapshotSource<Item = CountEvent>>(
    source: &S,
    units: &[WorkUnit],
    ahead: Option<usize>,
    busy: Duration,
) -> Run {
    let started = Instant::now();
    let mut total = 0;
    let mut take =
        async |chunk: murmur_source_snapshot::Result<murmur_source_snapshot::Chunk<CountEvent>>| {
            let chunk = chunk.unwrap();
            total += chunk.records.iter().map(|r| r.value.count).sum::<i64>();
            if chunk.last && !busy.is_zero() {
                tokio::time::sleep(busy).await;
            }
        };
    match ahead {
        None => {
            for unit in units {
                let mut chunks = source.read(unit, &Position::Beginning);
                while let Some(chunk) = chunks.next().await {
                    take(chunk).await;
                }
            }
        }
        Some(ahead) => {
            let mut chunks = source.read_in_order(&from_start(units), ahead);
            while let Some(chunk) = chunks.next().await {
                take(chunk).await;
            }
        }
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        groups: None,
        total: Some(total),
    }
}

/// A lane's read of the first [`LATENCY_UNITS`] Parquet objects with
/// `latency_ms` added to every object request, one unit at a time and with
/// units read ahead, with the lane idle and busy `latency_ms` after each
/// unit; prints each with its speed-up over one at a time.
fn open_latency(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    latency_ms: u64,
    runs: usize,
) {
    let slow: Arc<dyn ObjectStore> = common::CountingStore::with_latency(
        Arc::clone(store),
        Some(Duration::from_millis(latency_ms)),
    );
    let source = ParquetSource::new(
        ObjectListing::new(slow, Path::from("parquet")),
        CountEventColumns,
    );
    let mut units = runtime.block_on(source.list_units()).unwrap();
    units.truncate(LATENCY_UNITS);
    println!(
        "\n== one lane, {} Parquet objects, {latency_ms} ms per object request ==",
        units.len()
    );
    for busy_ms in [0, latency_ms] {
        let busy = Duration::from_millis(busy_ms);
        if busy_ms > 0 {
            println!("-- the lane busy {busy_ms} ms after each unit (its fold and write) --");
        }
        let (source, units) = (&source, &units);
        let mut measures: Vec<Measure> = vec![(
            "each unit read after the last".into(),
            Box::new(move || runtime.block_on(lane_read(source, units, None, busy))),
        )];
        for ahead in [1, 3] {
            measures.push((
                format!("read_in_order, {ahead} unit(s) ahead"),
                Box::new(move || runtime.block_on(lane_read(source, units, Some(ahead), busy))),
            ));
        }
        let series = interleaved(runs, measures);
        let one = series[0].best();
        println!("{:<50} {:>8.2} s", series[0].name, one.secs);
        for s in &series[1..] {
            let run = s.best();
            assert_eq!(run.total, one.total, "the same records");
            println!(
                "{:<50} {:>8.2} s   {:.2}x as fast",
                s.name,
                run.secs,
                one.secs / run.secs
            );
        }
    }
}

/// Baseline (a) for Parquet: the parquet crate's synchronous reader decoding
/// the same three columns of every file (threads split the files), touching
/// every value.
fn parquet_decode_only(dir: &FsPath, threads: usize) -> Run {
    let mut files = Vec::new();
    collect_files(&dir.join("parquet"), ".parquet", &mut files);
    files.sort();
    let views = Arc::new(arrow_schema::Schema::new(
        common::parquet_schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                arrow_schema::DataType::Utf8 => f
                    .as_ref()
                    .clone()
                    .with_data_type(arrow_schema::DataType::Utf8View),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let (rows, total): (u64, i64) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (files, views) = (&files, &views);
                s.spawn(move || {
                    let (mut rows, mut total, mut bytes, mut times) = (0u64, 0i64, 0usize, 0i64);
                    for f in files.iter().skip(t).step_by(threads) {
                        // Strings as Utf8View, as the Parquet source reads them.
                        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
                            std::fs::File::open(f).unwrap(),
                            ArrowReaderOptions::new().with_schema(Arc::clone(views)),
                        )
                        .unwrap();
                        let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2]);
                        for batch in builder
                            .with_projection(mask)
                            .with_batch_size(65_536)
                            .build()
                            .unwrap()
                        {
                            let batch = batch.unwrap();
                            let ids = batch.column(0).as_string_view();
                            bytes += (0..ids.len()).map(|i| ids.value(i).len()).sum::<usize>();
                            total += batch
                                .column(1)
                                .as_primitive::<Int64Type>()
                                .values()
                                .iter()
                                .sum::<i64>();
                            times = batch
                                .column(2)
                                .as_primitive::<Int64Type>()
                                .values()
                                .iter()
                                .fold(times, |a, t| a.wrapping_add(*t));
                            rows += batch.num_rows() as u64;
                        }
                    }
                    std::hint::black_box((bytes, times));
                    (rows, total)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    std::hint::black_box(rows);
    Run {
        secs: started.elapsed().as_secs_f64(),
        groups: None,
        total: Some(total),
    }
}

fn collect_files(dir: &FsPath, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_files(&p, suffix, out);
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
}

/// Baseline (c) for JSON Lines, the issue's "inflate + parse": every
/// object inflated (flate2) and every line parsed into a `CountEvent` with
/// `CountEvent::from_json` (serde_json), counts summed; threads split the
/// objects. No positions, records or aggregation.
fn inflate_parse(dir: &FsPath, threads: usize) -> Run {
    use std::io::BufRead as _;
    let mut files = Vec::new();
    collect_files(&dir.join("json"), ".json.gz", &mut files);
    files.sort();
    let started = Instant::now();
    let total: i64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let files = &files;
                s.spawn(move || {
                    let mut total = 0i64;
                    let mut line = Vec::new();
                    for f in files.iter().skip(t).step_by(threads) {
                        let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(f).unwrap());
                        let mut reader = std::io::BufReader::with_capacity(1 << 16, gz);
                        loop {
                            line.clear();
                            if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                                break;
                            }
                            let text = line.strip_suffix(b"\n").unwrap_or(&line);
                            total += CountEvent::from_json(text).unwrap().count;
                        }
                    }
                    total
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    Run {
        secs: started.elapsed().as_secs_f64(),
        groups: None,
        total: Some(total),
    }
}

/// Baseline (a) for JSON Lines: `gzip -dc | wc -l` over all objects.
fn gzip_wc(dir: &FsPath) -> Run {
    let mut files = Vec::new();
    collect_files(&dir.join("json"), ".json.gz", &mut files);
    files.sort();
    let list = dir.join("json-files.txt");
    std::fs::write(
        &list,
        files
            .iter()
            .map(|f| f.to_string_lossy() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "xargs cat < '{}' | gzip -dc | wc -l",
            list.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let secs = started.elapsed().as_secs_f64();
    let lines: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!("gzip -dc | wc -l: {lines} lines");
    Run {
        secs,
        groups: None,
        total: None,
    }
}

const DUCKDB: &str = r#"
import json, sys, time
import duckdb
con = duckdb.connect()
con.execute("SET threads=" + sys.argv[2])
con.execute("SET enable_progress_bar=false")
query = sys.argv[1]
t = time.time()
groups, total = con.execute(
    "SELECT count(*), sum(s) FROM (SELECT entity_id, day, sum(count) AS s FROM " + query + " GROUP BY entity_id, day)"
).fetchone()
print(json.dumps({"secs": time.time() - t, "groups": groups, "total": int(total)}))
"#;

/// Baseline (b): DuckDB running the same GROUP BY (timed inside Python,
/// without interpreter start-up).
fn duckdb(python: &FsPath, from: &str, threads: usize) -> Run {
    let out = common::run_python(python, DUCKDB, &[from, &threads.to_string()]);
    let last = out.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}"));
    Run {
        secs: v["secs"].as_f64().unwrap(),
        groups: v["groups"].as_u64(),
        total: v["total"].as_i64(),
    }
}

const SCAN: &str = "murmur scan only (records decoded, summed)";
const AGGREGATE: &str = "murmur scan + Aggregator (batches not stored)";
const STORE: &str = "murmur scan + aggregate (Aggregator/MemoryStore)";
const EMBEDDED: &str = "murmur scan + aggregate into EmbeddedStore";

/// A measurement: its name and how to take one run of it.
type Measure<'a> = (String, Box<dyn FnMut() -> Run + 'a>);

/// The runs of one measurement, one per round.
struct Series {
    name: String,
    runs: Vec<Run>,
}

impl Series {
    /// The fastest run.
    fn best(&self) -> &Run {
        self.runs
            .iter()
            .min_by(|a, b| a.secs.total_cmp(&b.secs))
            .expect("at least one round")
    }
}

/// Takes every measurement once per round, in the given order, `rounds`
/// times; the runs of one measurement must agree on their results.
///
/// Rounds, not each measurement's runs one after another: the speed of a
/// shared machine drifts (by 15-30% within a minute on the 2-core VMs this
/// was tuned on), and a baseline measured a minute after Murmur's runs was
/// measured on another machine. The runs of a round are seconds apart, so
/// the ratio within a round compares like with like; [`report_series`]
/// gives it beside the ratio of the fastest runs.
fn interleaved(rounds: usize, mut measures: Vec<Measure<'_>>) -> Vec<Series> {
    let mut series: Vec<Series> = measures
        .iter()
        .map(|(name, _)| Series {
            name: name.clone(),
            runs: Vec::new(),
        })
        .collect();
    for _ in 0..rounds {
        for ((_, take), s) in measures.iter_mut().zip(&mut series) {
            let run = take();
            if let Some(first) = s.runs.first() {
                assert_eq!(
                    (run.groups, run.total),
                    (first.groups, first.total),
                    "repeated runs of {} agree",
                    s.name
                );
            }
            s.runs.push(run);
        }
    }
    series
}

/// Murmur's measurements of `source`: the read path alone, with the
/// Aggregator, into the EmbeddedStore, and into the MemoryStore ([`STORE`],
/// the last, which the baselines are compared with).
fn murmur_measures<'a, S>(
    runtime: &'a tokio::runtime::Runtime,
    source: &'a S,
    threads: usize,
) -> Vec<Measure<'a>>
where
    S: SnapshotSource<Item = CountEvent> + Clone + 'static,
{
    let lanes = threads as u32;
    vec![
        (
            SCAN.into(),
            Box::new(move || runtime.block_on(murmur_scan_only(source.clone(), threads))),
        ),
        (
            AGGREGATE.into(),
            Box::new(move || runtime.block_on(murmur(source.clone(), lanes, Sink::Nothing))),
        ),
        (
            EMBEDDED.into(),
            Box::new(move || runtime.block_on(murmur(source.clone(), lanes, Sink::Embedded))),
        ),
        (
            STORE.into(),
            Box::new(move || runtime.block_on(murmur(source.clone(), lanes, Sink::Memory))),
        ),
    ]
}

/// Reports a format's series under `title`: Murmur's first (the
/// [`murmur_measures`]), then each baseline, with the ratio of Murmur's
/// [`STORE`] time to its own. Every measurement that counts rows or groups
/// must find the same as the store.
fn report_series(title: &str, series: &[Series], rows: u64, bytes: u64) {
    let murmur = 1 + series
        .iter()
        .position(|s| s.name == STORE)
        .expect("Murmur's measurements first");
    let m = &series[murmur - 1];
    println!("\n== {title} ==");
    for (i, s) in series.iter().enumerate() {
        let ratio = (i >= murmur).then(|| ratios(m, s));
        report(&s.name, s.best(), rows, bytes, ratio.as_deref());
        let (run, store) = (s.best(), m.best());
        if run.total.is_some() {
            assert_eq!(
                run.total, store.total,
                "{} and {STORE}: sum of count",
                s.name
            );
        }
        if run.groups.is_some() {
            assert_eq!(run.groups, store.groups, "{} and {STORE}: groups", s.name);
        }
    }
}

/// Murmur's time over the baseline's: of the fastest runs, and the median
/// and range of the rounds' ratios.
fn ratios(murmur: &Series, baseline: &Series) -> String {
    let best = murmur.best().secs / baseline.best().secs;
    let mut rounds: Vec<f64> = murmur
        .runs
        .iter()
        .zip(&baseline.runs)
        .map(|(m, b)| m.secs / b.secs)
        .collect();
    rounds.sort_by(f64::total_cmp);
    let n = rounds.len();
    let median = (rounds[(n - 1) / 2] + rounds[n / 2]) / 2.0;
    format!(
        "   murmur/this = {best:.2}  (rounds: median {median:.2}, {:.2}-{:.2})",
        rounds[0],
        rounds[n - 1]
    )
}

/// One result line; with `ratio`, how Murmur's time compares with this one.
fn report(name: &str, run: &Run, rows: u64, bytes: u64, ratio: Option<&str>) {
    println!(
        "{name:<50} {:>8.2} s {:>12.0} rows/s {:>8.1} MB/s{}",
        run.secs,
        rows as f64 / run.secs,
        bytes as f64 / run.secs / 1e6,
        ratio.unwrap_or_default()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --benches` (no flag)
    // do not generate 20M rows.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "snapshot bench: run it with `cargo bench -p murmur-source-snapshot --bench snapshot`"
        );
        return;
    }
    let rows = env_usize("MURMUR_BENCH_ROWS", 20_000_000);
    let threads = env_usize(
        "MURMUR_BENCH_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let runs = env_usize("MURMUR_BENCH_RUNS", 3).max(1);
    let latency_ms = env_usize("MURMUR_BENCH_LATENCY_MS", 20) as u64;
    let dir = std::env::var_os("MURMUR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("murmur-bench-snapshot-{rows}")));
    let total_rows = generate(&dir, rows, threads);
    // Warm the page cache so no run pays for cold reads the others do not.
    let mut all = Vec::new();
    collect_files(&dir, "", &mut all);
    for f in &all {
        std::hint::black_box(std::fs::read(f).unwrap());
    }
    let parquet_bytes = du(&dir.join("parquet"));
    let json_bytes = du(&dir.join("json"));
    println!(
        "data set: {total_rows} rows, {PARTITIONS} hourly partitions; Parquet (Snappy) {:.1} MB, JSON Lines (gzip) {:.1} MB; {threads} threads; fastest of {runs} rounds",
        parquet_bytes as f64 / 1e6,
        json_bytes as f64 / 1e6
    );
    let python = std::env::var_os("MURMUR_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if python.is_none() {
        println!(
            "MURMUR_PYTHON is not set: DuckDB baselines skipped (`cargo xtask bench snapshot` sets it)"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());

    let parquet = ParquetSource::new(
        ObjectListing::new(Arc::clone(&store), Path::from("parquet")),
        CountEventColumns,
    );
    let json = JsonLinesSource::new(
        ObjectListing::new(Arc::clone(&store), Path::from("json")),
        CountEventLines,
    );
    // One measurement alone, for profiling.
    let only = std::env::var("MURMUR_BENCH_ONLY").unwrap_or_default();
    let (name, run, bytes) = match only.as_str() {
        "" | "parquet" | "json" => ("", None, 0),
        "parquet-scan" => (
            SCAN,
            Some(runtime.block_on(murmur_scan_only(parquet.clone(), threads))),
            parquet_bytes,
        ),
        "json-scan" => (
            SCAN,
            Some(runtime.block_on(murmur_scan_only(json.clone(), threads))),
            json_bytes,
        ),
        "parquet-aggregate" => (
            AGGREGATE,
            Some(runtime.block_on(murmur(parquet.clone(), threads as u32, Sink::Nothing))),
            parquet_bytes,
        ),
        "parquet-embedded" => (
            EMBEDDED,
            Some(runtime.block_on(murmur(parquet.clone(), threads as u32, Sink::Embedded))),
            parquet_bytes,
        ),
        "parquet-store" => (
            STORE,
            Some(runtime.block_on(murmur(parquet.clone(), threads as u32, Sink::Memory))),
            parquet_bytes,
        ),
        "json-aggregate" => (
            AGGREGATE,
            Some(runtime.block_on(murmur(json.clone(), threads as u32, Sink::Nothing))),
            json_bytes,
        ),
        "json-embedded" => (
            EMBEDDED,
            Some(runtime.block_on(murmur(json.clone(), threads as u32, Sink::Embedded))),
            json_bytes,
        ),
        "json-store" => (
            STORE,
            Some(runtime.block_on(murmur(json.clone(), threads as u32, Sink::Memory))),
            json_bytes,
        ),
        "open-latency" => {
            open_latency(&runtime, &store, latency_ms, runs);
            return;
        }
        other => {
            panic!(
                "MURMUR_BENCH_ONLY={other}: expected parquet, json, parquet-scan, parquet-aggregate, parquet-embedded, parquet-store, json-scan, json-aggregate, json-embedded, json-store or open-latency"
            )
        }
    };
    if let Some(run) = run {
        report(name, &run, total_rows, bytes, None);
        return;
    }

    if only != "json" {
        let from = format!(
            "read_parquet('{}/parquet/**/*.parquet', hive_partitioning=true)",
            dir.display()
        );
        let mut measures = murmur_measures(&runtime, &parquet, threads);
        measures.push((
            "(a) parquet crate decode-only, same columns".into(),
            Box::new(|| parquet_decode_only(&dir, threads)),
        ));
        if let Some(py) = &python {
            measures.push((
                "(b) DuckDB read_parquet GROUP BY entity_id, day".into(),
                Box::new(|| duckdb(py, &from, threads)),
            ));
        }
        let series = interleaved(runs, measures);
        report_series("Parquet", &series, total_rows, parquet_bytes);
    }

    if only == "parquet" {
        return;
    }
    if only.is_empty() && latency_ms > 0 {
        open_latency(&runtime, &store, latency_ms, runs);
    }

    let from = format!(
        "read_json('{}/json/**/*.json.gz', format='newline_delimited', hive_partitioning=false)",
        dir.display()
    );
    let mut measures = murmur_measures(&runtime, &json, threads);
    measures.push(("(a) gzip -dc | wc -l".into(), Box::new(|| gzip_wc(&dir))));
    measures.push((
        "(c) inflate + parse (flate2, serde_json)".into(),
        Box::new(|| inflate_parse(&dir, threads)),
    ));
    if let Some(py) = &python {
        measures.push((
            "(b) DuckDB read_json GROUP BY entity_id, day".into(),
            Box::new(|| duckdb(py, &from, threads)),
        ));
    }
    let series = interleaved(runs, measures);
    report_series("JSON Lines (gzip)", &series, total_rows, json_bytes);
    println!(
        "\n(murmur/this: Murmur's time (scan + aggregate into the store) divided by the baseline's, of the fastest runs and within each round; below 1 means Murmur is faster)"
    );
}
