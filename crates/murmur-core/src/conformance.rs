//! A reusable conformance suite for [`StateStore`], [`CheckpointStore`],
//! [`Deduper`] and [`AliasStore`] implementations (feature `conformance`).
//!
//! Every store — memory, embedded, DynamoDB — runs the same suite from its
//! own tests, so they all implement one protocol:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let store = MyStore::connect(..).await;
//!     murmur_core::conformance::state_store(&store).await;
//!     murmur_core::conformance::checkpoint_store(&store).await;
//! }
//! ```
//!
//! Each check panics with a message naming what was violated. Checks use
//! fresh, unique entity and lane names, so one store can be shared by many
//! concurrent test runs.

use crate::error::{MonoidError, StoreError};
use crate::handoff::HandoffToken;
use crate::monoid::{Cell, Kind, Max, Min, Monoid, Sum, WriteStrategy, codec};
use crate::record::{LaneId, Position};
use crate::store::{
    AliasStore, BatchIntent, CheckpointStore, Claim, Deduper, RowDelta, RowKey, RunStatus,
    StateStore, WriteBatch,
};
use crate::window::BucketKey;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// A name unique to this process and call, for entities, lanes and runs.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A byte-encoded, fenced (non-idempotent) test monoid: an integer sum kept
/// in versioned bytes. Exercises the read-combine-compare-and-set path
/// independently of any sketch.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSum;

