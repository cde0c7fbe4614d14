//! Fault injection through the HTTP proxy: throttling and 500s answered
//! without forwarding, writes answered with a 500 *after* moto applied them,
//! and BatchGetItem answered with every key unprocessed. Results stay exact
//! and every injected fault is counted as a retry.

use crate::common::{config, moto, unique};
use crate::proxy::Faults;
use murmur_core::monoid::{HyperLogLog, Min, Set, Sum, TopK};
use murmur_core::{
    BucketKey, LaneId, MemoryStore, Monoid, RowDelta, RowKey, StateStore, WriteBatch,
};
use murmur_state_ddb::{DynamoDbCheckpointStore, DynamoDbDeduper, DynamoDbStore, Metrics};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The core conformance suites pass unchanged while 20% of data-plane
/// requests are answered with throttling errors or 500s; each such answer is
/// exactly one counted retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_passes_under_throttling_and_500s() {
    let Some(moto) = moto("conformance_passes_under_throttling_and_500s").await else {
        return;
    };
    let faults = Faults {
        throttle: 0.10,
        server_error: 0.10,
        ..Faults::default()
    };
    let proxy = moto.fault_proxy(faults, 7).await;
    let client = moto.client_via(&proxy.url);
    let metrics = Arc::new(Metrics::new());
    let store = DynamoDbStore::new(&client, config(&moto.state_table("f-state").await))
        .with_metrics(metrics.clone());
    let cp = DynamoDbCheckpointStore::new(&client, config(&moto.checkpoint_table("f-cp").await))
        .with_metrics(metrics.clone());
    let dedup = DynamoDbDeduper::new(&client, config(&moto.dedup_table("f-dedup").await))
        .with_metrics(metrics.clone());

    murmur_core::conformance::state_store(&store).await;
    murmur_core::conformance::checkpoint_store(&cp).await;
    murmur_core::conformance::deduper(&dedup).await;

    let m = metrics.snapshot();
    let c = proxy.counts();
    eprintln!("proxy: {c:?}\nmetrics: {m:?}");
    assert!(
        c.throttled.load(Relaxed) > 50 && c.server_errors.load(Relaxed) > 50,
        "faults were injected"
    );
    assert_eq!(
        m.throttled,
        c.throttled.load(Relaxed),
        "every throttle seen and counted"
    );
    assert_eq!(
        m.transient_errors,
        c.server_errors.load(Relaxed),
        "every 500 seen and counted"
    );
    assert_eq!(
        m.retries,
        c.pre_forward_faults() + m.cas_conflicts,
        "retries = injected faults + compare-and-set conflicts"
    );
    assert_eq!(
        m.requests,
        c.forwarded.load(Relaxed) + c.pre_forward_faults(),
        "every attempt counted once"
    );
}

fn batches<M: Monoid>(
    m: &M,
    rng: &mut StdRng,
    keys: &[RowKey],
    input: &dyn Fn(&mut StdRng) -> M::Input,
) -> Vec<WriteBatch> {
    let lanes: Vec<LaneId> = (0..3)
        .map(|i| LaneId::new(unique(&format!("fl{i}"))))
        .collect();
    let mut out = Vec::new();
    for seq in 1..=4u64 {
        for lane in &lanes {
            let rows = keys
                .iter()
                .filter_map(|k| {
                    if !rng.random_bool(0.7) {
                        return None;
                    }
                    let mut acc = m.identity();
                    for _ in 0..rng.random_range(1..=6) {
                        m.insert(&mut acc, input(rng));
                    }
                    Some(RowDelta {
                        key: k.clone(),
                        delta: m.encode(&acc),
                        expires_at: Some(1_900_000_000),
                    })
                })
                .collect();
            out.push(WriteBatch {
                lane: lane.clone(),
                seq,
                rows,
            });
        }
    }
    out
}

async fn exact_under_faults<M: Monoid>(
    store: &DynamoDbStore,
    m: M,
    seed: u64,
    input: &dyn Fn(&mut StdRng) -> M::Input,
) {
    let mem = MemoryStore::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let entity = unique(&format!("f-{:?}", Monoid::kind(&m)));
    let keys: Vec<RowKey> = (0..20)
        .map(|i| RowKey::new(format!("{entity}-{}", i % 5), BucketKey(i / 5)))
        .collect();
    for b in batches(&m, &mut rng, &keys, input) {
        mem.apply(&m, &b).await.unwrap();
        store.apply(&m, &b).await.expect("apply through faults");
        // And every batch replayed, as after a crash before commit.
        store.apply(&m, &b).await.expect("replay through faults");
    }
    let want = mem.get_many(&keys).await.unwrap();
    let got = store.get_many(&keys).await.unwrap();
    for (k, (w, g)) in keys.iter().zip(want.iter().zip(&got)) {
        assert_eq!(
            g,
            w,
            "{:?}: row {}/{} differs from MemoryStore",
            Monoid::kind(&m),
            k.entity,
            k.bucket.0
        );
    }
}

