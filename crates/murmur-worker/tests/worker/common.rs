//! Test support: a generated history (JSON Lines export + Kafka topic on
//! an in-process broker), its ground truth computed here without Murmur
//! code, and a driver that runs `murmur-worker` as a child process and
//! SIGKILLs it at chosen points.

use murmur_core::store::RowKey;
use murmur_core::{EmbeddedStore, StateStore, Window};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer as _};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const TOPIC: &str = "events";
pub const PARTITIONS: i32 = 3;
pub const HOUR: i64 = 3_600_000;
/// 2026-05-08T00:00:00Z.
pub const T0: i64 = 1_778_198_400_000;
pub const ENTITIES: u64 = 150;

/// Event `i`: (entity, count, event time ms); partition `i % 3`.
pub fn event(i: u64) -> (String, i64, i64) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    (
        format!("e{:03}", x % ENTITIES),
        1 + (x >> 50) as i64 % 3,
        T0 + i as i64 * 20_000 + (x >> 8) as i64 % 5_000,
    )
}

pub fn partition(i: u64) -> i32 {
    (i % PARTITIONS as u64) as i32
}

pub fn json(i: u64) -> String {
    let (e, c, t) = event(i);
    let at = chrono::DateTime::from_timestamp_millis(t)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(r#"{{"entity_id":"{e}","count":{c},"occurred_at":"{at}","event_id":"ev-{i}"}}"#)
}

/// Sum of `count` per (entity, hour) of events `[0, n)`.
pub fn truth(n: u64) -> BTreeMap<(String, i64), i64> {
    let mut t = BTreeMap::new();
    for i in 0..n {
        let (e, c, at) = event(i);
        *t.entry((e, at.div_euclid(HOUR))).or_default() += c;
    }
    t
}

/// Writes events `[0, n)` as a JSON Lines export under `dir` (one object
/// per hour, Hive `hour=` directories, a `_SUCCESS` marker) with a handoff
/// manifest naming the next offset per partition.
pub fn write_export(dir: &Path, n: u64) {
    let mut offsets = BTreeMap::new();
    for i in 0..n {
        *offsets.entry(partition(i).to_string()).or_insert(0i64) += 1;
    }
    let token = serde_json::json!({"kind": "kafka", "topic": TOPIC, "offsets": offsets});
    write_export_with(dir, n, Some(token));
}

/// Writes events `[0, n)` as a JSON Lines export under `dir` with `token`
/// (if any) as its `_murmur_handoff.json` manifest.
pub fn write_export_with(dir: &Path, n: u64, token: Option<serde_json::Value>) {
    let mut by_hour: BTreeMap<i64, String> = BTreeMap::new();
    for i in 0..n {
        let (_, _, t) = event(i);
        let text = by_hour.entry(t.div_euclid(HOUR)).or_default();
        text.push_str(&json(i));
        text.push('\n');
    }
    for (hour, text) in by_hour {
        let part = dir.join(format!("hour={hour}"));
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("part-00000.json"), text).unwrap();
    }
    if let Some(token) = token {
        std::fs::write(dir.join("_murmur_handoff.json"), token.to_string()).unwrap();
    }
    std::fs::write(dir.join("_SUCCESS"), "").unwrap();
}

/// The local AWS stand-in's endpoint, or `None` (after a notice) when the
/// test runs outside `cargo xtask test`; in CI a missing endpoint fails.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs {var}; run through `cargo xtask test`"
            );
            eprintln!("skipped: {var} is not set (run through `cargo xtask test`)");
            None
        }
    }
}

/// The in-process broker (keep it alive while the workers run).
pub type Broker = MockCluster<'static, DefaultProducerContext>;

/// A topic on the broker and what was produced to it: events
/// `0..produced`, in order.
pub struct Topic {
    pub brokers: String,
    producer: FutureProducer,
    pub produced: AtomicU64,
}