impl Monoid for BytesSum {
    type Input = i64;
    type Value = i64;
    fn kind(&self) -> Kind {
        Kind::Tuple
    }
    fn identity(&self) -> i64 {
        0
    }
    fn insert(&self, acc: &mut i64, input: i64) {
        *acc = acc.wrapping_add(input);
    }
    fn combine_into(&self, acc: &mut i64, other: &i64) -> Result<(), MonoidError> {
        *acc = acc.wrapping_add(*other);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        false
    }
    fn encode(&self, value: &i64) -> Cell {
        let mut out = codec::header(Kind::Tuple, 8);
        out.extend_from_slice(&value.to_le_bytes());
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<i64, MonoidError> {
        let mut r = codec::Reader::new(Kind::Tuple, codec::payload(Kind::Tuple, cell)?);
        let v = r.i64()?;
        r.finish()?;
        Ok(v)
    }
}

/// A byte-encoded idempotent test monoid: bitwise OR of `u64`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesOr;

impl Monoid for BytesOr {
    type Input = u64;
    type Value = u64;
    fn kind(&self) -> Kind {
        Kind::Bloom
    }
    fn identity(&self) -> u64 {
        0
    }
    fn insert(&self, acc: &mut u64, input: u64) {
        *acc |= input;
    }
    fn combine_into(&self, acc: &mut u64, other: &u64) -> Result<(), MonoidError> {
        *acc |= *other;
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn encode(&self, value: &u64) -> Cell {
        let mut out = codec::header(Kind::Bloom, 8);
        out.extend_from_slice(&value.to_le_bytes());
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<u64, MonoidError> {
        let mut r = codec::Reader::new(Kind::Bloom, codec::payload(Kind::Bloom, cell)?);
        let v = r.u64()?;
        r.finish()?;
        Ok(v)
    }
}

fn batch<M: Monoid>(m: &M, lane: &LaneId, seq: u64, rows: &[(&RowKey, M::Value)]) -> WriteBatch {
    WriteBatch {
        lane: lane.clone(),
        seq,
        rows: rows
            .iter()
            .map(|(k, v)| RowDelta {
                key: (*k).clone(),
                delta: m.encode(v),
                expires_at: None,
            })
            .collect(),
    }
}

async fn value_of<S: StateStore + ?Sized, M: Monoid>(store: &S, m: &M, key: &RowKey) -> M::Value {
    match store.get(key).await.expect("get") {
        Some(v) => m.decode(&v.value).expect("stored value decodes"),
        None => m.identity(),
    }
}

async fn apply<S: StateStore + ?Sized, M: Monoid>(
    store: &S,
    m: &M,
    b: &WriteBatch,
) -> crate::ApplyReport {
    store
        .apply(m, b)
        .await
        .unwrap_or_else(|e| panic!("{}: apply lane {} seq {}: {e}", store.name(), b.lane, b.seq))
}

/// Runs every state-store check.
pub async fn state_store<S: StateStore + Clone + 'static>(store: &S) {
    fenced_reapply_is_noop(store).await;
    partial_batch_then_replay(store).await;
    stale_sequence_is_noop(store).await;
    lanes_are_independent(store).await;
    concurrent_lanes(store).await;
    idempotent_kinds_need_no_fence(store).await;
    merge_path(store).await;
    expiry_values(store).await;
    get_many_alignment(store).await;
    bucket_keys_are_distinct(store).await;
    bad_delta_is_an_error(store).await;
}

/// Applying the same `(lane, seq)` twice changes nothing the second time.
pub async fn fenced_reapply_is_noop<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let (a, b) = (
        RowKey::new(unique("a"), BucketKey(5)),
        RowKey::new(unique("b"), BucketKey(5)),
    );
    for m in [&Sum as &dyn SumLike, &BytesSum] {
        let bt = m.batch(&lane, 1, &[(&a, 5), (&b, 7)]);
        let first = store.apply(m.dyn_monoid(), &bt).await.expect("apply");
        assert_eq!(
            first.rows_written,
            2,
            "{}: first apply writes both rows",
            store.name()
        );
        let second = store.apply(m.dyn_monoid(), &bt).await.expect("re-apply");
        assert_eq!(
            second.rows_written,
            0,
            "{}: re-apply of lane {lane} seq 1 wrote rows",
            store.name()
        );
        assert_eq!(
            second.rows_unchanged,
            2,
            "{}: re-apply counts rows as unchanged",
            store.name()
        );
        assert_eq!(
            m.read(store, &a).await,
            5,
            "{}: fenced re-apply changed a",
            store.name()
        );
        assert_eq!(
            m.read(store, &b).await,
            7,
            "{}: fenced re-apply changed b",
            store.name()
        );
        // Next kind uses fresh rows.
        let bt2 = m.batch(&lane, 2, &[(&a, -5), (&b, -7)]);
        apply_dyn(store, m, &bt2).await;
    }
}

/// A batch applied in part (a crash after some rows), then replayed whole,
/// gives exact totals.
pub async fn partial_batch_then_replay<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let keys: Vec<RowKey> = (0..20)
        .map(|i| RowKey::new(unique(&format!("p{i}")), BucketKey(i)))
        .collect();
    let rows: Vec<(&RowKey, i64)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k, i as i64 * 3 + 1))
        .collect();
    for m in [&Sum as &dyn SumLike, &BytesSum] {
        let full = m.batch(&lane, m.seq_base() + 1, &rows);
        let mut prefix = full.clone();
        prefix.rows.truncate(7);
        apply_dyn(store, m, &prefix).await;
        let replay = apply_dyn(store, m, &full).await;
        assert_eq!(
            replay.rows_written,
            13,
            "{}: replay writes only the 13 missing rows",
            store.name()
        );
        let again = m.batch(&lane, m.seq_base() + 2, &rows);
        apply_dyn(store, m, &again).await;
        for (k, v) in &rows {
            assert_eq!(
                m.read(store, k).await,
                2 * v,
                "{}: row {} after partial apply, replay and next batch",
                store.name(),
                k.entity
            );
        }
        // Reset for the next kind.
        let neg: Vec<(&RowKey, i64)> = rows.iter().map(|(k, v)| (*k, -2 * v)).collect();
        apply_dyn(store, m, &m.batch(&lane, m.seq_base() + 3, &neg)).await;
    }
}

/// A batch with a lower sequence number than one already applied to a row on
/// the same lane is a no-op for that row.
pub async fn stale_sequence_is_noop<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let a = RowKey::new(unique("stale"), BucketKey(1));
    apply(store, &Sum, &batch(&Sum, &lane, 3, &[(&a, 10)])).await;
    let r = apply(store, &Sum, &batch(&Sum, &lane, 2, &[(&a, 100)])).await;
    assert_eq!(
        r.rows_written,
        0,
        "{}: seq 2 after seq 3 must not write",
        store.name()
    );
    assert_eq!(
        value_of(store, &Sum, &a).await,
        10,
        "{}: stale seq changed the row",
        store.name()
    );
}

