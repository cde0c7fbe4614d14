//! Pre-aggregation and query folds, checked against direct computation.

use murmur_core::monoid::{Count, Max, Sum};
use murmur_core::store::{StateStore, WriteBatch};
use murmur_core::{
    Aggregator, BucketKey, FlushPolicy, LaneId, MemoryStore, Pipeline, Pushed, Record, RowKey,
    Window, query,
};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone)]
struct View {
    page: u32,
    user: u32,
    ms: i64,
}

const HOUR: i64 = 3_600_000;

fn events(n: u32) -> Vec<Record<View>> {
    // Deterministic pseudo-random stream spanning 48 hours, some before 1970.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = View {
                page: (x % 37) as u32,
                user: ((x >> 8) % 101) as u32,
                ms: ((x >> 16) % (48 * HOUR as u64)) as i64 - 2 * HOUR,
            };
            Record::new(v.clone(), v.ms)
        })
        .collect()
}

fn pipeline() -> Pipeline<View, Sum> {
    Pipeline::builder("views", Sum)
        .key_by_many(|v: &View| vec![format!("page:{}", v.page), format!("user:{}", v.user)])
        .value(|v| i64::from(v.page) + 1)
        .window(Window::hour())
        .build()
        .unwrap()
}

fn truth(evs: &[Record<View>]) -> BTreeMap<(String, i64), i64> {
    let mut t = BTreeMap::new();
    for r in evs {
        let idx = r.event_time_ms.div_euclid(HOUR);
        for k in [
            format!("page:{}", r.value.page),
            format!("user:{}", r.value.user),
        ] {
            *t.entry((k, idx)).or_default() += i64::from(r.value.page) + 1;
        }
    }
    t
}

#[test]
fn aggregator_fold_equals_direct_computation() {
    let evs = events(20_000);
    let mut agg = Aggregator::new(
        pipeline(),
        FlushPolicy {
            max_keys: usize::MAX,
            max_age: Duration::from_secs(3600),
        },
    );
    for r in &evs {
        assert_eq!(agg.push(r, 0).unwrap(), Pushed::Folded);
    }
    let got: BTreeMap<(String, i64), i64> = agg
        .take_values()
        .into_iter()
        .map(|(k, v)| ((k.entity.to_string(), k.bucket.index().unwrap()), v))
        .collect();
    let want = truth(&evs);
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    assert!(
        got.keys().any(|(_, idx)| *idx < 0),
        "stream covers buckets before 1970"
    );
    assert_eq!(agg.stats().events_in, 20_000);
    assert_eq!(agg.stats().deltas_out, want.len() as u64);
    assert!(agg.is_empty());
}

#[test]
fn batches_are_deterministic_and_order_independent() {
    let evs = events(5_000);
    let run = |evs: &[Record<View>]| {
        let mut agg = Aggregator::new(pipeline(), FlushPolicy::default());
        for r in evs {
            agg.push(r, 0).unwrap();
        }
        let mut rows = agg.take();
        rows.sort_by(|x, y| x.key.cmp(&y.key));
        rows
    };
    let a = run(&evs);
    let mut rev = evs.clone();
    rev.reverse();
    let b = run(&rev);
    assert_eq!(
        a, b,
        "same events in another order give the identical batch"
    );
    assert!(
        a.windows(2).all(|w| w[0].key < w[1].key),
        "one delta per row"
    );
}

#[test]
fn flush_on_max_keys_and_max_age() {
    let evs = events(1_000);
    let mut agg = Aggregator::new(
        pipeline(),
        FlushPolicy {
            max_keys: 10,
            max_age: Duration::from_secs(3600),
        },
    );
    let mut pushed = 0;
    while !agg.should_flush() {
        agg.push(&evs[pushed], 0).unwrap();
        pushed += 1;
    }
    assert!(
        agg.len() >= 10 && agg.len() <= 11,
        "flush requested at 10 distinct rows, got {}",
        agg.len()
    );
    assert!(
        pushed < 10,
        "two keys per event reach 10 rows in at most 5..9 events, took {pushed}"
    );
    agg.take();
    assert!(
        !agg.should_flush(),
        "an emptied aggregator has nothing to flush"
    );

    let mut aged = Aggregator::new(
        pipeline(),
        FlushPolicy {
            max_keys: usize::MAX,
            max_age: Duration::from_millis(30),
        },
    );
    aged.push(&evs[0], 0).unwrap();
    assert!(!aged.should_flush(), "young batch");
    std::thread::sleep(Duration::from_millis(40));
    assert!(aged.should_flush(), "batch older than max_age");
}

