//! `murmur-worker demo`: the whole product on one machine, no services.
//!
//! 1. Generates (once) a Spark-shaped export of the history: Hive-partitioned
//!    Snappy Parquet `events/year=/month=/day=/hour=/part-00000.parquet`, a
//!    `_SUCCESS` marker and the `_murmur_handoff.json` manifest holding the
//!    Kafka offsets the export stops at.
//! 2. Starts an in-process Kafka broker (librdkafka's mock cluster, reached
//!    over TCP like any broker) and produces the topic: the history, then
//!    the new events of every demo run so far. The mock forgets on exit, so
//!    each run rebuilds the same topic at the same offsets.
//! 3. Runs exactly what `murmur-worker run` runs (the command is printed):
//!    Parquet backfill into the embedded store, handoff through the
//!    manifest's token, live Kafka until every partition is consumed.
//! 4. Queries hourly windows and compares them with a count of the
//!    generated events done here, without Murmur code.
//!
//! Run it again: the backfill is not redone, live resumes from its
//! checkpoints, and the new events are counted once.

use crate::cli::{Cli, Command, DemoArgs, ProgressMode};
use crate::run;
use crate::stores;
use anyhow::{Context as _, bail};
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use chrono::{Datelike as _, Timelike as _};
use clap::Parser as _;
use murmur_core::monoid::Sum;
use murmur_core::{HandoffToken, Window, query};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "page_views";
const PARTITIONS: i32 = 3;
const HOUR: i64 = 3_600_000;
/// 2026-05-08T00:00:00Z: the history covers three days from here.
const T0: i64 = 1_778_198_400_000;
const HISTORY_SPAN: i64 = 72 * HOUR;
const USERS: u64 = 500;

/// What was generated, kept in `demo.json` so every run rebuilds the same
/// topic.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DemoState {
    history_events: u64,
    live_events: u64,
    runs: u64,
}

/// One generated event.
struct Event {
    entity: String,
    count: i64,
    at_ms: i64,
}

/// Event `i` of the deterministic stream: a few heavy users and a long
/// tail, times increasing with `i` (with jitter), partition `i % 3`.
fn event(i: u64, history: u64) -> Event {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    let r = (x % 10_000) as f64 / 10_000.0;
    Event {
        entity: format!("user-{:04}", ((USERS as f64) * r * r * r) as u64),
        count: 1 + (x >> 40) as i64 % 3,
        at_ms: T0 + (i as i64) * HISTORY_SPAN / history.max(1) as i64 + (x >> 20) as i64 % 60_000,
    }
}

fn partition(i: u64) -> i32 {
    (i % PARTITIONS as u64) as i32
}