impl Topic {
    pub fn new() -> (Broker, Arc<Topic>) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .create()
            .unwrap();
        (
            cluster,
            Arc::new(Topic {
                brokers,
                producer,
                produced: AtomicU64::new(0),
            }),
        )
    }

    /// Produces the next `n` events, in order.
    pub async fn produce(&self, n: u64) {
        let from = self.produced.load(Ordering::SeqCst);
        let payloads: Vec<(u64, String, i64)> =
            (from..from + n).map(|i| (i, json(i), event(i).2)).collect();
        let sends: Vec<_> = payloads
            .iter()
            .map(|(i, p, t)| {
                self.producer.send(
                    FutureRecord::<(), _>::to(TOPIC)
                        .partition(partition(*i))
                        .payload(p)
                        .timestamp(*t),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
        self.producer.flush(Duration::from_secs(30)).unwrap();
        self.produced.store(from + n, Ordering::SeqCst);
    }

    /// Produces events `0..n` again, late, at the next offsets (the
    /// partitions of the next `n` events, so [`until`](Self::until) stays
    /// right).
    pub async fn produce_again(&self, n: u64) {
        let from = self.produced.load(Ordering::SeqCst);
        for k in 0..n {
            self.producer
                .send(
                    FutureRecord::<(), _>::to(TOPIC)
                        .partition(partition(from + k))
                        .payload(&json(k))
                        .timestamp(event(k).2),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        self.producer.flush(Duration::from_secs(30)).unwrap();
        self.produced.store(from + n, Ordering::SeqCst);
    }

    /// Produces a message that does not decode in place of the next event
    /// (its partition, so [`until`](Self::until) stays right); its
    /// (partition, offset).
    pub async fn produce_bad(&self) -> (i32, i64) {
        let i = self.produced.load(Ordering::SeqCst);
        let delivery = self
            .producer
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(partition(i))
                    .payload("{not json"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        self.producer.flush(Duration::from_secs(30)).unwrap();
        self.produced.store(i + 1, Ordering::SeqCst);
        (delivery.partition, delivery.offset)
    }

    /// The `--until` token for everything produced so far.
    pub fn until(&self) -> String {
        let n = self.produced.load(Ordering::SeqCst);
        let mut offsets = BTreeMap::new();
        for i in 0..n {
            *offsets.entry(partition(i).to_string()).or_insert(0i64) += 1;
        }
        serde_json::json!({"kind": "kafka", "topic": TOPIC, "offsets": offsets}).to_string()
    }
}

/// A background thread calling its tick every 50 ms until [`finish`]ed.
///
/// [`finish`]: Producer::finish
pub struct Producer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Producer {
    /// Runs `tick` on its own current-thread runtime every 50 ms.
    pub fn start(mut tick: impl FnMut(&tokio::runtime::Runtime) + Send + 'static) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while !flag.load(Ordering::SeqCst) {
                tick(&rt);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Producer { stop, handle }
    }

    /// Stops after the current tick and waits for it.
    pub fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap();
    }
}

/// Keeps producing `per_tick` events every 50 ms until finished.
pub fn keep_producing(topic: Arc<Topic>, per_tick: u64) -> Producer {
    Producer::start(move |rt| rt.block_on(topic.produce(per_tick)))
}

/// The worker binary.
pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_murmur-worker"));
    c.env_remove("MURMUR_LOG");
    c
}

/// The worker binary with `args`.
pub fn worker_with(args: &[String]) -> Command {
    let mut c = worker();
    c.args(args);
    c
}

/// The JSON summary a `run` prints as its last stdout line.
pub fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no summary ({e}) in:\n{stdout}"))
}

/// Runs the worker with `args` (stopped as `kill` says, which must let it
/// exit by itself) and returns its summary.
pub fn finished(args: &[String], kill: &Kill) -> serde_json::Value {
    match run(worker_with(args), kill, Duration::from_secs(240)) {
        Ended::Exited(status, out) => {
            assert!(status.success());
            summary(&out)
        }
        Ended::Killed(phase) => unreachable!("killed in {phase:?}"),
    }
}

/// When to kill a run.
#[derive(Debug, Clone)]
pub enum Kill {
    /// After the n-th line containing `pattern`, plus a delay.
    After {
        pattern: &'static str,
        nth: usize,
        delay: Duration,
    },
    /// SIGTERM after the n-th line containing `pattern`, plus a delay; then
    /// the run must exit by itself.
    Term {
        pattern: &'static str,
        nth: usize,
        delay: Duration,
    },
    /// Never: let it exit.
    Never,
}

/// Where a run was when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the backfill's completion was logged.
    Backfill,
    /// Backfill complete, live lanes not all started.
    Seam,
    /// Every live lane started.
    Live,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    /// SIGKILLed in this phase.
    Killed(Phase),
    /// Exited by itself.
    Exited(ExitStatus, String),
}

/// Runs `cmd` (stderr must carry the worker's logs with
/// `murmur_bootstrap=debug`) and kills it as `kill` says; a run that takes
/// longer than `limit` is killed and fails the test.
pub fn run(mut cmd: Command, kill: &Kill, limit: Duration) -> Ended {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child: Child = cmd.spawn().expect("spawn murmur-worker");
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let out2 = out.clone();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s).ok();
        out2.lock().unwrap().push_str(&s);
    });
    let (tx, rx) = mpsc::channel::<(Phase, bool)>();
    let kill2 = kill.clone();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    let reader = std::thread::spawn(move || {
        let (mut completed, mut lanes, mut seen) = (false, 0, 0);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("backfill completed") || line.contains("already completed") {
                completed = true;
            }
            if line.contains("lane started") {
                lanes += 1;
            }
            let phase = match (completed, lanes >= PARTITIONS) {
                (false, _) => Phase::Backfill,
                (true, false) => Phase::Seam,
                (true, true) => Phase::Live,
            };
            let mut hit = false;
            if let Kill::After { pattern, nth, .. } | Kill::Term { pattern, nth, .. } = &kill2
                && line.contains(pattern)
            {
                seen += 1;
                hit = seen == *nth;
            }
            let mut l = log2.lock().unwrap();
            l.push(line);
            if l.len() > 400 {
                l.drain(..200);
            }
            drop(l);
            if tx.send((phase, hit)).is_err() {
                // The driver stopped listening; keep draining the pipe.
            }
        }
    });
    let started = std::time::Instant::now();
    let ended = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((mut phase, hit)) => {
                if hit && let Kill::Term { delay, .. } = kill {
                    std::thread::sleep(*delay);
                    let ok = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "kill -TERM failed");
                }
                if hit && let Kill::After { delay, .. } = kill {
                    std::thread::sleep(*delay);
                    // The phase at the moment of the kill.
                    while let Ok((p, _)) = rx.try_recv() {
                        phase = p;
                    }
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break Ended::Killed(phase);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                break Ended::Exited(status, String::new());
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break Ended::Exited(status, String::new());
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            let tail = log.lock().unwrap().join("\n");
            panic!("murmur-worker ran longer than {limit:?}; last log lines:\n{tail}");
        }
    };
    reader.join().ok();
    out_thread.join().ok();
    match ended {
        Ended::Exited(status, _) => {
            let stdout = out.lock().unwrap().clone();
            if !status.success() {
                let tail = log.lock().unwrap().join("\n");
                panic!(
                    "murmur-worker failed ({status}); stdout:\n{stdout}\nlast log lines:\n{tail}"
                );
            }
            Ended::Exited(status, stdout)
        }
        killed => killed,
    }
}