#[test]
fn events_past_retention_are_dropped_and_counted() {
    let p = Pipeline::builder("ret", Count)
        .key_by(|_: &i64| "e".to_string())
        .value(|_| ())
        .window(Window::hour().with_retention(Duration::from_secs(2 * 3600)))
        .build()
        .unwrap();
    let now = 10 * HOUR + 5;
    let mut agg = Aggregator::new(p, FlushPolicy::default());
    // Bucket 7 ends at 8h; 8h + 2h retention = 10h <= now: expired.
    assert_eq!(
        agg.push(&Record::new(0, 7 * HOUR + 1), now).unwrap(),
        Pushed::Expired
    );
    assert_eq!(
        agg.push(&Record::new(0, 8 * HOUR), now).unwrap(),
        Pushed::Folded
    );
    assert_eq!(
        agg.push(&Record::new(0, 10 * HOUR), now).unwrap(),
        Pushed::Folded
    );
    assert_eq!(agg.stats().expired_dropped, 1);
    let mut rows = agg.take();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(rows.len(), 2);
    // Expiry = bucket end + retention, in seconds, not write time.
    assert_eq!(rows[0].expires_at, Some((9 * HOUR + 2 * HOUR) / 1000));
    assert_eq!(rows[1].expires_at, Some((11 * HOUR + 2 * HOUR) / 1000));
}

#[test]
fn unwindowed_pipelines_write_the_all_time_bucket() {
    let p = Pipeline::builder("max", Max)
        .key_by(|v: &i64| format!("k{}", v.rem_euclid(2)))
        .value(|v| *v)
        .build()
        .unwrap();
    let mut agg = Aggregator::new(p, FlushPolicy::default());
    for v in [5, 8, -3, 11] {
        agg.push(&Record::new(v, v * HOUR), 0).unwrap();
    }
    let mut rows = agg.take_values();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (RowKey::new("k0", BucketKey::ALL_TIME), 8),
            (RowKey::new("k1", BucketKey::ALL_TIME), 11)
        ]
    );
}

#[test]
fn out_of_range_event_time_is_an_error_not_a_panic() {
    let mut agg = Aggregator::new(pipeline(), FlushPolicy::default());
    let bad = Record::new(
        View {
            page: 1,
            user: 1,
            ms: i64::MIN,
        },
        i64::MIN,
    );
    let err = agg.push(&bad, 0).unwrap_err();
    assert!(
        err.to_string().contains("outside the supported range"),
        "{err}"
    );
    // The last accepted time, then one past it in the same hour: the
    // second is still refused (the aggregator remembers the last bucket).
    let at = |ms| {
        Record::new(
            View {
                page: 1,
                user: 1,
                ms,
            },
            ms,
        )
    };
    let last = i64::MAX / 1_000;
    assert_eq!(agg.push(&at(last), 0).unwrap(), Pushed::Folded);
    let err = agg.push(&at(last + 1), 0).unwrap_err();
    assert!(
        err.to_string().contains("outside the supported range"),
        "{err}"
    );
    assert_eq!(agg.push(&at(last - 1), 0).unwrap(), Pushed::Folded);
    assert_eq!(agg.len(), 2, "two keys of one hour bucket");
}

#[test]
fn keys_no_store_can_hold_are_refused_before_anything_is_staged() {
    let p = Pipeline::builder("fan", Sum)
        .key_by_many(|v: &(String, String)| vec![v.0.clone(), v.1.clone()])
        .value(|_| 1)
        .build()
        .unwrap();
    let mut agg = Aggregator::new(p, FlushPolicy::default());
    let push = |agg: &mut Aggregator<(String, String), Sum>, a: &str, b: &str| {
        agg.push(&Record::new((a.to_owned(), b.to_owned()), 0), 0)
    };
    let err = push(&mut agg, "ok", "").unwrap_err();
    assert_eq!(err.to_string(), r#"pipeline fan: entity key "": is empty"#);
    let long = "k".repeat(RowKey::MAX_ENTITY_BYTES + 1);
    let err = push(&mut agg, &long, "ok").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "pipeline fan: entity key {:?}: is 2049 bytes, more than the 2048 a row key holds",
            "k".repeat(64)
        )
    );
    assert!(
        agg.is_empty(),
        "the refused records' other keys were not staged"
    );
    push(&mut agg, "a", &"b".repeat(RowKey::MAX_ENTITY_BYTES)).unwrap();
    assert_eq!(agg.len(), 2);
}

#[test]
fn pipeline_definition_errors() {
    let no_key = Pipeline::<View, Sum>::builder("p", Sum)
        .value(|_| 1)
        .build()
        .unwrap_err();
    assert!(no_key.to_string().contains("no key function"), "{no_key}");
    let no_value = Pipeline::<View, Sum>::builder("p", Sum)
        .key_by(|_| String::new())
        .build()
        .unwrap_err();
    assert!(
        no_value.to_string().contains("no value function"),
        "{no_value}"
    );
    assert!(Window::new(Duration::ZERO).is_err());
}

