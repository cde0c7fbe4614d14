//! LaneWriter: batches, commits, and exact replay after a crash part-way
//! through a batch's rows.

use murmur_bootstrap::{LaneWriter, Resume};
use murmur_core::monoid::{DynMonoid, Sum};
use murmur_core::store::{ApplyReport, RowKey, StateStore, StoredValue, WriteBatch};
use murmur_core::{
    CheckpointStore, FlushPolicy, LaneId, MemoryStore, Pipeline, Position, Record, StoreError,
    Window,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Applies only the first `budget` rows it is given in total, then fails:
/// a process dying part-way through a batch.
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
        if b.rows.len() <= left {
            self.budget.fetch_sub(b.rows.len(), Ordering::SeqCst);
            return self.inner.apply(m, b).await;
        }
        let mut part = b.clone();
        part.rows.truncate(left);
        self.budget.store(0, Ordering::SeqCst);
        self.inner.apply(m, &part).await?;
        Err(StoreError::Backend {
            store: "crashing".into(),
            operation: "apply",
            source: "killed".into(),
        })
    }
    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        self.inner.get_many(keys).await
    }
}

fn pipeline() -> Pipeline<(u32, i64), Sum> {
    Pipeline::builder("lane-test", Sum)
        .key_by(|e: &(u32, i64)| format!("k{}", e.0))
        .value(|e| e.1)
        .window(Window::hour())
        .build()
        .unwrap()
}

/// Offsets 0..n; record i has key i % 50 and value i.
fn source(n: i64) -> Vec<Record<(u32, i64)>> {
    (0..n)
        .map(|i| Record::new(((i % 50) as u32, i), i * 1000).at(Position::Offset { offset: i }))
        .collect()
}

fn off(o: i64) -> Position {
    Position::Offset { offset: o }
}

async fn totals(store: &MemoryStore) -> BTreeMap<String, i64> {
    let mut t = BTreeMap::new();
    for (k, row) in store.rows() {
        *t.entry(k.entity.to_string()).or_default() += row.value.as_int().unwrap();
    }
    t
}

/// Lane p0 opened at offset 0, its rows in `state` and its checkpoints in
/// `mem`.
async fn open<M: murmur_core::Monoid>(
    pipeline: Pipeline<(u32, i64), M>,
    state: Arc<dyn StateStore>,
    mem: &MemoryStore,
    flush: FlushPolicy,
) -> (LaneWriter<(u32, i64), M>, Resume) {
    LaneWriter::open(
        pipeline,
        state,
        Arc::new(mem.clone()),
        LaneId::new("p0"),
        off(0),
        flush,
    )
    .await
    .unwrap()
}

async fn run_lane(
    store: Arc<dyn StateStore>,
    cps: Arc<dyn CheckpointStore>,
    records: &[Record<(u32, i64)>],
) -> murmur_bootstrap::Result<()> {
    let flush = FlushPolicy {
        max_keys: 20,
        max_age: Duration::from_secs(3600),
    };
    let (mut w, resume) =
        LaneWriter::open(pipeline(), store, cps, LaneId::new("p0"), off(0), flush).await?;
    let from = match resume {
        Resume::Pending(intent) => {
            let (Position::Offset { offset: s }, Position::Offset { offset: e }) =
                (&intent.start, &intent.end)
            else {
                panic!("offset positions")
            };
            w.replay(&records[*s as usize..*e as usize]).await?;
            *e
        }
        Resume::From(Position::Offset { offset }) => offset,
        Resume::From(p) => panic!("unexpected {p}"),
    };
    for chunk in records[from as usize..].chunks(7) {
        let (s, e) = (chunk[0].value.1, chunk.last().unwrap().value.1 + 1);
        w.push_chunk(chunk.to_vec(), &off(s), &off(e)).await?;
    }
    w.flush().await?;
    Ok(())
}

#[tokio::test]
async fn batches_commit_and_positions_advance() {
    let mem = MemoryStore::new();
    let recs = source(500);
    run_lane(Arc::new(mem.clone()), Arc::new(mem.clone()), &recs)
        .await
        .unwrap();
    let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
    assert_eq!(lane.position, off(500));
    assert!(lane.pending.is_none());
    assert!(
        lane.committed_seq >= 2,
        "20-key batches over 50 keys: several batches, got {}",
        lane.committed_seq
    );
    let want: BTreeMap<String, i64> = (0..50)
        .map(|k| (format!("k{k}"), (0..500).filter(|i| i % 50 == k).sum()))
        .collect();
    assert_eq!(totals(&mem).await, want);
}