/// Fences are per lane: the same seq on two lanes applies twice.
pub async fn lanes_are_independent<S: StateStore + ?Sized>(store: &S) {
    let (l1, l2) = (LaneId::new(unique("lane")), LaneId::new(unique("lane")));
    let a = RowKey::new(unique("shared"), BucketKey(1));
    apply(store, &Sum, &batch(&Sum, &l1, 1, &[(&a, 4)])).await;
    apply(store, &Sum, &batch(&Sum, &l2, 1, &[(&a, 6)])).await;
    apply(store, &Sum, &batch(&Sum, &l1, 1, &[(&a, 4)])).await;
    assert_eq!(
        value_of(store, &Sum, &a).await,
        10,
        "{}: lanes interfere",
        store.name()
    );
}

/// Eight lanes write ten batches each to the same hot rows concurrently,
/// every batch applied twice; totals are exact.
pub async fn concurrent_lanes<S: StateStore + Clone + 'static>(store: &S) {
    let hot: Vec<RowKey> = (0..3)
        .map(|i| RowKey::new(unique("hot"), BucketKey(i)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for lane_no in 0..8u64 {
        let (store, hot) = (store.clone(), hot.clone());
        tasks.spawn(async move {
            let lane = LaneId::new(unique(&format!("conc{lane_no}")));
            for seq in 1..=10u64 {
                for m in [&Sum as &dyn SumLike, &BytesSum] {
                    let rows: Vec<(&RowKey, i64)> = hot
                        .iter()
                        .map(|k| (k, (lane_no * 100 + seq) as i64))
                        .collect();
                    let b = m.batch(&lane, seq, &rows);
                    apply_dyn(&store, m, &b).await;
                    apply_dyn(&store, m, &b).await;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("lane task");
    }
    let expected: i64 = (0..8i64)
        .flat_map(|l| (1..=10i64).map(move |s| l * 100 + s))
        .sum();
    for k in &hot {
        assert_eq!(
            value_of(store, &Sum, k).await,
            expected,
            "{}: concurrent Sum on {}",
            store.name(),
            k.entity
        );
    }
    // BytesSum rows share keys with Sum rows in this check only through
    // `SumLike::read`, which reads them under a distinct entity suffix.
    for k in &hot {
        assert_eq!(
            BytesSum.read(store, k).await,
            expected,
            "{}: concurrent merge on {}",
            store.name(),
            k.entity
        );
    }
}

/// Min, Max and idempotent byte monoids are exact under replay without
/// fences: a replayed or reordered batch cannot change them.
pub async fn idempotent_kinds_need_no_fence<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let (lo, hi, bits) = (
        RowKey::new(unique("min"), BucketKey(1)),
        RowKey::new(unique("max"), BucketKey(1)),
        RowKey::new(unique("or"), BucketKey(1)),
    );
    for seq in [1, 1, 2, 1] {
        let v = 10 * seq as i64;
        apply(store, &Min, &batch(&Min, &lane, seq, &[(&lo, v)])).await;
        apply(store, &Max, &batch(&Max, &lane, seq, &[(&hi, v)])).await;
        apply(
            store,
            &BytesOr,
            &batch(&BytesOr, &lane, seq, &[(&bits, 1 << seq)]),
        )
        .await;
    }
    let other = LaneId::new(unique("lane"));
    apply(store, &Min, &batch(&Min, &other, 1, &[(&lo, 3)])).await;
    apply(store, &Max, &batch(&Max, &other, 1, &[(&hi, 3)])).await;
    assert_eq!(value_of(store, &Min, &lo).await, 3, "{}: Min", store.name());
    assert_eq!(
        value_of(store, &Max, &hi).await,
        20,
        "{}: Max",
        store.name()
    );
    assert_eq!(
        value_of(store, &BytesOr, &bits).await,
        0b110,
        "{}: idempotent merge",
        store.name()
    );
    assert_eq!(
        Monoid::write_strategy(&Min),
        WriteStrategy::IntMin,
        "Min is written as a conditional integer SET"
    );
}

/// The read-combine-write path for byte-encoded values across many batches.
pub async fn merge_path<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let k = RowKey::new(unique("merge"), BucketKey(-3));
    for seq in 1..=5 {
        apply(
            store,
            &BytesSum,
            &batch(&BytesSum, &lane, seq, &[(&k, seq as i64)]),
        )
        .await;
    }
    apply(store, &BytesSum, &batch(&BytesSum, &lane, 5, &[(&k, 1000)])).await;
    assert_eq!(
        value_of(store, &BytesSum, &k).await,
        15,
        "{}: merge path",
        store.name()
    );
}

/// Expiry is stored with the row and read back; merging keeps the later
/// expiry.
pub async fn expiry_values<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let (a, b) = (
        RowKey::new(unique("ttl"), BucketKey(9)),
        RowKey::new(unique("nottl"), BucketKey(9)),
    );
    let mut bt = batch(&Sum, &lane, 1, &[(&a, 1), (&b, 1)]);
    bt.rows[0].expires_at = Some(1_778_889_600);
    apply(store, &Sum, &bt).await;
    let got = store
        .get_many(&[a.clone(), b.clone()])
        .await
        .expect("get_many");
    assert_eq!(
        got[0].as_ref().map(|v| v.expires_at),
        Some(Some(1_778_889_600)),
        "{}: ttl stored",
        store.name()
    );
    assert_eq!(
        got[1].as_ref().map(|v| v.expires_at),
        Some(None),
        "{}: no ttl",
        store.name()
    );
    let mut bt2 = batch(&BytesSum, &lane, 2, &[(&a, 0)]);
    bt2.rows[0].key = RowKey::new(format!("{}-bytes", a.entity), a.bucket);
    bt2.rows[0].expires_at = Some(100);
    apply(store, &BytesSum, &bt2).await;
    bt2.seq = 3;
    bt2.rows[0].expires_at = Some(200);
    apply(store, &BytesSum, &bt2).await;
    let got = store
        .get(&bt2.rows[0].key)
        .await
        .expect("get")
        .expect("row exists");
    assert_eq!(
        got.expires_at,
        Some(200),
        "{}: later expiry kept",
        store.name()
    );
}

/// `get_many` aligns results with keys (including more than 100 keys,
/// repeated keys and missing rows).
pub async fn get_many_alignment<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let base = unique("many");
    let keys: Vec<RowKey> = (0..250)
        .map(|i| RowKey::new(format!("{base}-{i}"), BucketKey(i % 7)))
        .collect();
    let present: Vec<(&RowKey, i64)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, k)| (k, i as i64))
        .collect();
    apply(store, &Sum, &batch(&Sum, &lane, 1, &present)).await;
    let mut query = keys.clone();
    query.push(keys[1].clone());
    query.insert(0, keys[2].clone());
    let got = store.get_many(&query).await.expect("get_many");
    assert_eq!(
        got.len(),
        query.len(),
        "{}: one result per key",
        store.name()
    );
    for (k, v) in query.iter().zip(&got) {
        let i: usize = k.entity.rsplit('-').next().unwrap().parse().unwrap();
        let expect = (!i.is_multiple_of(3)).then_some(Cell::Int(i as i64));
        assert_eq!(
            v.as_ref().map(|v| v.value.clone()),
            expect,
            "{}: get_many result for {}",
            store.name(),
            k.entity
        );
    }
    assert!(
        store
            .get_many(&[])
            .await
            .expect("empty get_many")
            .is_empty()
    );
}