#[tokio::test]
async fn window_and_range_queries_fold_one_batched_read() {
    let evs = events(20_000);
    let p = pipeline();
    let mut agg = Aggregator::new(p.clone(), FlushPolicy::default());
    for r in &evs {
        agg.push(r, 0).unwrap();
    }
    let store = MemoryStore::new();
    let batch = WriteBatch {
        lane: LaneId::new("q"),
        seq: 1,
        rows: agg.take(),
    };
    store.apply(p.monoid(), &batch).await.unwrap();
    let t = truth(&evs);
    let sum = |e: &str, from: i64, to: i64| -> i64 {
        t.iter()
            .filter(|((k, i), _)| k == e && *i >= from && *i <= to)
            .map(|(_, v)| *v)
            .sum()
    };
    let w = *p.window().unwrap();
    let now = 30 * HOUR + 17;
    // Last 6 buckets including the current one: indexes 25..=30.
    assert_eq!(
        query::window(&store, p.monoid(), &w, "page:3", now, 6)
            .await
            .unwrap(),
        sum("page:3", 25, 30)
    );
    // Inclusive time range [-2h, 5h]: buckets -2..=5.
    assert_eq!(
        query::range(&store, p.monoid(), &w, "user:7", -2 * HOUR, 5 * HOUR)
            .await
            .unwrap(),
        sum("user:7", -2, 5)
    );
    let entities = ["page:1", "page:36", "user:100", "nobody"];
    let many = query::window_many(&store, p.monoid(), &w, &entities, now, 24)
        .await
        .unwrap();
    let want: Vec<i64> = entities.iter().map(|e| sum(e, 7, 30)).collect();
    assert_eq!(many, want);
    let ranged = query::range_many(&store, p.monoid(), &w, &entities, 0, 47 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        ranged,
        entities.iter().map(|e| sum(e, 0, 47)).collect::<Vec<_>>()
    );
    let one = query::get(
        &store,
        p.monoid(),
        &RowKey::new("page:5", BucketKey::from_index(3).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(one, sum("page:5", 3, 3));
    assert_eq!(
        query::window(&store, p.monoid(), &w, "page:3", now, 0)
            .await
            .unwrap(),
        0
    );
    let huge = query::range(
        &store,
        p.monoid(),
        &Window::minute(),
        "page:3",
        0,
        3 * 365 * 24 * HOUR,
    )
    .await;
    assert!(
        matches!(huge, Err(query::QueryError::TooLarge { .. })),
        "a 3-year minute range is refused"
    );
}

/// Batches cut by `max_keys` over 300,000 records (more than a fold stages
/// at once) hold exactly the rows a record-at-a-time fold would: every
/// batch is flushed at `max_keys` rows, `len` agrees with the distinct keys
/// pushed since the last take at every check, and the deltas add up to the
/// direct fold.
#[test]
fn batches_over_many_records_match_a_direct_fold() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let evs: Vec<Record<(String, i64)>> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = ((x >> 24) % (48 * HOUR as u64)) as i64;
            Record::new(
                (format!("entity-{}", x % 40_000), (x >> 50) as i64 % 9 + 1),
                ms,
            )
        })
        .collect();
    let max_keys = 25_000;
    let mut agg = Aggregator::new(
        agg_pipeline(),
        FlushPolicy {
            max_keys,
            max_age: Duration::from_secs(3600),
        },
    );
    let mut want: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut got: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut open = std::collections::HashSet::new();
    let mut batches = 0;
    for (i, r) in evs.iter().enumerate() {
        let key = (r.value.0.clone(), r.event_time_ms.div_euclid(HOUR));
        *want.entry(key.clone()).or_default() += r.value.1;
        open.insert(key);
        agg.push(r, 0).unwrap();
        if i % 9_973 == 0 {
            assert_eq!(agg.len(), open.len(), "distinct rows after record {i}");
        }
        if agg.should_flush() {
            assert_eq!(open.len(), max_keys, "flushed at max_keys, record {i}");
            batches += 1;
            for d in agg.take() {
                let k = (d.key.entity.to_string(), d.key.bucket.index().unwrap());
                *got.entry(k).or_default() += d.delta.as_int().unwrap();
            }
            open.clear();
            assert!(agg.is_empty());
        } else {
            assert!(open.len() < max_keys, "not flushed at {} rows", open.len());
        }
    }
    for d in agg.take() {
        let k = (d.key.entity.to_string(), d.key.bucket.index().unwrap());
        *got.entry(k).or_default() += d.delta.as_int().unwrap();
    }
    assert!(batches >= 10, "{batches} batches");
    assert_eq!(got, want);
    assert_eq!(agg.stats().events_in, 300_000);

    // Never asked: staged records fold every max_keys / 2 records, and one
    // take holds every row.
    let mut agg = Aggregator::new(
        agg_pipeline(),
        FlushPolicy {
            max_keys: 20_000,
            max_age: Duration::from_secs(3600),
        },
    );
    for r in &evs {
        agg.push(r, 0).unwrap();
    }
    let rows = agg.take_values();
    assert_eq!(rows.len(), want.len());
    let got: BTreeMap<(String, i64), i64> = rows
        .into_iter()
        .map(|(k, v)| ((k.entity.to_string(), k.bucket.index().unwrap()), v))
        .collect();
    assert_eq!(got, want);
}

fn agg_pipeline() -> Pipeline<(String, i64), Sum> {
    Pipeline::builder("many", Sum)
        .key_by_str(|e: &(String, i64)| &e.0)
        .value(|e| e.1)
        .window(Window::hour())
        .build()
        .unwrap()
}