#[tokio::test]
async fn crash_mid_batch_then_replay_is_exact() {
    let recs = source(2_000);
    let truth: BTreeMap<String, i64> = (0..50)
        .map(|k| (format!("k{k}"), (0..2_000).filter(|i| i % 50 == k).sum()))
        .collect();
    let mut mid_batch_crashes = 0;
    for budget in [0, 1, 13, 19, 20, 21, 77, 333] {
        let mem = MemoryStore::new();
        let crashing = Arc::new(Crashing {
            inner: mem.clone(),
            budget: AtomicUsize::new(budget),
        });
        let first = run_lane(crashing, Arc::new(mem.clone()), &recs).await;
        assert!(first.is_err(), "budget {budget} crashes the first run");
        let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
        if lane.pending.is_some() {
            mid_batch_crashes += 1;
        }
        run_lane(Arc::new(mem.clone()), Arc::new(mem.clone()), &recs)
            .await
            .unwrap();
        assert_eq!(
            totals(&mem).await,
            truth,
            "budget {budget}: exact after replay"
        );
        let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
        assert_eq!(lane.position, off(2_000));
    }
    assert_eq!(mid_batch_crashes, 8, "every crash left a pending intent");
}

#[tokio::test]
async fn new_records_before_replay_are_refused() {
    let mem = MemoryStore::new();
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(3),
    });
    let recs = source(100);
    assert!(
        run_lane(crashing, Arc::new(mem.clone()), &recs)
            .await
            .is_err()
    );
    let flush = FlushPolicy::default();
    let (mut w, resume) = open(pipeline(), Arc::new(mem.clone()), &mem, flush).await;
    assert!(matches!(resume, Resume::Pending(_)));
    let err = w
        .push_chunk(recs[..1].to_vec(), &off(0), &off(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must be replayed"), "{err}");
}

#[tokio::test]
async fn a_writer_that_failed_mid_chunk_refuses_work_and_a_reopen_is_exact() {
    let mem = MemoryStore::new();
    let recs = source(500);
    let (mut w, _) = open(
        pipeline(),
        Arc::new(mem.clone()),
        &mem,
        FlushPolicy::default(),
    )
    .await;
    w.push_chunk(recs[..7].to_vec(), &off(0), &off(7))
        .await
        .unwrap();
    // Records 7, 8 and 9 fold; record 10's event time is out of range.
    let mut bad = recs[7..14].to_vec();
    bad[3].event_time_ms = i64::MAX;
    let err = w.push_chunk(bad, &off(7), &off(14)).await.unwrap_err();
    assert!(
        err.to_string().contains("the record at offset 10: ")
            && err.to_string().contains("outside the supported range"),
        "{err}"
    );
    // Flushing now would write records 7..10 under a batch whose range
    // ends at 7: refused, as is any further chunk.
    let err = w.flush().await.unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::Poisoned { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "failed earlier (lane p0: the record at offset 10: event time 9223372036854775807"
        ) && err.to_string().contains("open the lane again"),
        "{err}"
    );
    let err = w
        .push_chunk(recs[14..21].to_vec(), &off(14), &off(21))
        .await
        .unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::Poisoned { .. }),
        "{err}"
    );
    let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
    assert_eq!((lane.position, lane.committed_seq), (off(0), 0));
    assert!(mem.rows().is_empty(), "nothing was written");

    // Opened again, the lane resumes from its checkpoint: exact totals.
    drop(w);
    run_lane(Arc::new(mem.clone()), Arc::new(mem.clone()), &recs)
        .await
        .unwrap();
    let want: BTreeMap<String, i64> = (0..50)
        .map(|k| (format!("k{k}"), (0..500).filter(|i| i % 50 == k).sum()))
        .collect();
    assert_eq!(totals(&mem).await, want);
}

#[tokio::test]
async fn a_store_failure_poisons_the_writer() {
    let mem = MemoryStore::new();
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(3),
    });
    let (mut w, _) = open(pipeline(), crashing, &mem, FlushPolicy::default()).await;
    let recs = source(10);
    w.push_chunk(recs.clone(), &off(0), &off(10)).await.unwrap();
    let err = w.flush().await.unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    let err = w.flush().await.unwrap_err();
    assert!(
        matches!(err, murmur_bootstrap::Error::Poisoned { .. })
            && err.to_string().contains("killed"),
        "{err}"
    );
    let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
    assert!(lane.pending.is_some(), "the intent waits for its replay");
}

