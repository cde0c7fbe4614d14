//! Raw rdkafka consume rate vs the Kafka source's rate of decoded records,
//! on the same topic of librdkafka's in-process mock cluster, in one run.
//!
//! ```text
//! cargo bench -p murmur-source-live --bench kafka_throughput [-- <messages, default 400000>]
//! ```
//!
//! The mock broker keeps at most 5 MiB per partition, which bounds the
//! message count (about 700,000 over the 16 partitions).
//!
//! *raw*: a `BaseConsumer` assigned to every partition from offset 0,
//! polling and touching each payload (the limit: nothing is decoded).
//! *source*: [`KafkaSource`] delivering decoded `CountEvent` records in
//! chunks (JSON decoding on the blocking pool). Rates are events per wall
//! second and per CPU-core second (on-CPU time of all the process's
//! threads, which includes the in-process mock broker's in both runs).

use murmur_core::Position;
use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, LiveSource, SourceEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";
const ROUNDS: usize = 5;
const PARTITIONS: i32 = 16;

/// On-CPU time of every live thread of the process, in seconds, from
/// `/proc/self/task/*/schedstat` (Linux; nanosecond resolution). Measured
/// runs keep their threads alive until the second reading.
fn cpu_seconds() -> f64 {
    let ns: u64 = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|f| f.parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0);
    ns as f64 / 1e9
}

struct Run {
    events: u64,
    wall: Duration,
    cpu: f64,
}

impl Run {
    fn per_s(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }
    fn per_core_s(&self) -> f64 {
        self.events as f64 / self.cpu.max(1e-9)
    }
}

fn payload(i: u64) -> String {
    format!(
        r#"{{"entity_id":"user-{}","count":1,"occurred_at":"2026-05-08T14:{:02}:{:02}.{:03}Z"}}"#,
        i % 10_000,
        (i / 60_000) % 60,
        (i / 1000) % 60,
        i % 1000
    )
}

/// The decoder alone, on one thread: the floor of the source's extra cost.
fn decode_only(n: u64) -> Run {
    let d = Decoder::count_events();
    let payloads: Vec<String> = (0..n).map(payload).collect();
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let mut counts = 0;
    for p in &payloads {
        counts += d
            .try_decode(p.as_bytes(), None)
            .expect("decodes")
            .value
            .count;
    }
    assert_eq!(counts, n as i64);
    Run {
        events: n,
        wall: t0.elapsed(),
        cpu: cpu_seconds() - cpu0,
    }
}

fn produce(brokers: &str, n: u64) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for i in 0..n {
        let payload = payload(i);
        let partition = (i % PARTITIONS as u64) as i32;
        let mut record = BaseRecord::<(), _>::to(TOPIC)
            .partition(partition)
            .payload(&payload);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    // The mock broker keeps at most 5 MiB per partition: check nothing was trimmed.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    for partition in 0..PARTITIONS {
        let (low, _) = c
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(
            low, 0,
            "the mock broker trimmed partition {partition}: use fewer messages"
        );
    }
}

fn raw(brokers: &str, n: u64) -> Run {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(0))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let (mut seen, mut bytes) = (0u64, 0usize);
    while seen < n {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    Run {
        events: seen,
        wall: t0.elapsed(),
        cpu: cpu_seconds() - cpu0,
    }
}

/// Measured like `raw`: from the moment the partitions are assigned (the
/// runner answered the `Assigned` event) to the last decoded record.
async fn source(brokers: &str, n: u64) -> Run {
    let mut s = KafkaSource::connect(KafkaConfig::assign(brokers, TOPIC), Decoder::count_events())
        .await
        .expect("source");
    let (mut t0, mut cpu0) = (Instant::now(), cpu_seconds());
    let (mut seen, mut counts) = (0u64, 0i64);
    while seen < n {
        match s.next().await.expect("next") {
            SourceEvent::Assigned(lanes) => {
                for lane in lanes {
                    s.start_lane(&lane, &Position::Offset { offset: 0 })
                        .await
                        .expect("start");
                }
                (t0, cpu0) = (Instant::now(), cpu_seconds());
            }
            SourceEvent::Chunk(c) => {
                seen += c.records.len() as u64;
                counts += c.records.iter().map(|r| r.value.count).sum::<i64>();
                s.ack(&c.lane, &c.end).await.expect("ack");
            }
            _ => {}
        }
    }
    let run = Run {
        events: seen,
        wall: t0.elapsed(),
        cpu: cpu_seconds() - cpu0,
    };
    assert_eq!(counts, n as i64);
    let m = s.metrics();
    assert_eq!(m.dead_letters, 0);
    drop(s);
    run
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400_000);
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let t = Instant::now();
    produce(&brokers, n);
    println!(
        "produced {n} CountEvent JSON messages (~95 bytes) to {PARTITIONS} partitions in {:.1?}",
        t.elapsed()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Warm up, then alternate the two paths; report medians (a shared
    // machine makes single runs noisy).
    raw(&brokers, n.min(50_000));
    let (mut raws, mut srcs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // Pauses let the previous run's threads exit before the next reading.
        raws.push(raw(&brokers, n));
        std::thread::sleep(Duration::from_millis(500));
        srcs.push(rt.block_on(source(&brokers, n)));
        std::thread::sleep(Duration::from_millis(500));
    }
    let dec = decode_only(n);
    let median = |runs: &mut Vec<Run>, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw_s, raw_c) = (
        median(&mut raws, Run::per_s),
        median(&mut raws, Run::per_core_s),
    );
    let (src_s, src_c) = (
        median(&mut srcs, Run::per_s),
        median(&mut srcs, Run::per_core_s),
    );
    println!("medians of {ROUNDS} rounds of {n} events:");
    println!("raw rdkafka poll:       {raw_s:>10.0} events/s  {raw_c:>10.0} events/s/core");
    println!("KafkaSource (decoded):  {src_s:>10.0} events/s  {src_c:>10.0} events/s/core");
    println!(
        "decode only (1 thread): {:>10.0} events/s  {:>10.0} events/s/core",
        dec.per_s(),
        dec.per_core_s()
    );
    println!(
        "ratio source/raw:       {:>9.0}% wall     {:>9.0}% per core   (target >= 50%)",
        100.0 * src_s / raw_s,
        100.0 * src_c / raw_c
    );
}
