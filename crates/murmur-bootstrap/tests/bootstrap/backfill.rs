//! The backfill driver over JSON Lines in a local directory: exact totals,
//! the event-time cut, no re-run after completion, exact resume after a crash
//! at any point of any batch, and a backfill split across two workers.

use murmur_bootstrap::{BackfillOptions, BackfillOutcome, backfill};
use murmur_core::monoid::{DynMonoid, Sum};
use murmur_core::store::{ApplyReport, RowKey, StateStore, StoredValue, WriteBatch};
use murmur_core::{
    CheckpointStore, CountEvent, EmbeddedStore, FlushPolicy, HandoffToken, MemoryStore, Pipeline,
    RunStatus, StoreError, Window,
};
use murmur_source_snapshot::{
    BadRecordPolicy, CountEventLines, JsonLinesOptions, JsonLinesSource, ObjectListing,
    SnapshotSource,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DAY: i64 = 86_400_000;
/// 2026-05-01T00:00:00Z.
const T0: i64 = 1_777_593_600_000;

struct Data {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    /// (entity, day index) -> sum of counts, for events before the cut.
    truth: BTreeMap<(String, i64), i64>,
    cut: i64,
}

fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // 2026-05-01 + days (all test data stays in May 2026).
    format!(
        "2026-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + days - (T0 / 1000 / 86_400),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// Three days of Hive-partitioned JSON Lines, 4 objects per day, plus a
/// `_SUCCESS` marker and a handoff manifest with an event-time cut.
fn write_data(events: usize) -> Data {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("events");
    let cut = T0 + 2 * DAY + DAY / 2;
    let mut truth = BTreeMap::new();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for day in 0..3i64 {
        for part in 0..4 {
            let p = root.join(format!("day={:02}/part-{part:05}.json", day + 1));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let mut text = String::new();
            for _ in 0..events / 12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let entity = format!("e{}", x % 97);
                let count = (x >> 8) % 5 + 1;
                let at = T0 + day * DAY + ((x >> 16) % DAY as u64) as i64;
                text += &format!(
                    "{{\"entity_id\":\"{entity}\",\"count\":{count},\"occurred_at\":\"{}\"}}\n",
                    rfc3339(at)
                );
                if at < cut {
                    *truth.entry((entity, at.div_euclid(DAY))).or_default() += count as i64;
                }
            }
            std::fs::write(p, text).unwrap();
        }
    }
    std::fs::write(root.join("_SUCCESS"), "").unwrap();
    std::fs::write(
        root.join("_murmur_handoff.json"),
        format!("{{\"kind\":\"event_time_cut\",\"at_ms\":{cut}}}"),
    )
    .unwrap();
    Data {
        root: dir.path().to_path_buf(),
        _dir: dir,
        truth,
        cut,
    }
}

fn source(d: &Data) -> JsonLinesSource<CountEventLines> {
    source_with(d, BadRecordPolicy::default())
}

/// [`source`] with `bad` for its bad records.
fn source_with(d: &Data, bad: BadRecordPolicy) -> JsonLinesSource<CountEventLines> {
    let fs = Arc::new(LocalFileSystem::new_with_prefix(&d.root).unwrap());
    let options = JsonLinesOptions {
        chunk_lines: 64,
        ..Default::default()
    };
    JsonLinesSource::with_options(
        ObjectListing::new(fs, Path::from("events")),
        CountEventLines,
        options,
        bad,
    )
    .unwrap()
}

/// Appends an undecodable line to each of the first `n` objects of `d`
/// (in key order: day 1's four, then day 2's).
fn add_bad_lines(d: &Data, n: usize) {
    use std::io::Write as _;
    for i in 0..n {
        let p = d.root.join(format!(
            "events/day={:02}/part-{:05}.json",
            i / 4 + 1,
            i % 4
        ));
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        writeln!(f, "not json {i}").unwrap();
    }
}

fn pipeline() -> Pipeline<CountEvent, Sum> {
    pipeline_in(Window::day())
}

/// `daily_counts`, its buckets those of `window`.
fn pipeline_in(window: Window) -> Pipeline<CountEvent, Sum> {
    Pipeline::builder("daily_counts", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .window(window)
        .build()
        .unwrap()
}

fn options(run: &str) -> BackfillOptions {
    BackfillOptions {
        lanes: 3,
        concurrency: 3,
        flush: FlushPolicy {
            max_keys: 40,
            max_age: Duration::from_secs(3600),
        },
        ..BackfillOptions::new(run)
    }
}

async fn stored(
    store: &dyn StateStore,
    truth: &BTreeMap<(String, i64), i64>,
) -> BTreeMap<(String, i64), i64> {
    let keys: Vec<RowKey> = truth
        .keys()
        .map(|(e, day)| RowKey::new(e.as_str(), Window::day().bucket_of(day * DAY).unwrap()))
        .collect();
    let got = store.get_many(&keys).await.unwrap();
    truth
        .keys()
        .cloned()
        .zip(
            got.into_iter()
                .map(|v| v.map_or(0, |v| v.value.as_int().unwrap())),
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_is_exact_and_never_rerun() {
    let d = write_data(6_000);
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb")).unwrap();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(store.clone()), Arc::new(store.clone()));
    let out = backfill(
        &pipeline(),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-exact"),
    )
    .await
    .unwrap();
    let BackfillOutcome::Completed { token, stats } = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        token,
        HandoffToken::EventTimeCut { at_ms: d.cut },
        "token from the manifest"
    );
    assert_eq!(
        stats.records + stats.after_cut,
        6_000,
        "every line read once"
    );
    assert!(stats.after_cut > 0 && stats.records > 0);
    assert_eq!(
        stored(&*state, &d.truth).await,
        d.truth,
        "stored values equal the fold of events before the cut"
    );
    let rows_before = store.rows().await.unwrap().len();
    assert_eq!(
        rows_before,
        d.truth.len(),
        "no row for events at or after the cut"
    );

    let again = backfill(
        &pipeline(),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-exact"),
    )
    .await
    .unwrap();
    assert_eq!(
        again,
        BackfillOutcome::AlreadyCompleted {
            token: HandoffToken::EventTimeCut { at_ms: d.cut }
        }
    );
    assert_eq!(
        stored(&*state, &d.truth).await,
        d.truth,
        "a second run changes nothing"
    );
}

/// Applies only `budget` rows in total, then fails, like a process killed
/// part-way through a batch.
struct Crashing {
    inner: MemoryStore,
    budget: AtomicUsize,
}

#[async_trait::async_trait]
impl StateStore for Crashing {
    fn name(&self) -> &str {
        "crashing"
    }
    async fn apply(&self, m: &dyn DynMonoid, b: &WriteBatch) -> Result<ApplyReport, StoreError> {
        let left = self.budget.load(Ordering::SeqCst);
        let mut part = b.clone();
        part.rows.truncate(left);
        self.budget.fetch_sub(part.rows.len(), Ordering::SeqCst);
        let r = self.inner.apply(m, &part).await?;
        if part.rows.len() < b.rows.len() {
            return Err(StoreError::Backend {
                store: "crashing".into(),
                operation: "apply",
                source: "killed".into(),
            });
        }
        Ok(r)
    }
    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        self.inner.get_many(keys).await
    }
}

/// A fresh memory store, its checkpoints, and the store that applies only
/// `budget` rows to it before it fails.
fn crashing(budget: usize) -> (MemoryStore, Arc<dyn CheckpointStore>, Arc<Crashing>) {
    let mem = MemoryStore::new();
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(budget),
    });
    (mem.clone(), Arc::new(mem), crashing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_anywhere_then_resume_is_exact() {
    let d = write_data(1_200);
    let mut resumed_pending = 0;
    for budget in [0, 1, 39, 40, 41, 150, 333, 600, 900] {
        let (mem, cps, crashing) = crashing(budget);
        let run = format!("bf-crash-{budget}");
        let first = backfill(
            &pipeline(),
            &source(&d),
            crashing,
            cps.clone(),
            &options(&run),
        )
        .await;
        if first.is_ok() {
            continue;
        }
        let pending = cps
            .lanes(&run)
            .await
            .unwrap()
            .iter()
            .filter(|l| l.pending.is_some())
            .count();
        resumed_pending += pending;
        let out = backfill(
            &pipeline(),
            &source(&d),
            Arc::new(mem.clone()),
            cps.clone(),
            &options(&run),
        )
        .await
        .unwrap();
        let BackfillOutcome::Completed { stats, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            stats.replayed as usize, pending,
            "budget {budget}: every pending batch replayed"
        );
        assert_eq!(
            stored(&mem, &d.truth).await,
            d.truth,
            "budget {budget}: exact after crash and resume"
        );
    }
    assert!(
        resumed_pending >= 5,
        "crashes left pending batches to replay: {resumed_pending}"
    );
}

/// The bad-record limit is over the whole run: a resume counts the bad
/// records the crashed run committed (each exactly once, pending batches
/// replayed or not), not only those it reads itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_record_limit_holds_over_a_crashed_and_resumed_run() {
    let d = write_data(1_200);
    add_bad_lines(&d, 6);
    let limit = |max| source_with(&d, BadRecordPolicy::max_bad_records(max));
    let committed = |cps: Arc<dyn CheckpointStore>, run: String| async move {
        let lanes = cps.lanes(&run).await.unwrap();
        lanes.iter().map(|l| l.bad_records).sum::<u64>()
    };
    let mut refused = 0;
    for budget in [0, 40, 150, 333, 600, 900] {
        let (mem, cps, crashing) = crashing(budget);
        let run = format!("bf-bad-{budget}");
        let first = backfill(
            &pipeline(),
            &limit(100),
            crashing,
            cps.clone(),
            &options(&run),
        )
        .await;
        if first.is_ok() {
            continue;
        }
        let earlier = committed(cps.clone(), run.clone()).await;
        assert!(
            earlier <= 6,
            "budget {budget}: {earlier} bad records committed"
        );
        if earlier > 0 {
            // Six bad lines in the run: a limit of five fails the resume,
            // though it reads fewer than six itself.
            let err = backfill(
                &pipeline(),
                &limit(5),
                Arc::new(mem.clone()),
                cps.clone(),
                &options(&run),
            )
            .await
            .unwrap_err()
            .to_string();
            let expected = format!(
                "too many bad records: 6 ({earlier} of them committed by earlier runs or other workers) > max_bad_records 5; the last one: "
            );
            assert!(err.contains(&expected), "budget {budget}: {err}");
            refused += 1;
        }
        let out = backfill(
            &pipeline(),
            &limit(6),
            Arc::new(mem.clone()),
            cps.clone(),
            &options(&run),
        )
        .await
        .unwrap();
        assert!(matches!(out, BackfillOutcome::Completed { .. }), "{out:?}");
        assert_eq!(
            committed(cps.clone(), run.clone()).await,
            6,
            "budget {budget}: every bad line committed exactly once"
        );
        assert_eq!(stored(&mem, &d.truth).await, d.truth, "budget {budget}");
    }
    assert!(
        refused >= 2,
        "crashes left bad records committed: {refused}"
    );
}

/// Two workers reading one run at once each see only their own bad
/// records (four and two); the run as a whole has six, over a limit of
/// five, so it is never completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reading_at_once_are_held_to_the_runs_bad_record_limit() {
    let d = write_data(1_200);
    add_bad_lines(&d, 6);
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem.clone()));
    let worker = |worker_index| BackfillOptions {
        worker_index,
        worker_count: 2,
        ..options("bf-bad-split")
    };
    let (w0, w1) = (worker(0), worker(1));
    let limit = || source_with(&d, BadRecordPolicy::max_bad_records(5));
    let (s0, s1) = (limit(), limit());
    let (p0, p1) = (pipeline(), pipeline());
    let (a, b) = tokio::join!(
        backfill(&p0, &s0, state.clone(), cps.clone(), &w0),
        backfill(&p1, &s1, state.clone(), cps.clone(), &w1),
    );
    assert!(
        s0.bad_records().count() <= 4 && s1.bad_records().count() <= 4,
        "each worker read only its own lanes' bad lines"
    );
    for out in [&a, &b] {
        assert!(
            !matches!(out, Ok(BackfillOutcome::Completed { .. })),
            "{out:?}"
        );
    }
    let errors: Vec<String> = [a, b]
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("too many bad records: 6 (") && e.contains("> max_bad_records 5")),
        "{errors:?}"
    );
    let run = cps.run("bf-bad-split").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_one_backfill() {
    let d = write_data(3_000);
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem.clone()));
    let w0 = BackfillOptions {
        worker_index: 0,
        worker_count: 2,
        ..options("bf-split")
    };
    let w1 = BackfillOptions {
        worker_index: 1,
        worker_count: 2,
        ..options("bf-split")
    };
    let first = backfill(&pipeline(), &source(&d), state.clone(), cps.clone(), &w0)
        .await
        .unwrap();
    let BackfillOutcome::WaitingForOtherWorkers {
        unfinished,
        stats: s0,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(unfinished.len(), 1, "worker 1's lane is not done yet");
    let second = backfill(&pipeline(), &source(&d), state.clone(), cps.clone(), &w1)
        .await
        .unwrap();
    let BackfillOutcome::Completed { stats: s1, .. } = second else {
        panic!("{second:?}")
    };
    assert_eq!(
        s0.records + s0.after_cut + s1.records + s1.after_cut,
        3_000,
        "each line read by exactly one worker"
    );
    assert_eq!(stored(&mem, &d.truth).await, d.truth);
}