/// The `run` arguments shared by the tests: JSON Lines backfill with small
/// chunks and batches (many kill points), live Kafka.
pub fn run_args(export: &Path, brokers: &str) -> Vec<String> {
    [
        "run",
        "--backfill",
        "jsonl",
        "--from",
        &export.to_string_lossy(),
        "--chunk-rows",
        "400",
        "--lanes",
        "4",
        "--live",
        "kafka",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        TOPIC,
        "--flush-max-keys",
        "40",
        "--flush-max-age",
        "100ms",
        "--progress",
        "never",
        "--log",
        "info,murmur_bootstrap=debug",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// A fresh temporary directory under the target directory's tmp.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Path helper.
pub fn p(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Asserts every (entity, hour) row of events `[0, n)` holds the truth.
pub async fn compare_sums(store: &dyn StateStore, n: u64) {
    let truth = truth(n);
    let keys: Vec<RowKey> = truth
        .keys()
        .map(|(e, h)| RowKey::new(e.as_str(), Window::hour().bucket_of(h * HOUR).unwrap()))
        .collect();
    let got = store.get_many(&keys).await.unwrap();
    let mut wrong = Vec::new();
    for (((e, h), want), got) in truth.iter().zip(got) {
        let got = got.map_or(0, |v| v.value.as_int().unwrap());
        if got != *want {
            wrong.push(format!("{e} hour {h}: stored {got}, truth {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows differ from the ground truth:\n{}",
        wrong.len(),
        truth.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    let total: i64 = truth.values().sum();
    eprintln!(
        "{} rows equal the ground truth ({n} events, total count {total})",
        truth.len()
    );
}

/// The embedded store a run with `--data-dir dir` wrote.
pub fn embedded(dir: &Path, pipeline: &str) -> EmbeddedStore {
    EmbeddedStore::open(dir.join("murmur.redb"))
        .unwrap()
        .with_namespace(pipeline)
}

/// Held by the tests that load moto with a worker's writes (crash, HTTP,
/// replay): one at a time, so none of them waits on the others' requests
/// (moto serves from one Python process).
pub fn moto_heavy() -> std::sync::MutexGuard<'static, ()> {
    static MOTO: Mutex<()> = Mutex::new(());
    MOTO.lock().unwrap_or_else(|e| e.into_inner())
}

/// A DynamoDB table name no other test or run uses.
pub fn unique_table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}")
}

/// The store flags of a DynamoDB run on tables named after `table`
/// (`table`, `table-cp`, `table-dedup`, `table-aliases`).
pub fn dynamodb_flags(table: &str) -> Vec<String> {
    [
        "--store",
        "dynamodb",
        "--table",
        table,
        "--checkpoint-table",
        &format!("{table}-cp"),
        "--dedup-table",
        &format!("{table}-dedup"),
        "--alias-table",
        &format!("{table}-aliases"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The dead-letter objects under `dir`, by path relative to it, each as its
/// parsed lines.
pub fn dead_letters(dir: &Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<serde_json::Value>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let lines = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                let key = path.strip_prefix(root).unwrap().to_string_lossy();
                out.insert(key.into_owned(), lines);
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}