/// The all-time bucket, negative and positive buckets are distinct rows.
pub async fn bucket_keys_are_distinct<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let e = unique("buckets");
    let keys: Vec<RowKey> = [
        BucketKey::ALL_TIME,
        BucketKey(-1),
        BucketKey(1),
        BucketKey(i64::MAX / 1000),
    ]
    .into_iter()
    .map(|b| RowKey::new(e.as_str(), b))
    .collect();
    let rows: Vec<(&RowKey, i64)> = keys.iter().zip([1, 2, 3, 4]).collect();
    apply(store, &Sum, &batch(&Sum, &lane, 1, &rows)).await;
    for (k, v) in rows {
        assert_eq!(
            value_of(store, &Sum, k).await,
            v,
            "{}: bucket {}",
            store.name(),
            k.bucket.0
        );
    }
}

/// A delta that does not decode as the monoid is an error naming the row.
pub async fn bad_delta_is_an_error<S: StateStore + ?Sized>(store: &S) {
    let lane = LaneId::new(unique("lane"));
    let k = RowKey::new(unique("garbage"), BucketKey(1));
    let bt = WriteBatch {
        lane,
        seq: 1,
        rows: vec![RowDelta {
            key: k.clone(),
            delta: Cell::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            expires_at: None,
        }],
    };
    let err = store
        .apply(&BytesSum, &bt)
        .await
        .expect_err("garbage delta must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&*k.entity),
        "{}: error names the row: {msg}",
        store.name()
    );
    assert!(
        store.get(&k).await.expect("get").is_none(),
        "{}: nothing written",
        store.name()
    );
}

