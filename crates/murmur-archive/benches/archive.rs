//! Archive throughput and peak memory, against the encode-only rate of
//! the same records measured in the same run.
//!
//! `cargo bench -p murmur-archive --bench archive` (events:
//! `MURMUR_ARCHIVE_EVENTS`, default 5,000,000). Records are generated on
//! the fly over 4 lanes (as 4 Kafka partitions), 2,000 per chunk, event
//! times spread over 72 hours. Two phases:
//!
//! * **encode-only** (baseline): the same records, through the same
//!   [`Encoder`] and Parquet writer settings (Snappy, 65,536-row groups),
//!   into a byte counter — what any archive must at least pay;
//! * **archive**: the records pushed through [`Archive`]'s lane sinks
//!   (batching, hour split, create-only objects on a local directory,
//!   intents and commits in a memory checkpoint store, 4 flush workers),
//!   with the default `max_bytes` (64 MiB) and with 16 MiB: the peak
//!   memory follows the batcher's limit, not the data.
//!
//! Each phase runs in its own process and reports events/s, MB/s and its
//! peak resident set (Linux `VmHWM`).

use murmur_archive::{Archive, ArchiveOptions, Encoder};
use murmur_bootstrap::{LaneSink as _, LaneSinks as _};
use murmur_core::{CheckpointStore, CountEvent, LaneId, MemoryStore, Position, Record};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LANES: u64 = 4;
const CHUNK: u64 = 2_000;
const T0: i64 = 1_778_198_400_000;

fn record(lane: u64, offset: u64, events: u64) -> Record<CountEvent> {
    let i = offset * LANES + lane;
    let span = 72 * 3_600_000;
    let at = T0 + (i as i64 * span) / events as i64;
    let event = CountEvent {
        entity_id: format!("user-{:06}", (i.wrapping_mul(2_654_435_761)) % 100_000).into(),
        count: 1 + (i % 3) as i64,
        occurred_at_ms: at,
        event_id: Some(format!("ev-{i}")),
    };
    Record::new(event, at).at(Position::Offset {
        offset: offset as i64,
    })
}

/// Chunks of lane `lane`: (records, start offset, end offset).
fn chunks(lane: u64, events: u64) -> impl Iterator<Item = (Vec<Record<CountEvent>>, u64, u64)> {
    let per_lane = events / LANES;
    (0..per_lane).step_by(CHUNK as usize).map(move |start| {
        let end = (start + CHUNK).min(per_lane);
        let records = (start..end).map(|o| record(lane, o, events)).collect();
        (records, start, end)
    })
}

fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encode-only: every lane's records into one Parquet stream each.
fn encode_only(events: u64) -> (f64, u64) {
    let encoder = Encoder::count_events();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(65_536))
        .build();
    let started = Instant::now();
    let mut bytes = 0;
    for lane in 0..LANES {
        let mut writer =
            ArrowWriter::try_new(Counter(0), encoder.schema().clone(), Some(props.clone()))
                .unwrap();
        for (records, _, _) in chunks(lane, events) {
            let refs: Vec<&Record<CountEvent>> = records.iter().collect();
            writer.write(&encoder.encode(&refs).unwrap()).unwrap();
        }
        bytes += writer.into_inner().unwrap().0;
    }
    (started.elapsed().as_secs_f64(), bytes)
}

async fn archive(events: u64, dir: &std::path::Path, max_bytes: usize) -> (f64, u64, u64) {
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let mut options = ArchiveOptions::default();
    options.limits.max_bytes = max_bytes;
    let archive = Archive::new(
        store,
        format!("bench-{max_bytes}").as_str().into(),
        checkpoints,
        Encoder::count_events(),
        options,
    )
    .unwrap();
    let started = Instant::now();
    let lanes = (0..LANES).map(|lane| {
        let archive = &archive;
        async move {
            let id = LaneId::new(format!("kafka:bench:{lane}"));
            let (mut sink, _) = archive
                .open(&id, Position::Offset { offset: 0 })
                .await
                .unwrap();
            for (records, start, end) in chunks(lane, events) {
                let start = Position::Offset {
                    offset: start as i64,
                };
                let end = Position::Offset { offset: end as i64 };
                sink.push_chunk(records, &start, &end).await.unwrap();
                // Let the flush workers run between chunks, as a source's
                // I/O waits would.
                tokio::task::yield_now().await;
            }
            sink.drain().await.unwrap();
        }
    });
    futures::future::join_all(lanes).await;
    let m = archive.metrics();
    assert_eq!(m.records, events / LANES * LANES);
    (started.elapsed().as_secs_f64(), m.bytes, m.objects)
}

fn report(name: &str, events: u64, secs: f64, bytes: u64, what: &str) {
    println!(
        "{name:<12} {:>10.0} events/s  {:>7.1} MB/s  {:>8.1} MB{what}  peak RSS {}",
        events as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / 1e6,
        peak_mib().map_or("n/a".into(), |p| format!("{p:.0} MiB"))
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not:
    // do not archive 5M events in a debug build.
    if !std::env::args().any(|a| a == "--bench") {
        println!("archive bench: run it with `cargo bench -p murmur-archive --bench archive`");
        return;
    }
    let events: u64 = std::env::var("MURMUR_ARCHIVE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    // Each phase runs in its own process, so that no phase's peak RSS
    // (or memory the allocator kept) is counted in another's.
    match std::env::var("MURMUR_ARCHIVE_PHASE").ok().as_deref() {
        Some("encode") => {
            let (secs, bytes) = encode_only(events);
            report("encode-only", events, secs, bytes, "");
            println!("rate {}", events as f64 / secs);
        }
        Some(mib) => {
            let mib: usize = mib.parse().expect("MURMUR_ARCHIVE_PHASE");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (secs, bytes, objects) = rt.block_on(archive(events, dir.path(), mib << 20));
            report(
                &format!("archive {mib}M"),
                events,
                secs,
                bytes,
                &format!(" in {objects} objects"),
            );
            println!("rate {}", events as f64 / secs);
        }
        None => {
            println!("archive bench: {events} events over {LANES} lanes");
            let phase = |name: &str| -> f64 {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg("--bench")
                    .env("MURMUR_ARCHIVE_PHASE", name)
                    .env("MURMUR_ARCHIVE_EVENTS", events.to_string())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "phase {name} failed");
                let text = String::from_utf8(out.stdout).unwrap();
                let mut rate = 0.0;
                for line in text.lines() {
                    match line.strip_prefix("rate ") {
                        Some(r) => rate = r.parse().unwrap(),
                        None => println!("{line}"),
                    }
                }
                rate
            };
            let base = phase("encode");
            // The default byte limit, then a small one: memory follows the
            // batcher's limit (one open and one written batch per lane).
            for mib in ["64", "16"] {
                let rate = phase(mib);
                println!(
                    "ratio        archive (max_bytes {mib} MiB) / encode-only = {:.2}x the events/s",
                    rate / base
                );
            }
        }
    }
}
