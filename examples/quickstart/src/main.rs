//! Murmur quickstart: page-view counters with hourly buckets on the embedded
//! store — a backfill over history split into four lanes, a completion record
//! with an event-time-cut handoff token, then the "live" tail from the cut —
//! all through fenced batches, and queries checked against an independent
//! count.
//!
//! Kill it at any moment (`kill -9`, Ctrl-C) and run it again: the backfill
//! resumes from its lanes' checkpoints (a pending batch is re-applied
//! exactly), a completed backfill is never re-run, and the totals stay exact.
//!
//! ```sh
//! cargo run -p murmur-quickstart -- [DATA_DIR] [EVENTS]
//! ```
//! `DATA_DIR` defaults to `murmur-quickstart-data` (relative to the current
//! directory), `EVENTS` to 500,000.

use murmur_bootstrap::{LaneWriter, Resume};
use murmur_core::monoid::Count;
use murmur_core::{
    CheckpointStore, EmbeddedStore, FlushPolicy, HandoffToken, LaneId, Pipeline, Position, Record,
    RunStatus, StateStore, Window, query,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOUR: i64 = 3_600_000;
/// 2026-05-08T00:00:00Z.
const START_MS: i64 = 1_778_198_400_000;
const DAYS: i64 = 3;
const PAGES: u64 = 200;
const LANES: u64 = 4;
const CHUNK: usize = 4_096;

/// A page view.
#[derive(Debug, Clone)]
struct View {
    page: u32,
    at_ms: i64,
}

/// The i-th event of a deterministic synthetic stream (Zipf-like pages).
fn event(i: u64) -> View {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    let r = (x % 10_000) as f64 / 10_000.0;
    View {
        page: ((PAGES as f64) * r * r * r) as u32,
        at_ms: START_MS + (x >> 20) as i64 % (DAYS * 24 * HOUR),
    }
}

fn record(i: u64) -> Record<View> {
    let v = event(i);
    let t = v.at_ms;
    Record::new(v, t).at(Position::Offset { offset: i as i64 })
}

type Err = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Err> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "murmur-quickstart-data".into());
    let events: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500_000);
    std::fs::create_dir_all(&dir)?;
    let store = EmbeddedStore::open(std::path::Path::new(&dir).join("state.redb"))?;
    println!("store: {}", StateStore::name(&store));

    // The pipeline is defined once and used by both stages.
    let views = Pipeline::builder("page_views", Count)
        .key_by(|v: &View| format!("page:{}", v.page))
        .value(|_| ())
        .window(Window::hour())
        .build()?;
    let state: Arc<dyn StateStore> = Arc::new(store.clone());
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(store.clone());
    let flush = FlushPolicy {
        max_keys: 20_000,
        max_age: Duration::from_secs(5),
    };

    // History is everything before the cut; live is the rest.
    let cut_ms = START_MS + (DAYS * 24 - 6) * HOUR;
    let started = Instant::now();
    let run_id = format!("quickstart-backfill-{events}");
    let run = checkpoints.begin_run(&run_id).await?;
    if run.status == RunStatus::Completed {
        println!(
            "backfill {run_id}: already completed, not re-run (token {})",
            run.token.map(|t| t.to_json()).unwrap_or_default()
        );
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..LANES {
            let (views, state, checkpoints) = (views.clone(), state.clone(), checkpoints.clone());
            let lane = LaneId::new(format!("{run_id}:slot-{slot}"));
            // Slot `s` owns events s, s + LANES, s + 2 * LANES, ...; positions
            // count the slot's own events.
            let slot_events: Vec<u64> = (slot..events).step_by(LANES as usize).collect();
            tasks.spawn(async move {
                let keep = |r: &Record<View>| r.event_time_ms < cut_ms;
                let (mut w, resume) = LaneWriter::open(
                    views,
                    state,
                    checkpoints,
                    lane,
                    Position::Offset { offset: 0 },
                    flush,
                )
                .await?;
                let from = match resume {
                    Resume::Pending(intent) => {
                        let (s, e) = (offset(&intent.start), offset(&intent.end));
                        let recs: Vec<_> = slot_events[s..e]
                            .iter()
                            .map(|i| record(*i))
                            .filter(keep)
                            .collect();
                        w.replay(&recs).await?;
                        e
                    }
                    Resume::From(p) => offset(&p),
                };
                for (n, chunk) in slot_events[from..].chunks(CHUNK).enumerate() {
                    let s = from + n * CHUNK;
                    let recs: Vec<_> = chunk.iter().map(|i| record(*i)).filter(keep).collect();
                    let (start, end) = (
                        Position::Offset { offset: s as i64 },
                        Position::Offset {
                            offset: (s + chunk.len()) as i64,
                        },
                    );
                    w.push_chunk(recs, &start, &end).await?;
                }
                w.flush().await?;
                Ok::<_, Err>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let token = HandoffToken::EventTimeCut { at_ms: cut_ms };
        checkpoints.complete_run(&run_id, &token).await?;
        println!(
            "backfill {run_id}: {LANES} lanes done in {:.1?}, handoff token {}",
            started.elapsed(),
            token.to_json()
        );
    }

    // Live: one lane reading the same stream from the start of its retained
    // range, dropping events before the cut (event-time-cut handoff).
    let lane = LaneId::new(format!("quickstart-live-{events}:0"));
    let (mut w, resume) = LaneWriter::open(
        views.clone(),
        state.clone(),
        checkpoints.clone(),
        lane,
        Position::Offset { offset: 0 },
        flush,
    )
    .await?;
    let live = |i: &u64| record(*i);
    let after_cut = |r: &Record<View>| r.event_time_ms >= cut_ms;
    let from = match resume {
        Resume::Pending(intent) => {
            let (s, e) = (offset(&intent.start) as u64, offset(&intent.end) as u64);
            let recs: Vec<_> = (s..e).map(|i| live(&i)).filter(after_cut).collect();
            w.replay(&recs).await?;
            e
        }
        Resume::From(p) => offset(&p) as u64,
    };
    let mut applied = 0u64;
    let mut s = from;
    while s < events {
        let e = (s + CHUNK as u64).min(events);
        let recs: Vec<_> = (s..e).map(|i| live(&i)).filter(after_cut).collect();
        applied += recs.len() as u64;
        w.push_chunk(
            recs,
            &Position::Offset { offset: s as i64 },
            &Position::Offset { offset: e as i64 },
        )
        .await?;
        s = e;
    }
    w.flush().await?;
    println!("live: {applied} new events after the cut (resumed at offset {from})");

    // Queries, checked against an independent count of the same events.
    let mut truth: HashMap<(u32, i64), i64> = HashMap::new();
    for i in 0..events {
        let v = event(i);
        *truth.entry((v.page, v.at_ms.div_euclid(HOUR))).or_default() += 1;
    }
    let window = *views.window().expect("windowed");
    let now = START_MS + DAYS * 24 * HOUR - 1;
    let pages = [0u32, 1, 2, 50, 199];
    let entities: Vec<String> = pages.iter().map(|p| format!("page:{p}")).collect();
    let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
    let last_24h = query::window_many(&*state, views.monoid(), &window, &refs, now, 24).await?;
    let all = query::range_many(&*state, views.monoid(), &window, &refs, START_MS, now).await?;
    let now_idx = now.div_euclid(HOUR);
    let mut ok = true;
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12}",
        "page", "last 24h", "expected", "all time", "expected"
    );
    for ((p, got24), got_all) in pages.iter().zip(&last_24h).zip(&all) {
        let want24: i64 = truth
            .iter()
            .filter(|((q, h), _)| q == p && *h > now_idx - 24)
            .map(|(_, c)| c)
            .sum();
        let want_all: i64 = truth
            .iter()
            .filter(|((q, _), _)| q == p)
            .map(|(_, c)| c)
            .sum();
        ok &= *got24 == want24 && *got_all == want_all;
        println!(
            "{:<10} {got24:>12} {want24:>12} {got_all:>12} {want_all:>12}",
            format!("page:{p}")
        );
    }
    if ok {
        println!("OK: every queried value equals the independent count ({events} events)");
        Ok(())
    } else {
        Err("MISMATCH between stored values and the independent count".into())
    }
}

fn offset(p: &Position) -> usize {
    match p {
        Position::Offset { offset } => *offset as usize,
        _ => 0,
    }
}