/// Runs every checkpoint-store check.
pub async fn checkpoint_store<C: CheckpointStore + ?Sized>(cp: &C) {
    lane_protocol(cp).await;
    lanes_by_prefix(cp).await;
    run_records(cp).await;
}

/// Lane initialisation, intents and commits follow the protocol.
pub async fn lane_protocol<C: CheckpointStore + ?Sized>(cp: &C) {
    let lane = LaneId::new(unique("cp"));
    let n = cp.name().to_owned();
    assert!(
        cp.lane(&lane).await.expect("lane").is_none(),
        "{n}: unknown lane is None"
    );
    let intent = |seq: u64, s: i64, e: i64| BatchIntent {
        lane: lane.clone(),
        seq,
        start: Position::Offset { offset: s },
        end: Position::Offset { offset: e },
        bad_records: 0,
    };
    assert!(
        cp.begin_batch(&intent(1, 0, 10)).await.is_err(),
        "{n}: begin on an uninitialised lane"
    );
    let st = cp
        .init_lane(&lane, &Position::Offset { offset: 0 })
        .await
        .expect("init");
    assert_eq!(
        (st.committed_seq, st.position.clone(), st.pending.clone()),
        (0, Position::Offset { offset: 0 }, None)
    );
    let again = cp
        .init_lane(&lane, &Position::Offset { offset: 99 })
        .await
        .expect("init again");
    assert_eq!(
        again.position,
        Position::Offset { offset: 0 },
        "{n}: init_lane keeps the first start"
    );

    assert!(
        cp.begin_batch(&intent(2, 0, 10)).await.is_err(),
        "{n}: seq 2 before seq 1"
    );
    cp.begin_batch(&intent(1, 0, 10)).await.expect("begin 1");
    cp.begin_batch(&intent(1, 0, 10))
        .await
        .expect("re-begin the same intent");
    let pending = cp.lane(&lane).await.expect("lane").expect("exists");
    assert_eq!(
        pending.pending,
        Some(intent(1, 0, 10)),
        "{n}: intent is stored"
    );
    assert!(
        cp.begin_batch(&intent(1, 0, 11)).await.is_err(),
        "{n}: a different intent while one is pending"
    );
    assert!(
        cp.begin_batch(&intent(2, 10, 20)).await.is_err(),
        "{n}: next intent while one is pending"
    );
    assert!(
        cp.commit_batch(&lane, 2).await.is_err(),
        "{n}: commit of a batch that is not pending"
    );
    let st = cp.commit_batch(&lane, 1).await.expect("commit 1");
    assert_eq!(
        (st.committed_seq, st.position.clone(), st.pending.clone()),
        (1, Position::Offset { offset: 10 }, None)
    );
    cp.commit_batch(&lane, 1)
        .await
        .expect("re-commit is a no-op");
    cp.begin_batch(&intent(2, 10, 20)).await.expect("begin 2");
    let st = cp.commit_batch(&lane, 2).await.expect("commit 2");
    assert_eq!(
        (st.committed_seq, st.position),
        (2, Position::Offset { offset: 20 }),
        "{n}: lane advanced"
    );
    let seq_pos = Position::Sequence {
        sequence: "49590338271490256608559692538361571095921575989136588898".into(),
    };
    let kin = LaneId::new(unique("cp-kinesis"));
    cp.init_lane(&kin, &seq_pos)
        .await
        .expect("init kinesis lane");
    assert_eq!(
        cp.lane(&kin).await.expect("lane").expect("exists").position,
        seq_pos,
        "{n}: 56-digit sequence kept"
    );
}