/// Runs the demo.
pub async fn demo(
    args: &DemoArgs,
    progress: ProgressMode,
    stop: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if args.history_events == 0 {
        bail!("--history-events must be positive");
    }
    let state_path = dir.join("demo.json");
    let mut state = match std::fs::read(&state_path) {
        Ok(bytes) => {
            let s: DemoState = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a demo state", state_path.display()))?;
            if s.history_events != args.history_events || s.live_events != args.live_events {
                bail!(
                    "{} was generated with --history-events {} --live-events {}; use those or another --data-dir",
                    dir.display(),
                    s.history_events,
                    s.live_events
                );
            }
            s
        }
        Err(_) => DemoState {
            history_events: args.history_events,
            live_events: args.live_events,
            runs: 0,
        },
    };
    let history = state.history_events;
    let export = dir.join("export");
    if !export.join("events").join("_SUCCESS").exists() {
        println!(
            "generating a Spark-shaped Parquet export of {history} events in {}",
            export.display()
        );
        write_export(&export.join("events"), history)?;
    }
    state.runs += 1;
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    let total = history + state.runs * state.live_events;

    // The broker: history plus the new events of every run so far, always
    // at the same offsets.
    let cluster = MockCluster::new(1).context("cannot start the in-process Kafka broker")?;
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .context("cannot create the demo topic")?;
    let brokers = cluster.bootstrap_servers();
    println!(
        "in-process Kafka at {brokers}: producing {total} events to {TOPIC} ({} new in this run)",
        state.live_events
    );
    produce(&brokers, total, history).await?;
    let mut end = BTreeMap::new();
    for i in 0..total {
        *end.entry(partition(i)).or_insert(0i64) += 1;
    }
    let until = HandoffToken::Kafka {
        topic: TOPIC.into(),
        offsets: end,
    };

    // Exactly what a user would run.
    let command: Vec<String> = [
        "murmur-worker",
        "run",
        "--data-dir",
        &dir.to_string_lossy(),
        "--pipeline",
        "page_views",
        "--aggregate",
        "sum",
        "--window",
        "hour",
        "--backfill",
        "parquet",
        "--from",
        &export.join("events").to_string_lossy(),
        "--live",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--kafka-topic",
        TOPIC,
        "--flush-max-age",
        "500ms",
        "--until",
        &until.to_json(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    println!("running: {}", shell_words(&command));
    let Command::Run(run_args) = Cli::try_parse_from(&command)?.command else {
        unreachable!("a run command line");
    };
    let summary = run::run(&run_args, run::Mode::Run, progress, stop.clone()).await?;
    println!("worker: {}", serde_json::to_string(&summary)?);
    if stop.is_cancelled() {
        println!("stopped before the end; run the demo again to resume");
        return Ok(ExitCode::SUCCESS);
    }
    // The consumer's background threads outlive the worker by a moment;
    // the broker stays up until the process exits so they close quietly.
    std::mem::forget(cluster);

    // The independent count, straight from the generated events.
    let mut truth: HashMap<(String, i64), i64> = HashMap::new();
    let mut per_user: HashMap<String, i64> = HashMap::new();
    let mut newest = i64::MIN;
    for i in 0..total {
        let e = event(i, history);
        newest = newest.max(e.at_ms);
        *truth
            .entry((e.entity.clone(), e.at_ms.div_euclid(HOUR)))
            .or_default() += e.count;
        *per_user.entry(e.entity).or_default() += e.count;
    }
    let mut users: Vec<(String, i64)> = per_user.into_iter().collect();
    users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut shown: Vec<String> = users.iter().take(5).map(|(u, _)| u.clone()).collect();
    shown.extend(users.last().map(|(u, _)| u.clone()));
    shown.push("user-nobody".into());

    let stores = stores::open(&run_args.store, "page_views").await?;
    let window = Window::hour();
    let refs: Vec<&str> = shown.iter().map(String::as_str).collect();
    let last_24h = query::window_many(&*stores.state, &Sum, &window, &refs, newest, 24).await?;
    let all = query::range_many(&*stores.state, &Sum, &window, &refs, T0, newest).await?;
    let newest_hour = newest.div_euclid(HOUR);
    println!(
        "\n{:<12} {:>14} {:>10} {:>14} {:>10}",
        "entity", "last 24 hours", "expected", "all time", "expected"
    );
    let mut ok = true;
    for ((user, got24), got_all) in shown.iter().zip(&last_24h).zip(&all) {
        let want = |keep: &dyn Fn(i64) -> bool| -> i64 {
            truth
                .iter()
                .filter(|((u, h), _)| u == user && keep(*h))
                .map(|(_, c)| c)
                .sum()
        };
        let want24 = want(&|h| h > newest_hour - 24);
        let want_all = want(&|_| true);
        ok &= *got24 == want24 && *got_all == want_all;
        println!("{user:<12} {got24:>14} {want24:>10} {got_all:>14} {want_all:>10}");
    }
    println!();
    if ok {
        println!(
            "OK: every value equals the independent count of {total} events \
             ({history} backfilled from Parquet, {} live; demo run {})",
            total - history,
            state.runs
        );
        println!(
            "query it yourself: murmur-worker window --data-dir {} --pipeline page_views --entity {} --last 24 --now {newest}",
            dir.display(),
            shown[0]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("MISMATCH between the stored values and the independent count");
        Ok(ExitCode::FAILURE)
    }
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Produces events `[0, total)` in order (idempotent producer: one
/// partition's order is the send order), so offsets are the same every run.
async fn produce(brokers: &str, total: u64, history: u64) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("cannot create the demo producer")?;
    let mut i = 0;
    while i < total {
        let batch_end = (i + 10_000).min(total);
        let events: Vec<(u64, Event, String)> = (i..batch_end)
            .map(|j| {
                let e = event(j, history);
                let payload = format!(
                    r#"{{"entity_id":"{}","count":{},"occurred_at_unix_ms":{}}}"#,
                    e.entity, e.count, e.at_ms
                );
                (j, e, payload)
            })
            .collect();
        let pending: Vec<_> = events
            .iter()
            .map(|(j, e, payload)| {
                let record = FutureRecord::<(), _>::to(TOPIC)
                    .partition(partition(*j))
                    .payload(payload)
                    .timestamp(e.at_ms);
                producer.send(record, Duration::from_secs(30))
            })
            .collect();
        for delivery in futures::future::join_all(pending).await {
            delivery.map_err(|(e, _)| anyhow::anyhow!("cannot produce a demo event: {e}"))?;
        }
        i = batch_end;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("cannot flush the demo producer")?;
    Ok(())
}

/// Writes the history as a Spark job would: one Snappy Parquet object per
/// hour partition, then the handoff manifest and `_SUCCESS`.
fn write_export(dir: &Path, history: u64) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("occurred_at_unix_ms", DataType::Int64, false),
        Field::new("year", DataType::Int32, false),
        Field::new("month", DataType::Int32, false),
        Field::new("day", DataType::Int32, false),
        Field::new("hour", DataType::Int32, false),
    ]));
    let mut by_hour: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    let mut offsets = BTreeMap::new();
    for i in 0..history {
        let e = event(i, history);
        by_hour.entry(e.at_ms.div_euclid(HOUR)).or_default().push(e);
        *offsets.entry(partition(i)).or_insert(0i64) += 1;
    }
    for (hour, events) in by_hour {
        let t =
            chrono::DateTime::from_timestamp_millis(hour * HOUR).context("time out of range")?;
        let (y, mo, d, h) = (t.year(), t.month() as i32, t.day() as i32, t.hour() as i32);
        let part = dir.join(format!("year={y}/month={mo:02}/day={d:02}/hour={h:02}"));
        std::fs::create_dir_all(&part)?;
        let n = events.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.entity.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.count))),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.at_ms))),
            Arc::new(Int32Array::from(vec![y; n])),
            Arc::new(Int32Array::from(vec![mo; n])),
            Arc::new(Int32Array::from(vec![d; n])),
            Arc::new(Int32Array::from(vec![h; n])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let file = std::fs::File::create(part.join("part-00000.parquet"))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
    }
    let token = HandoffToken::Kafka {
        topic: TOPIC.into(),
        offsets,
    };
    std::fs::write(
        dir.join(murmur_source_snapshot::HANDOFF_MANIFEST),
        token.to_json(),
    )?;
    // Last, as Spark does: its presence means the export is complete.
    std::fs::write(dir.join("_SUCCESS"), b"")?;
    Ok(())
}