#[tokio::test]
async fn records_past_retention_are_counted_in_the_batch_report() {
    let mem = MemoryStore::new();
    let pipeline = Pipeline::builder("retained", Sum)
        .key_by(|e: &(u32, i64)| format!("k{}", e.0))
        .value(|e| e.1)
        .window(Window::hour().with_retention(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let (mut w, _) = open(
        pipeline,
        Arc::new(mem.clone()),
        &mem,
        FlushPolicy::default(),
    )
    .await;
    // Ten records of 1970, long past an hour's retention, and three of now.
    let now = murmur_core::store::now_ms();
    let mut recs = source(10);
    recs.extend((10..13).map(|i| Record::new((1, i), now).at(off(i))));
    w.push_chunk(recs, &off(0), &off(13)).await.unwrap();
    let report = w.flush().await.unwrap().unwrap();
    assert_eq!((report.records, report.expired), (13, 10));
    assert_eq!(report.rows, 1, "only the recent records' row");
    assert_eq!(mem.rows().len(), 1);
}

#[tokio::test]
async fn a_batch_of_only_dropped_records_still_commits_its_range_at_max_age() {
    let mem = MemoryStore::new();
    let flush = FlushPolicy {
        max_keys: 1_000,
        max_age: Duration::from_millis(50),
    };
    let (mut w, _) = open(pipeline(), Arc::new(mem.clone()), &mem, flush).await;
    // Chunks whose records were all dropped upstream (before a cut).
    assert!(
        w.push_chunk(Vec::new(), &off(0), &off(10))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!w.should_flush(), "not yet aged");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(w.should_flush(), "aged, though nothing was folded");
    let report = w
        .push_chunk(Vec::new(), &off(10), &off(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.records, report.rows, report.end), (0, 0, off(20)));
    let lane = mem.lane(&LaneId::new("p0")).await.unwrap().unwrap();
    assert_eq!(lane.position, off(20), "the checkpoint moved");
}

/// With dedup, a replay in parts claims the batch as its flush did: an
/// event id repeated in two chunks of one batch is folded once.
#[tokio::test]
async fn a_replay_in_parts_with_dedup_folds_a_repeated_event_once() {
    use futures::StreamExt as _;
    let mem = MemoryStore::new();
    // Ten records, ids e0..e9; record 7 repeats e2 (a second export of it).
    let recs: Vec<Record<(u32, i64)>> = (0..10)
        .map(|i| {
            let mut r = Record::new((0, 1), i * 1000).at(off(i));
            r.event_id = Some(format!("e{}", if i == 7 { 2 } else { i }).into());
            r
        })
        .collect();
    let dedup = Some(murmur_bootstrap::Dedup {
        deduper: Arc::new(mem.clone()),
        ttl: None,
    });
    // The batch's rows fail to land: its intent stays pending.
    let crashing = Arc::new(Crashing {
        inner: mem.clone(),
        budget: AtomicUsize::new(0),
    });
    let (w, _) = open(pipeline(), crashing, &mem, FlushPolicy::default()).await;
    let mut w = w.with_dedup(dedup.clone());
    w.push_chunk(recs[..5].to_vec(), &off(0), &off(5))
        .await
        .unwrap();
    w.push_chunk(recs[5..].to_vec(), &off(5), &off(10))
        .await
        .unwrap();
    assert!(w.flush().await.is_err());

    let (w, resume) = open(
        pipeline(),
        Arc::new(mem.clone()),
        &mem,
        FlushPolicy::default(),
    )
    .await;
    let mut w = w.with_dedup(dedup);
    assert!(matches!(resume, Resume::Pending(_)));
    let parts = futures::stream::iter([
        Ok((off(0), recs[..5].to_vec())),
        Ok((off(5), recs[5..].to_vec())),
    ])
    .boxed();
    let report = w.replay_parts(parts).await.unwrap();
    assert_eq!((report.records, report.duplicates), (10, 1));
    assert_eq!(
        totals(&mem).await["k0"],
        9,
        "nine distinct events of value 1"
    );
}