/// `lanes(prefix)` lists exactly the lanes with that prefix, sorted.
pub async fn lanes_by_prefix<C: CheckpointStore + ?Sized>(cp: &C) {
    let prefix = unique("pfx");
    for i in [3, 1, 2] {
        cp.init_lane(&LaneId::new(format!("{prefix}:{i}")), &Position::Beginning)
            .await
            .expect("init");
    }
    cp.init_lane(&LaneId::new(format!("{prefix}x:9")), &Position::Beginning)
        .await
        .expect("init");
    let ids: Vec<String> = cp
        .lanes(&format!("{prefix}:"))
        .await
        .expect("lanes")
        .into_iter()
        .map(|l| l.lane.to_string())
        .collect();
    assert_eq!(
        ids,
        vec![
            format!("{prefix}:1"),
            format!("{prefix}:2"),
            format!("{prefix}:3")
        ],
        "{}: lanes by prefix",
        cp.name()
    );
}

/// Run records: begin is idempotent and keeps the first plan and token;
/// completion is atomic, once, and only with the run's token.
pub async fn run_records<C: CheckpointStore + ?Sized>(cp: &C) {
    let n = cp.name().to_owned();
    let run = unique("run");
    assert!(cp.run(&run).await.expect("run").is_none());
    let token = HandoffToken::Kafka {
        topic: "events".into(),
        offsets: BTreeMap::from([(0, 42), (1, 17), (2, 0)]),
    };
    assert!(
        matches!(
            cp.complete_run(&run, &token).await,
            Err(StoreError::Run { .. })
        ),
        "{n}: completing a run that was never begun"
    );
    let r1 = cp
        .begin_run(&run, "plan-a", &token)
        .await
        .expect("begin_run");
    assert_eq!(
        (r1.status, r1.token.clone()),
        (RunStatus::Running, Some(token.clone())),
        "{n}: the token is kept from the run's beginning"
    );
    assert_eq!(r1.plan.as_deref(), Some("plan-a"), "{n}: the plan is kept");
    let later = HandoffToken::EventTimeCut { at_ms: 5 };
    let r2 = cp
        .begin_run(&run, "plan-b", &later)
        .await
        .expect("begin_run again");
    assert_eq!(
        r1, r2,
        "{n}: begin_run is idempotent and keeps the first plan and token"
    );
    let err = cp
        .complete_run(&run, &later)
        .await
        .expect_err("completing with another token than the run began with");
    assert!(
        err.to_string()
            .contains("begun with a different handoff token"),
        "{n}: {err}"
    );
    let done = cp.complete_run(&run, &token).await.expect("complete");
    assert_eq!(
        (done.status, done.token.clone()),
        (RunStatus::Completed, Some(token.clone()))
    );
    assert!(done.completed_at_ms.is_some());
    let read = cp.run(&run).await.expect("run").expect("exists");
    assert_eq!(read, done, "{n}: completion and token read back together");
    cp.complete_run(&run, &token)
        .await
        .expect("completing again with the same token");
    let other = HandoffToken::EventTimeCut {
        at_ms: 1_778_284_800_000,
    };
    let err = cp
        .complete_run(&run, &other)
        .await
        .expect_err("a different token is refused");
    assert!(
        err.to_string().contains(&run),
        "{n}: error names the run: {err}"
    );
    assert_eq!(
        cp.begin_run(&run, "plan-c", &HandoffToken::None)
            .await
            .expect("begin after completion")
            .status,
        RunStatus::Completed,
        "{n}: a completed run stays completed"
    );
}