/// The hard real-world case: the service applied a write, then the client
/// got a 500 and retried it. Fences (fenced kinds), the version condition
/// (merge path) and idempotence make the retry a no-op: values stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_retried_after_they_landed_stay_exact() {
    let Some(moto) = moto("writes_retried_after_they_landed_stay_exact").await else {
        return;
    };
    let faults = Faults {
        throttle: 0.05,
        server_error: 0.05,
        forward_then_500: 0.25,
        ..Faults::default()
    };
    let proxy = moto.fault_proxy(faults, 99).await;
    let client = moto.client_via(&proxy.url);
    let store = DynamoDbStore::new(&client, config(&moto.state_table("f2").await));
    let word = |r: &mut StdRng| format!("w{}", r.random_range(0..50));
    exact_under_faults(&store, Sum, 1, &|r| r.random_range(-100..100i64)).await;
    exact_under_faults(&store, Min, 2, &|r| r.random_range(-100..100i64)).await;
    exact_under_faults(&store, TopK::new(3, 16).unwrap(), 3, &word).await;
    exact_under_faults(&store, HyperLogLog::new(9, 0).unwrap(), 4, &word).await;
    exact_under_faults(&store, Set, 5, &word).await;

    // Checkpoints and claims: a conditional put that landed before its 500
    // is recognised on retry (same intent / same owner), so the protocol
    // checks pass unchanged too.
    let cp = DynamoDbCheckpointStore::new(&client, config(&moto.checkpoint_table("f2-cp").await));
    murmur_core::conformance::checkpoint_store(&cp).await;
    let dedup = DynamoDbDeduper::new(&client, config(&moto.dedup_table("f2-dedup").await));
    murmur_core::conformance::deduper(&dedup).await;

    let c = proxy.counts();
    let m = store.metrics().snapshot();
    eprintln!("proxy: {c:?}\nstore metrics: {m:?}");
    assert!(
        c.forwarded_then_500.load(Relaxed) > 50,
        "writes were answered 500 after landing"
    );
    assert!(
        m.retries >= c.forwarded_then_500.load(Relaxed) / 2,
        "those writes were retried"
    );
}

/// An alias swap that landed but was answered 500 is retried, refused by
/// its condition, and recognised as done (the requested version is
/// active), not reported as a stale swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_swaps_that_landed_before_a_500_succeed() {
    use murmur_core::AliasStore as _;
    let Some(moto) = moto("alias_swaps_that_landed_before_a_500_succeed").await else {
        return;
    };
    let faults = Faults {
        forward_then_500: 0.5,
        ..Faults::default()
    };
    let proxy = moto.fault_proxy(faults, 5).await;
    let client = moto.client_via(&proxy.url);
    let table = moto.checkpoint_table("f-alias").await;
    let aliases = murmur_state_ddb::DynamoDbAliasStore::new(&client, config(&table));
    for a in 0..20 {
        let alias = format!("p{a}");
        for version in [1, 2] {
            aliases
                .swap(&alias, version)
                .await
                .unwrap_or_else(|e| panic!("{alias} to {version}: {e}"));
        }
        assert_eq!(aliases.active(&alias).await.unwrap(), Some(2));
    }
    assert!(
        proxy.counts().forwarded_then_500.load(Relaxed) >= 10,
        "{:?}",
        proxy.counts()
    );
    // A swap that is really stale is still refused.
    let err = aliases.swap("p0", 1).await.unwrap_err();
    assert!(
        matches!(err, murmur_core::StoreError::StaleSwap { active: 2, .. }),
        "{err}"
    );
}

/// `BatchGetItem` answered with every key unprocessed is re-requested with
/// backoff until all keys are read; results stay aligned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_keys_are_retried() {
    let Some(moto) = moto("unprocessed_keys_are_retried").await else {
        return;
    };
    let table = moto.state_table("unproc").await;
    let direct = DynamoDbStore::new(&moto.client, config(&table));
    let entity = unique("u");
    let keys: Vec<RowKey> = (0..250)
        .map(|i| RowKey::new(format!("{entity}-{i}"), BucketKey(1)))
        .collect();
    let rows = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .map(|(i, k)| RowDelta {
            key: k.clone(),
            delta: Sum.encode(&(i as i64)),
            expires_at: None,
        })
        .collect();
    let batch = WriteBatch {
        lane: LaneId::new("unproc"),
        seq: 1,
        rows,
    };
    direct.apply(&Sum, &batch).await.unwrap();
    let want = direct.get_many(&keys).await.unwrap();

    let proxy = moto
        .fault_proxy(
            Faults {
                unprocessed: 0.5,
                ..Faults::default()
            },
            5,
        )
        .await;
    let store = DynamoDbStore::new(&moto.client_via(&proxy.url), config(&table));
    let got = store.get_many(&keys).await.unwrap();
    assert_eq!(got, want);
    let m = store.metrics().snapshot();
    let injected = proxy.counts().unprocessed.load(Relaxed);
    assert!(injected > 0);
    assert_eq!(
        m.read_requests,
        3 + injected,
        "3 chunks of <= 100 keys, plus one request per injected round"
    );
    assert_eq!(m.retries, injected);
    assert!(m.unprocessed_keys >= injected);
}

/// Attempts that time out (the proxy forwards the request, moto applies it,
/// the answer comes after the client's attempt timeout) are retried and
/// counted; values stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_out_attempts_are_retried_and_exact() {
    let Some(moto) = moto("timed_out_attempts_are_retried_and_exact").await else {
        return;
    };
    let faults = Faults {
        stall: 0.08,
        stall_for: std::time::Duration::from_millis(1500),
        ..Faults::default()
    };
    let proxy = moto.fault_proxy(faults, 3).await;
    let table = moto.state_table("stall").await;
    let store = DynamoDbStore::new(
        &moto.client_via(&proxy.url),
        config(&table).with_attempt_timeout(Some(std::time::Duration::from_millis(700))),
    );
    let word = |r: &mut StdRng| format!("w{}", r.random_range(0..50));
    exact_under_faults(&store, Sum, 21, &|r| r.random_range(-100..100i64)).await;
    exact_under_faults(&store, TopK::new(3, 16).unwrap(), 22, &word).await;
    let stalled = proxy.counts().stalled.load(Relaxed);
    let m = store.metrics().snapshot();
    eprintln!("stalled {stalled}; metrics {m:?}");
    assert!(stalled > 10, "answers were held back");
    assert!(
        m.transient_errors >= stalled,
        "every held-back answer timed out and was retried"
    );
}
