//! Aggregator throughput: 10M synthetic events over 100k keys, folded by the
//! Murmur [`Aggregator`] (Sum and HyperLogLog) and, as the floor, by a plain
//! `HashMap<String, i64>` fold of the same events in the same run.
//!
//! `cargo bench -p murmur-core --bench aggregate`; set `MURMUR_BENCH_EVENTS`
//! to scale the event count (default 10,000,000).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use murmur_core::monoid::{HyperLogLog, Sum};
use murmur_core::{Aggregator, FlushPolicy, Pipeline, Record, Window};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 100_000;
const USERS: usize = 1_000_000;

#[derive(Clone)]
struct Event {
    entity: u32,
    user: u32,
}

struct Data {
    entities: Arc<Vec<String>>,
    users: Arc<Vec<String>>,
    records: Vec<Record<Event>>,
}

fn data() -> Data {
    let n: usize = std::env::var("MURMUR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let entities: Vec<String> = (0..KEYS).map(|i| format!("entity-{i:06}")).collect();
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i:07}")).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let records = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = Event {
                entity: (x % KEYS as u64) as u32,
                user: ((x >> 20) % USERS as u64) as u32,
            };
            // All events in one day bucket: 100k distinct rows per batch.
            Record::new(e, 1_778_248_800_000 + (x >> 40) as i64 % 3_600_000)
        })
        .collect();
    Data {
        entities: Arc::new(entities),
        users: Arc::new(users),
        records,
    }
}

fn bench(c: &mut Criterion) {
    let d = data();
    let n = d.records.len() as u64;
    let policy = FlushPolicy {
        max_keys: usize::MAX,
        max_age: Duration::from_secs(3600),
    };
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));

    g.bench_function("baseline_hashmap_string_i64", |b| {
        b.iter(|| {
            let mut m: HashMap<String, i64> = HashMap::new();
            for r in &d.records {
                *m.entry(d.entities[r.value.entity as usize].clone())
                    .or_insert(0) += 1;
            }
            black_box(m.len())
        })
    });

    let ents = Arc::clone(&d.entities);
    let sum = Pipeline::builder("sum", Sum)
        .key_by(move |e: &Event| ents[e.entity as usize].clone())
        .value(|_| 1)
        .window(Window::day())
        .build()
        .expect("pipeline");
    g.bench_function("murmur_sum", |b| {
        b.iter(|| {
            let mut agg = Aggregator::new(sum.clone(), policy);
            for r in &d.records {
                agg.push(r, 0).expect("push");
            }
            black_box(agg.take().len())
        })
    });

    let (ents, users) = (Arc::clone(&d.entities), Arc::clone(&d.users));
    let hll = Pipeline::builder("hll", HyperLogLog::new(12, 0).expect("hll"))
        .key_by(move |e: &Event| ents[e.entity as usize].clone())
        .value(move |e| users[e.user as usize].clone())
        .window(Window::day())
        .build()
        .expect("pipeline");
    g.bench_function("murmur_hll_p12", |b| {
        b.iter(|| {
            let mut agg = Aggregator::new(hll.clone(), policy);
            for r in &d.records {
                agg.push(r, 0).expect("push");
            }
            black_box(agg.take_values().len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