/// Rows, lane intents and run records survive closing and reopening the
/// store. `open` is called twice and must open the same underlying storage.
pub async fn durability<S, C, F, Fut>(open: F)
where
    S: StateStore,
    C: CheckpointStore,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, C)>,
{
    let lane = LaneId::new(unique("durable"));
    let k = RowKey::new(unique("durable"), BucketKey(3));
    let run = unique("run");
    let intent = BatchIntent {
        lane: lane.clone(),
        seq: 2,
        start: Position::Offset { offset: 5 },
        end: Position::Offset { offset: 9 },
        bad_records: 0,
    };
    {
        let (s, c) = open().await;
        c.init_lane(&lane, &Position::Offset { offset: 0 })
            .await
            .expect("init");
        c.begin_batch(&BatchIntent {
            seq: 1,
            end: Position::Offset { offset: 5 },
            start: Position::Offset { offset: 0 },
            lane: lane.clone(),
            bad_records: 0,
        })
        .await
        .expect("begin 1");
        apply(&s, &Sum, &batch(&Sum, &lane, 1, &[(&k, 7)])).await;
        c.commit_batch(&lane, 1).await.expect("commit 1");
        c.begin_batch(&intent).await.expect("begin 2");
        c.begin_run(&run, "plan", &HandoffToken::None)
            .await
            .expect("begin run");
        c.complete_run(&run, &HandoffToken::None)
            .await
            .expect("complete run");
    }
    let (s, c) = open().await;
    assert_eq!(
        value_of(&s, &Sum, &k).await,
        7,
        "{}: row survives reopen",
        s.name()
    );
    let st = c
        .lane(&lane)
        .await
        .expect("lane")
        .expect("lane survives reopen");
    assert_eq!(
        (st.committed_seq, st.pending),
        (1, Some(intent)),
        "{}: pending intent survives reopen",
        c.name()
    );
    assert_eq!(
        c.run(&run)
            .await
            .expect("run")
            .expect("run survives")
            .status,
        RunStatus::Completed
    );
    // The fence survives too: replaying batch 1 is still a no-op.
    apply(&s, &Sum, &batch(&Sum, &lane, 1, &[(&k, 7)])).await;
    assert_eq!(
        value_of(&s, &Sum, &k).await,
        7,
        "{}: fence survives reopen",
        s.name()
    );
}

/// Runs every deduper check.
pub async fn deduper<D: Deduper + ?Sized>(d: &D) {
    let (l1, l2) = (LaneId::new(unique("dedup")), LaneId::new(unique("dedup")));
    let base = unique("evt");
    let ids: Vec<String> = (0..5).map(|i| format!("{base}-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    use Claim::{Duplicate as D, Owned as O};
    assert_eq!(
        d.claim(&l1, 1, &refs[..3], None).await.expect("claim"),
        vec![O, O, O],
        "first claims"
    );
    assert_eq!(
        d.claim(&l1, 1, &refs[..3], None).await.expect("claim"),
        vec![O, O, O],
        "replay re-claims its own events"
    );
    assert_eq!(
        d.claim(&l1, 2, &refs[1..4], None).await.expect("claim"),
        vec![D, D, O],
        "a later batch of the same lane"
    );
    assert_eq!(
        d.claim(&l2, 1, &refs, None).await.expect("claim"),
        vec![D, D, D, D, O],
        "another lane"
    );
    let repeated = [refs[0], "x", "x"].map(|s| {
        if s == "x" {
            format!("{base}-rep")
        } else {
            s.to_owned()
        }
    });
    let repeated: Vec<&str> = repeated.iter().map(String::as_str).collect();
    assert_eq!(
        d.claim(&l2, 2, &repeated, Some(4_102_444_800))
            .await
            .expect("claim"),
        vec![D, O, D],
        "repeats within one call"
    );
}

/// Helper trait so checks can run the same steps with [`Sum`] (integer
/// path) and [`BytesSum`] (merge path).
trait SumLike: Sync {
    fn dyn_monoid(&self) -> &dyn crate::DynMonoid;
    fn batch(&self, lane: &LaneId, seq: u64, rows: &[(&RowKey, i64)]) -> WriteBatch;
    fn decode(&self, cell: &Cell) -> i64;
    /// Merge-path rows live under `<entity>-bytes` so both kinds can share
    /// one key list.
    fn suffix(&self) -> &'static str;
    fn seq_base(&self) -> u64;
}

impl SumLike for Sum {
    fn dyn_monoid(&self) -> &dyn crate::DynMonoid {
        self
    }
    fn batch(&self, lane: &LaneId, seq: u64, rows: &[(&RowKey, i64)]) -> WriteBatch {
        batch(self, lane, seq, rows)
    }
    fn decode(&self, cell: &Cell) -> i64 {
        Monoid::decode(self, cell).expect("decode")
    }
    fn suffix(&self) -> &'static str {
        ""
    }
    fn seq_base(&self) -> u64 {
        0
    }
}

impl SumLike for BytesSum {
    fn dyn_monoid(&self) -> &dyn crate::DynMonoid {
        self
    }
    fn batch(&self, lane: &LaneId, seq: u64, rows: &[(&RowKey, i64)]) -> WriteBatch {
        let mut b = batch(self, lane, seq, rows);
        for r in &mut b.rows {
            r.key.entity = format!("{}-bytes", r.key.entity).into();
        }
        b
    }
    fn decode(&self, cell: &Cell) -> i64 {
        Monoid::decode(self, cell).expect("decode")
    }
    fn suffix(&self) -> &'static str {
        "-bytes"
    }
    fn seq_base(&self) -> u64 {
        10
    }
}

