//! Crash test of the embedded store: a writer process is SIGKILLed at random
//! moments, mid-batch included, and recovery — exactly as a runner does it —
//! must end with every row equal to the fold of every batch exactly once.
//!
//! The writer is this test binary itself, re-executed with
//! `MURMUR_KILL_WRITER=<db path>` to run only [`kill_writer_child`].
//!
//! Two pipelines share one file through namespaces: `sums` (fenced `Sum`, two
//! lanes writing the same rows) and `maxes` (idempotent `Max`, one lane).
//! Every batch has [`ROWS`] deterministic rows and is applied in
//! [`CHUNKS`] `apply` calls, so a kill can land after some chunks landed.
//! Set `MURMUR_KILL_SEED` to replay a run's kill timings.

use murmur_core::monoid::{Cell, DynMonoid, Max, Sum};
use murmur_core::store::StoredRow;
use murmur_core::{
    BatchIntent, BucketKey, CheckpointStore, EmbeddedStore, LaneId, LaneState, Position, RowDelta,
    RowKey, StateStore, WriteBatch,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRITER_ENV: &str = "MURMUR_KILL_WRITER";
const LAST_SEQ_ENV: &str = "MURMUR_KILL_LAST_SEQ";
const SEED_ENV: &str = "MURMUR_KILL_SEED";

/// Rows per batch.
const ROWS: usize = 200;
/// `apply` calls per batch.
const CHUNKS: usize = 4;
/// Kill cycles before the final, uninterrupted writer.
const KILLS: usize = 15;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum,
    Max,
}

/// One pipeline: a namespace, its monoid and its lanes.
struct Pipeline {
    namespace: &'static str,
    kind: Kind,
    lanes: &'static [&'static str],
}

const PIPELINES: &[Pipeline] = &[
    Pipeline {
        namespace: "sums",
        kind: Kind::Sum,
        lanes: &["sum:0", "sum:1"],
    },
    Pipeline {
        namespace: "maxes",
        kind: Kind::Max,
        lanes: &["max:0"],
    },
];