/// Run `run` over `d` begun in a fresh memory store and stopped before its
/// first batch: the store (state and checkpoints) and the plan it began with.
async fn begun_and_stopped(
    d: &Data,
    run: &str,
) -> (Arc<dyn StateStore>, Arc<dyn CheckpointStore>, String) {
    let mem = MemoryStore::new();
    let (state, cps): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(mem.clone()), Arc::new(mem));
    let stopped = options(run);
    stopped.stop.cancel();
    let out = backfill(
        &pipeline(),
        &source(d),
        state.clone(),
        cps.clone(),
        &stopped,
    )
    .await
    .unwrap();
    assert!(matches!(out, BackfillOutcome::Stopped { .. }), "{out:?}");
    let begun = cps.run(run).await.unwrap().unwrap().plan.unwrap();
    (state, cps, begun)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_over_a_changed_listing_or_lane_count_is_refused() {
    let d = write_data(3_000);
    let (state, cps, begun) = begun_and_stopped(&d, "bf-plan").await;
    assert!(begun.starts_with("units=12 "), "{begun}");

    // A late object appears under the prefix.
    let late = d.root.join("events/day=03/part-00099.json");
    std::fs::write(
        &late,
        "{\"entity_id\":\"e1\",\"count\":1,\"occurred_at\":\"2026-05-03T01:00:00Z\"}\n",
    )
    .unwrap();
    let err = backfill(
        &pipeline(),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-plan"),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, murmur_bootstrap::Error::PlanChanged { .. })
            && text.contains("bf-plan")
            && text.contains("units=12 ")
            && text.contains("units=13 "),
        "{text}"
    );
    std::fs::remove_file(&late).unwrap();

    // Another lane count is another plan too.
    let mut four = options("bf-plan");
    four.lanes = 4;
    let err = backfill(&pipeline(), &source(&d), state.clone(), cps.clone(), &four)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lanes=4"), "{err}");

    // So is a source that cuts other chunks (a pending range would end
    // inside one).
    let fs = Arc::new(LocalFileSystem::new_with_prefix(&d.root).unwrap());
    let other_chunks = JsonLinesSource::with_options(
        ObjectListing::new(fs, Path::from("events")),
        CountEventLines,
        JsonLinesOptions {
            chunk_lines: 100,
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap();
    let err = backfill(
        &pipeline(),
        &other_chunks,
        state.clone(),
        cps.clone(),
        &options("bf-plan"),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("source=[chunk_lines=64]")
            && err.to_string().contains("source=[chunk_lines=100]"),
        "{err}"
    );

    // So is a pipeline that folds into other buckets.
    let err = backfill(
        &pipeline_in(Window::hour()),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-plan"),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("fold=sum/86400000ms")
            && err.to_string().contains("fold=sum/3600000ms"),
        "{err}"
    );

    // The original plan resumes and is exact.
    let out = backfill(
        &pipeline(),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-plan"),
    )
    .await
    .unwrap();
    assert!(matches!(out, BackfillOutcome::Completed { .. }), "{out:?}");
    assert_eq!(stored(&*state, &d.truth).await, d.truth);
}

/// An object rewritten to the same size between a run and its resume is
/// another plan (the listing's ETag is in the fingerprint): read at the old
/// positions, its lines would be other records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_over_an_object_rewritten_to_the_same_size_is_refused() {
    let d = write_data(3_000);
    let (state, cps, begun) = begun_and_stopped(&d, "bf-etag").await;

    // Its lines reversed: the same bytes in another order.
    let object = d.root.join("events/day=02/part-00001.json");
    let text = std::fs::read_to_string(&object).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let reversed = lines.join("\n") + "\n";
    assert_eq!(reversed.len(), text.len());
    assert_ne!(reversed, text);
    std::fs::write(&object, reversed).unwrap();

    let err = backfill(
        &pipeline(),
        &source(&d),
        state.clone(),
        cps.clone(),
        &options("bf-etag"),
    )
    .await
    .unwrap_err();
    let murmur_bootstrap::Error::PlanChanged {
        begun: began, now, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(began, &begun);
    // Same units and bytes; only the digest differs.
    let settings = |plan: &str| plan.rsplit_once(" sha256=").unwrap().0.to_owned();
    assert_eq!(settings(began), settings(now), "{began} / {now}");
    assert_ne!(began, now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_span_units_and_a_spanning_batch_replays_exactly() {
    let d = write_data(3_000);
    // One lane with room for every key: one batch across all 12 objects.
    let wide = |run: &str| BackfillOptions {
        lanes: 1,
        flush: FlushPolicy {
            max_keys: 100_000,
            max_age: Duration::from_secs(3600),
        },
        ..options(run)
    };
    let mem = MemoryStore::new();
    let out = backfill(
        &pipeline(),
        &source(&d),
        Arc::new(mem.clone()),
        Arc::new(mem.clone()),
        &wide("bf-wide"),
    )
    .await
    .unwrap();
    let BackfillOutcome::Completed { stats, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(stats.batches, 1, "one batch for 12 objects: {stats:?}");
    assert_eq!(
        stats.rows as usize,
        d.truth.len(),
        "one row write per (entity, day) across objects, not one per object"
    );
    assert_eq!(stored(&mem, &d.truth).await, d.truth);

    // Crash part-way through those spanning batches' row writes; the resume
    // re-reads each pending range across its objects.
    for budget in [1, 60, 150] {
        let mem = MemoryStore::new();
        let cps: Arc<dyn CheckpointStore> = Arc::new(mem.clone());
        let run = format!("bf-wide-{budget}");
        let crashing = Arc::new(Crashing {
            inner: mem.clone(),
            budget: AtomicUsize::new(budget),
        });
        backfill(&pipeline(), &source(&d), crashing, cps.clone(), &wide(&run))
            .await
            .expect_err("the store crashes");
        let pending = cps.lanes(&run).await.unwrap();
        let pending: Vec<_> = pending.iter().filter_map(|l| l.pending.clone()).collect();
        assert!(!pending.is_empty(), "budget {budget}");
        let out = backfill(
            &pipeline(),
            &source(&d),
            Arc::new(mem.clone()),
            cps.clone(),
            &wide(&run),
        )
        .await
        .unwrap();
        let BackfillOutcome::Completed { stats, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(stats.replayed as usize, pending.len(), "budget {budget}");
        assert_eq!(
            stored(&mem, &d.truth).await,
            d.truth,
            "budget {budget}: exact after a spanning batch was replayed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_the_token_it_began_with() {
    let d = write_data(3_000);
    let manifest = d.root.join("events/_murmur_handoff.json");
    let mem = MemoryStore::new();
    let cps: Arc<dyn CheckpointStore> = Arc::new(mem.clone());
    // The first run folds part of the history against the manifest's cut,
    // then dies.
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(200),
    });
    let first = backfill(
        &pipeline(),
        &source(&d),
        crashing,
        cps.clone(),
        &options("bf-token"),
    )
    .await;
    assert!(first.is_err(), "{first:?}");
    let began = HandoffToken::EventTimeCut { at_ms: d.cut };
    assert_eq!(
        cps.run("bf-token").await.unwrap().unwrap().token,
        Some(began.clone()),
        "the token is recorded when the run begins"
    );

    // The manifest is rewritten with an earlier cut before the resume.
    std::fs::write(
        &manifest,
        format!("{{\"kind\":\"event_time_cut\",\"at_ms\":{}}}", d.cut - DAY),
    )
    .unwrap();
    // A resume given another token is refused, naming both.
    let other = HandoffToken::EventTimeCut { at_ms: d.cut - DAY };
    let err = backfill(
        &pipeline(),
        &source(&d),
        Arc::new(mem.clone()),
        cps.clone(),
        &BackfillOptions {
            token: Some(other.clone()),
            ..options("bf-token")
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::TokenChanged { .. })
            && err.to_string().contains(&began.to_json())
            && err.to_string().contains(&other.to_json()),
        "{err}"
    );
    // A resume without one uses the run's token, not the new manifest's:
    // every lane folds against the same cut, and live gets that cut.
    let out = backfill(
        &pipeline(),
        &source(&d),
        Arc::new(mem.clone()),
        cps.clone(),
        &options("bf-token"),
    )
    .await
    .unwrap();
    let BackfillOutcome::Completed { token, stats } = out else {
        panic!("{out:?}")
    };
    assert_eq!(token, began);
    assert!(stats.records > 0, "{stats:?}");
    assert_eq!(stored(&mem, &d.truth).await, d.truth);
}

/// A backfill with no handoff token cannot hand over to live: with
/// `require_token` it is refused before anything is read, and a run that
/// completed without one refuses a token given later (its history was
/// folded without the cut, so live from that token would count twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_token_cannot_hand_over_to_live() {
    let d = write_data(1_000);
    std::fs::remove_file(d.root.join("events/_murmur_handoff.json")).unwrap();
    let mem = MemoryStore::new();
    let cps: Arc<dyn CheckpointStore> = Arc::new(mem.clone());
    let run = |options: BackfillOptions| {
        let (mem, cps, d) = (mem.clone(), cps.clone(), &d);
        async move { backfill(&pipeline(), &source(d), Arc::new(mem), cps, &options).await }
    };
    let live_follows = BackfillOptions {
        require_token: true,
        ..options("bf-none")
    };
    let err = run(live_follows.clone()).await.unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::NoToken { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("run bf-none: no handoff token (none given, no manifest beside the data"),
        "{err}"
    );
    assert!(cps.run("bf-none").await.unwrap().is_none(), "no run begun");
    assert!(mem.rows().is_empty(), "nothing read");

    // Without a live stage it runs, and completes without a token.
    let out = run(options("bf-none")).await.unwrap();
    let BackfillOutcome::Completed { token, stats } = out else {
        panic!("{out:?}")
    };
    assert_eq!(token, HandoffToken::None);
    assert!(stats.records > 900, "{stats:?}");
    let rows = mem.rows();

    // A token given now is refused, and so is a live stage without one.
    let cut = HandoffToken::EventTimeCut { at_ms: d.cut };
    let err = run(BackfillOptions {
        token: Some(cut.clone()),
        ..options("bf-none")
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::TokenChanged { .. })
            && err.to_string().contains(&cut.to_json()),
        "{err}"
    );
    let err = run(live_follows).await.unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::NoToken { .. }),
        "{err}"
    );
    assert_eq!(mem.rows(), rows, "nothing more was written");
}

/// A record the pipeline refuses (its key function gives an empty key) is
/// a bad record of its source, like a line that does not decode. Under the
/// default limit (none allowed) the run fails naming the object, line and
/// reason, with or without dedup, on the first run and on the resume,
/// leaving no batch pending (the chunk never reached its lane). Allowed,
/// it is dead-lettered with its line and text, committed once as the
/// run's bad record, and every other record is folded exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_pipeline_refuses_is_a_bad_record_of_its_source() {
    use std::io::Write as _;
    let d = write_data(1_200);
    let object = "events/day=02/part-00001.json";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.root.join(object))
        .unwrap();
    let refused = format!(
        "{{\"entity_id\":\"refused\",\"count\":1,\"occurred_at\":\"{}\"}}",
        rfc3339(T0 + DAY + 3_600_000)
    );
    writeln!(f, "{refused}").unwrap();
    drop(f);
    let lines = std::fs::read_to_string(d.root.join(object))
        .unwrap()
        .lines()
        .count();
    let pipeline = Pipeline::builder("daily_counts", Sum)
        .key_by_str(|e: &CountEvent| {
            if e.entity_id == "refused" {
                ""
            } else {
                &e.entity_id
            }
        })
        .value(|e| e.count)
        .window(Window::day())
        .build()
        .unwrap();
    let named = format!(
        "the last one: `{object}`: line {lines}: pipeline daily_counts: entity key \"\": is empty"
    );
    let mem = MemoryStore::new();
    let dedup = BackfillOptions {
        dedup: Some(murmur_bootstrap::Dedup {
            deduper: Arc::new(mem.clone()),
            ttl: None,
        }),
        ..options("bf-refused-dedup")
    };
    for (attempt, opts) in [
        ("first run", options("bf-refused")),
        ("resume", options("bf-refused")),
        ("first run with dedup", dedup.clone()),
        ("resume with dedup", dedup),
    ] {
        let err = backfill(
            &pipeline,
            &source(&d),
            Arc::new(mem.clone()),
            Arc::new(mem.clone()),
            &opts,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("too many bad records: 1") && err.contains(&named),
            "{attempt}: {err}"
        );
        let lanes = CheckpointStore::lanes(&mem, &opts.run_id).await.unwrap();
        assert!(
            lanes.iter().all(|l| l.bad_records == 0),
            "{attempt}: {lanes:?}"
        );
    }

    // One bad record allowed: dead-lettered, the rest folded exactly.
    let dlq = tempfile::tempdir().unwrap();
    let letters: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dlq.path()).unwrap());
    let allowed = source_with(
        &d,
        BadRecordPolicy::max_bad_records(1).with_dead_letter(letters, Path::from("dlq")),
    );
    let mem = MemoryStore::new();
    let out = backfill(
        &pipeline,
        &allowed,
        Arc::new(mem.clone()),
        Arc::new(mem.clone()),
        &options("bf-refused-allowed"),
    )
    .await
    .unwrap();
    assert!(matches!(out, BackfillOutcome::Completed { .. }), "{out:?}");
    assert_eq!(stored(&mem, &d.truth).await, d.truth);
    let lanes = CheckpointStore::lanes(&mem, "bf-refused-allowed")
        .await
        .unwrap();
    assert_eq!(lanes.iter().map(|l| l.bad_records).sum::<u64>(), 1);
    // 100 lines of 64-line chunks: the refused line 101 is in the chunk
    // from line 65.
    let letter = std::fs::read_to_string(
        dlq.path()
            .join(format!("dlq/{object}/lines-{}.jsonl", lines / 64 * 64 + 1)),
    )
    .unwrap();
    let letter: serde_json::Value = serde_json::from_str(letter.trim()).unwrap();
    assert_eq!(
        letter,
        serde_json::json!({
            "object": object,
            "location": {"line": lines},
            "reason": "pipeline daily_counts: entity key \"\": is empty",
            "raw": refused,
        })
    );
}