impl dyn SumLike + '_ {
    async fn read<S: StateStore + ?Sized>(&self, store: &S, key: &RowKey) -> i64 {
        let key = RowKey::new(format!("{}{}", key.entity, self.suffix()), key.bucket);
        match store.get(&key).await.expect("get") {
            Some(v) => self.decode(&v.value),
            None => 0,
        }
    }
}

impl BytesSum {
    async fn read<S: StateStore + ?Sized>(&self, store: &S, key: &RowKey) -> i64 {
        (self as &dyn SumLike).read(store, key).await
    }
}

async fn apply_dyn<S: StateStore + ?Sized>(
    store: &S,
    m: &dyn SumLike,
    b: &WriteBatch,
) -> crate::ApplyReport {
    store
        .apply(m.dyn_monoid(), b)
        .await
        .unwrap_or_else(|e| panic!("{}: apply lane {} seq {}: {e}", store.name(), b.lane, b.seq))
}

/// [`AliasStore`]: no version before the first swap; swaps only move
/// forward (an equal or older version is [`StoreError::StaleSwap`], and the
/// active version stays); aliases are independent; concurrent swaps to
/// different versions end at the newest, each refused one reporting it.
pub async fn alias_store<A: AliasStore + ?Sized>(a: &A) {
    let (alias, other) = (unique("alias"), unique("alias"));
    assert_eq!(a.active(&alias).await.expect("active"), None, "no swap yet");
    a.swap(&alias, 1).await.expect("first swap");
    assert_eq!(a.active(&alias).await.expect("active"), Some(1));
    for stale in [1, 0] {
        match a.swap(&alias, stale).await {
            Err(StoreError::StaleSwap {
                active, requested, ..
            }) => assert_eq!((active, requested), (1, stale), "stale swap report"),
            other => panic!("swap to {stale} over 1 must be refused as stale, got {other:?}"),
        }
    }
    assert_eq!(
        a.active(&alias).await.expect("active"),
        Some(1),
        "refusal changes nothing"
    );
    a.swap(&alias, 3).await.expect("forward swap");
    assert_eq!(a.active(&alias).await.expect("active"), Some(3));
    assert_eq!(
        a.active(&other).await.expect("active"),
        None,
        "aliases are independent"
    );
    a.swap(&other, 2).await.expect("other alias");
    assert_eq!(a.active(&alias).await.expect("active"), Some(3));

    // Racing swaps: 4..=9 at once; the newest wins, whatever the order.
    let race = unique("alias");
    let (r4, r5, r6, r7, r8, r9) = tokio::join!(
        a.swap(&race, 4),
        a.swap(&race, 5),
        a.swap(&race, 6),
        a.swap(&race, 7),
        a.swap(&race, 8),
        a.swap(&race, 9)
    );
    let results = [r4, r5, r6, r7, r8, r9];
    assert_eq!(
        a.active(&race).await.expect("active"),
        Some(9),
        "the newest wins"
    );
    for (v, r) in (4..=9).zip(results) {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::StaleSwap { active, .. } if active >= v),
                "swap to {v}: {e}"
            );
        }
    }
}