impl Pipeline {
    fn monoid(&self) -> &'static dyn DynMonoid {
        match self.kind {
            Kind::Sum => &Sum,
            Kind::Max => &Max,
        }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The deterministic rows of batch `seq` of lane `lane_idx`: distinct keys,
/// 50 entities x 4 buckets shifted by `seq`, so consecutive batches and both
/// sum lanes overlap on rows.
fn batch_rows(p: &Pipeline, lane_idx: usize, seq: u64) -> Vec<RowDelta> {
    (0..ROWS)
        .map(|i| {
            let h =
                mix(seq ^ ((lane_idx as u64) << 40) ^ ((i as u64) << 20) ^ ((p.kind as u64) << 60));
            let v = match p.kind {
                Kind::Sum => (h % 2_000) as i64 - 500,
                Kind::Max => (h % 1_000_000) as i64,
            };
            RowDelta {
                key: RowKey::new(
                    format!("ent-{:02}", i % 50),
                    BucketKey(1 + (i / 50) as i64 + (seq % 5) as i64),
                ),
                delta: Cell::Int(v),
                expires_at: Some(1_000_000 + seq as i64),
            }
        })
        .collect()
}

fn intent(lane: &str, seq: u64) -> BatchIntent {
    let rows = ROWS as i64;
    BatchIntent {
        lane: LaneId::new(lane),
        seq,
        start: Position::Offset {
            offset: (seq as i64 - 1) * rows,
        },
        end: Position::Offset {
            offset: seq as i64 * rows,
        },
        bad_records: 0,
    }
}

/// Applies every chunk of batch `seq` (a replay of the pending batch, or a
/// fresh one after `begin_batch`).
async fn apply_chunks(store: &EmbeddedStore, p: &Pipeline, lane_idx: usize, seq: u64) {
    let rows = batch_rows(p, lane_idx, seq);
    for chunk in rows.chunks(ROWS / CHUNKS) {
        let batch = WriteBatch {
            lane: LaneId::new(p.lanes[lane_idx]),
            seq,
            rows: chunk.to_vec(),
        };
        store.apply(p.monoid(), &batch).await.expect("apply");
    }
}

/// Re-applies a lane's pending batch with its own seq and commits it, as a
/// runner does on restart. Returns the lane's committed seq.
async fn recover_lane(
    store: &EmbeddedStore,
    p: &Pipeline,
    lane_idx: usize,
    state: &LaneState,
) -> u64 {
    let Some(pending) = &state.pending else {
        return state.committed_seq;
    };
    assert_eq!(
        *pending,
        intent(p.lanes[lane_idx], pending.seq),
        "pending intent is the batch's"
    );
    apply_chunks(store, p, lane_idx, pending.seq).await;
    let st = store
        .commit_batch(&state.lane, pending.seq)
        .await
        .expect("commit recovered batch");
    assert!(st.pending.is_none());
    st.committed_seq
}

fn stores(path: &Path) -> Vec<EmbeddedStore> {
    let root = EmbeddedStore::open(path).expect("open store");
    PIPELINES
        .iter()
        .map(|p| root.with_namespace(p.namespace))
        .collect()
}

/// The writer: resume every lane (recovering a pending batch), then run
/// batches round-robin over the lanes up to `last_seq`.
async fn writer(path: &Path, last_seq: u64) {
    let stores = stores(path);
    let mut committed = BTreeMap::new();
    for (p, store) in PIPELINES.iter().zip(&stores) {
        for (i, lane) in p.lanes.iter().enumerate() {
            let state = store
                .init_lane(&LaneId::new(*lane), &Position::Offset { offset: 0 })
                .await
                .expect("init lane");
            committed.insert(*lane, recover_lane(store, p, i, &state).await);
        }
    }
    for seq in 1..=last_seq {
        for (p, store) in PIPELINES.iter().zip(&stores) {
            for (i, lane) in p.lanes.iter().enumerate() {
                if seq <= committed[lane] {
                    continue;
                }
                store
                    .begin_batch(&intent(lane, seq))
                    .await
                    .expect("begin batch");
                apply_chunks(store, p, i, seq).await;
                store
                    .commit_batch(&LaneId::new(*lane), seq)
                    .await
                    .expect("commit batch");
            }
        }
    }
}

/// Not a test on its own: the writer process of
/// [`embedded_store_survives_sigkill_mid_batch`], selected by its env var.
#[tokio::test]
async fn kill_writer_child() {
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let last_seq = std::env::var(LAST_SEQ_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    writer(Path::new(&path), last_seq).await;
}

fn spawn_writer(db: &Path, last_seq: Option<u64>, stderr: &Path) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([
        "--exact",
        "embedded_kill::kill_writer_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(WRITER_ENV, db)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(stderr).expect("stderr file"));
    match last_seq {
        Some(n) => cmd.env(LAST_SEQ_ENV, n.to_string()),
        None => cmd.env_remove(LAST_SEQ_ENV),
    };
    cmd.spawn().expect("spawn writer")
}

/// Expected rows of one pipeline after lanes committed up to `committed`.
fn expected_rows(p: &Pipeline, committed: &[u64]) -> BTreeMap<RowKey, (i64, i64)> {
    let mut rows: BTreeMap<RowKey, (i64, i64)> = BTreeMap::new();
    for (i, &upto) in committed.iter().enumerate() {
        for seq in 1..=upto {
            for d in batch_rows(p, i, seq) {
                let Cell::Int(v) = d.delta else {
                    unreachable!()
                };
                let exp = d.expires_at.unwrap_or_default();
                rows.entry(d.key)
                    .and_modify(|(acc, e)| {
                        *acc = match p.kind {
                            Kind::Sum => acc.wrapping_add(v),
                            Kind::Max => (*acc).max(v),
                        };
                        *e = (*e).max(exp);
                    })
                    .or_insert((v, exp));
            }
        }
    }
    rows
}

fn int(row: &StoredRow) -> i64 {
    match row.value {
        Cell::Int(v) => v,
        Cell::Bytes(_) => panic!("unexpected bytes cell"),
    }
}

#[derive(Debug, Default)]
struct Stats {
    kills: usize,
    /// Kills after which some lane had a pending intent.
    pending: usize,
    /// Kills after which a pending batch had landed some chunks but not all.
    partial: usize,
    /// Kills before the writer changed anything (still starting up).
    idle: usize,
    /// Progress (see [`after_kill`]) when the last writer was started.
    progress: u64,
}

/// Inspects the store right after a kill: classifies it and checks that
/// every row equals the committed batches plus exactly the whole chunks of
/// each pending batch that landed (each `apply` is atomic). Recovers the
/// pending batches when `recover`, else leaves them to the next writer.
/// Returns the highest committed seq.
async fn after_kill(path: &Path, recover: bool, stats: &mut Stats) -> u64 {
    let stores = stores(path);
    let (mut any_pending, mut any_partial) = (false, false);
    let mut max_committed = 0;
    // Every commit, intent and landed chunk the writers made so far.
    let mut progress = 0;
    for (p, store) in PIPELINES.iter().zip(&stores) {
        let mut committed = Vec::new();
        let mut pending = Vec::new();
        for (i, lane) in p.lanes.iter().enumerate() {
            let state = store.lane(&LaneId::new(*lane)).await.expect("lane");
            let Some(state) = state else {
                committed.push(0);
                pending.push(None);
                continue;
            };
            progress +=
                state.committed_seq * (CHUNKS as u64 + 2) + u64::from(state.pending.is_some());
            assert_eq!(
                state.position,
                Position::Offset {
                    offset: state.committed_seq as i64 * ROWS as i64
                }
            );
            if let Some(intent) = &state.pending {
                assert_eq!(intent.seq, state.committed_seq + 1);
                any_pending = true;
            }
            committed.push(state.committed_seq);
            pending.push(state.pending.as_ref().map(|intent| (i, intent.seq)));
            max_committed = max_committed.max(state.committed_seq);
        }
        let expected = expected_rows(p, &committed);
        let stored: BTreeMap<RowKey, StoredRow> =
            store.rows().await.expect("rows").into_iter().collect();
        match p.kind {
            Kind::Sum => {
                // Which rows of each pending batch landed: a whole number of
                // leading chunks, recognised by the lane's fence.
                let mut extra: BTreeMap<RowKey, i64> = BTreeMap::new();
                for &(i, seq) in pending.iter().flatten() {
                    let lane = LaneId::new(p.lanes[i]);
                    let rows = batch_rows(p, i, seq);
                    let landed: Vec<bool> = rows
                        .iter()
                        .map(|d| stored.get(&d.key).and_then(|r| r.fences.get(&lane)) == Some(seq))
                        .collect();
                    let n = landed.iter().filter(|l| **l).count();
                    assert!(
                        landed.iter().take(n).all(|l| *l) && n % (ROWS / CHUNKS) == 0,
                        "lane {lane} batch {seq}: landed rows are not whole leading chunks"
                    );
                    if n > 0 && n < ROWS {
                        any_partial = true;
                    }
                    progress += (n / (ROWS / CHUNKS)) as u64;
                    for d in &rows[..n] {
                        let Cell::Int(v) = d.delta else {
                            unreachable!()
                        };
                        *extra.entry(d.key.clone()).or_default() += v;
                    }
                }
                let keys: Vec<_> = expected.keys().chain(extra.keys()).cloned().collect();
                for key in keys {
                    let want = expected
                        .get(&key)
                        .map_or(0, |e| e.0)
                        .wrapping_add(extra.get(&key).copied().unwrap_or(0));
                    let got = stored.get(&key).map_or(0, int);
                    assert_eq!(got, want, "{}: row {key:?} after a kill", p.namespace);
                }
                let allowed = expected.len() + extra.len();
                assert!(stored.len() <= allowed, "no stray rows");
            }
            Kind::Max => {
                // Unfenced: committed max <= stored <= max including the pending batch.
                let mut upper = expected.clone();
                for &(i, seq) in pending.iter().flatten() {
                    for d in batch_rows(p, i, seq) {
                        let Cell::Int(v) = d.delta else {
                            unreachable!()
                        };
                        upper
                            .entry(d.key)
                            .and_modify(|(m, _)| *m = (*m).max(v))
                            .or_insert((v, 0));
                    }
                }
                for (key, row) in &stored {
                    let hi = upper.get(key).expect("stored max row belongs to a batch").0;
                    assert!(
                        int(row) <= hi,
                        "{}: row {key:?} above every applied delta",
                        p.namespace
                    );
                }
                for (key, (lo, _)) in &expected {
                    assert!(
                        stored.get(key).map(int).is_some_and(|v| v >= *lo),
                        "{}: row {key:?} lost a committed batch",
                        p.namespace
                    );
                }
            }
        }
    }
    stats.kills += 1;
    stats.pending += usize::from(any_pending);
    stats.partial += usize::from(any_partial);
    stats.idle += usize::from(progress == stats.progress);
    stats.progress = progress;
    if recover {
        stats.progress = 0;
        for (p, store) in PIPELINES.iter().zip(&stores) {
            for (i, lane) in p.lanes.iter().enumerate() {
                if let Some(state) = store.lane(&LaneId::new(*lane)).await.expect("lane") {
                    let committed = recover_lane(store, p, i, &state).await;
                    max_committed = max_committed.max(committed);
                    stats.progress += committed * (CHUNKS as u64 + 2);
                }
            }
        }
    }
    max_committed
}

fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[test]
fn embedded_store_survives_sigkill_mid_batch() {
    if std::env::var_os(WRITER_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db: PathBuf = dir.path().join("kill.redb");
    let stderr = dir.path().join("writer.stderr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seed = seed();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut stats = Stats::default();
    let mut max_committed = 0;
    for cycle in 0..KILLS {
        let mut child = spawn_writer(&db, None, &stderr);
        std::thread::sleep(Duration::from_millis(20 + next() % 281));
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "writer exited before the kill ({status}); stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL writer");
        child.wait().expect("reap writer");
        // Even cycles recover in this process; odd ones leave the pending
        // batch to the next writer.
        max_committed = rt.block_on(after_kill(&db, cycle % 2 == 0, &mut stats));
    }

    // Finish a little past where the kills left off, uninterrupted.
    let last_seq = max_committed + 3;
    let mut child = spawn_writer(&db, Some(last_seq), &stderr);
    let status = child.wait().expect("wait for final writer");
    assert!(
        status.success(),
        "final writer failed ({status}); stderr:\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );

    rt.block_on(async {
        let stores = stores(&db);
        let mut rows_checked = 0;
        for (p, store) in PIPELINES.iter().zip(&stores) {
            for lane in p.lanes {
                let st = store.lane(&LaneId::new(*lane)).await.expect("lane").expect("lane exists");
                assert_eq!(st.committed_seq, last_seq, "lane {lane}");
                assert_eq!(st.pending, None, "lane {lane}");
                assert_eq!(st.position, Position::Offset { offset: last_seq as i64 * ROWS as i64 });
            }
            let expected = expected_rows(p, &vec![last_seq; p.lanes.len()]);
            let stored = store.rows().await.expect("rows");
            assert_eq!(stored.len(), expected.len(), "{}: row count", p.namespace);
            for (key, row) in stored {
                let (v, exp) = expected[&key];
                assert_eq!((int(&row), row.expires_at), (v, Some(exp)), "{}: row {key:?}", p.namespace);
                if p.kind == Kind::Sum {
                    assert!(row.fences.iter().all(|(_, f)| f <= last_seq));
                }
                rows_checked += 1;
            }
        }
        println!(
            "embedded kill test: seed {seed}, {} kills ({} with a pending intent, {} with a partly applied batch, {} before the writer changed anything), {last_seq} batches x {} lanes, {rows_checked} rows exact, {:.1?}",
            stats.kills,
            stats.pending,
            stats.partial,
            stats.idle,
            PIPELINES.iter().map(|p| p.lanes.len()).sum::<usize>(),
            started.elapsed()
        );
    });
    // Each writer needs tens of ms to start and every batch is 6 durable
    // commits per lane, so expect a few batches per kill at most.
    assert!(
        last_seq >= 6,
        "the writers made too little progress ({last_seq} batches) to mean anything"
    );
    assert!(
        stats.pending >= 1,
        "no kill landed inside a batch: {stats:?} (seed {seed})"
    );
}
