//! The HTTP query endpoint over the network, as a dashboard uses it: the
//! six operations against the ground truth while the worker runs live (the
//! embedded store) and from `serve` over DynamoDB (moto); JSON errors with
//! their status codes; `/healthz`; `/metrics` with the run's counters; and
//! identical concurrent queries sharing one store read.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A worker child process that serves HTTP.
pub struct Served {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Spawns the worker with `args` (which include `--listen
    /// 127.0.0.1:0`) and waits for the address it logs.
    pub fn spawn(args: &[String]) -> Served {
        let mut child = worker_with(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn murmur-worker");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    tx.send(addr).ok();
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                child.kill().ok();
                panic!(
                    "no listening line; log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        Served {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// SIGTERM, then the exit status must be 0; returns stdout.
    pub fn stop(mut self) -> String {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).ok();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "worker exited with {status}; log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
        stdout
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A client of one served pipeline.
pub struct Api {
    http: reqwest::Client,
    base: String,
    pipeline: String,
}

impl Api {
    pub fn new(served: &Served, pipeline: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: served.base.clone(),
            pipeline: pipeline.to_owned(),
        }
    }

    async fn post(&self, op: &str, body: &Value) -> (u16, Value) {
        self.post_raw(&self.pipeline, op, body.to_string()).await
    }

    async fn post_raw(&self, pipeline: &str, op: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/pipelines/{pipeline}/{op}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// The answer of a query that must succeed.
    pub async fn ok(&self, op: &str, body: Value) -> Value {
        let (status, answer) = self.post(op, &body).await;
        assert_eq!(status, 200, "{op} {body}: {answer}");
        answer
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `/metrics` as (series with labels -> value).
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

/// Waits until the endpoint's total over every entity and hour equals the
/// truth of events `[0, n)` (never above it); returns the version that
/// answered.
pub async fn wait_for_all(api: &Api, n: u64) -> u64 {
    let want: i64 = truth(n).values().sum();
    let everything =
        json!({"entities": entities(), "from": T0, "to": T0 + n as i64 * 20_000 + HOUR});
    let started = Instant::now();
    loop {
        let a = api.ok("range_many", everything.clone()).await;
        let got: i64 = a["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_i64().unwrap())
            .sum();
        if got == want {
            return a["version"].as_u64().unwrap();
        }
        assert!(got < want, "more than every event: {got} > {want}");
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "stuck at {got} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sums the truth per entity over hours `[from_h, to_h]`.
fn truth_sum(truth: &BTreeMap<(String, i64), i64>, entity: &str, from_h: i64, to_h: i64) -> i64 {
    truth
        .range((entity.to_owned(), from_h)..=(entity.to_owned(), to_h))
        .map(|(_, v)| v)
        .sum()
}

pub fn entities() -> Vec<String> {
    (0..ENTITIES).map(|e| format!("e{e:03}")).collect()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every operation against the truth of events `[0, n)`.
pub async fn check_queries(api: &Api, n: u64) {
    let truth = truth(n);
    let first_h = T0 / HOUR;
    let last_h = truth.keys().map(|(_, h)| *h).max().unwrap();
    let names = entities();
    // get: one bucket, the time as RFC 3339 and as epoch ms.
    let mid_h = (first_h + last_h) / 2;
    for (entity, at) in [
        ("e007", json!(rfc3339(mid_h * HOUR + 1_234))),
        ("e042", json!(mid_h * HOUR)),
    ] {
        let a = api.ok("get", json!({"entity": entity, "at": at})).await;
        assert_eq!(a["entity"], entity);
        assert_eq!(
            a["value"],
            truth_sum(&truth, entity, mid_h, mid_h),
            "get {entity}"
        );
    }
    let a = api
        .ok("get_many", json!({"entities": names, "at": mid_h * HOUR}))
        .await;
    let results = a["results"].as_array().unwrap();
    assert_eq!(results.len(), names.len());
    for (r, e) in results.iter().zip(&names) {
        assert_eq!(r["entity"], e.as_str());
        assert_eq!(
            r["value"],
            truth_sum(&truth, e, mid_h, mid_h),
            "get_many {e}"
        );
    }
    // window: the last 5 hours up to the last hour with events.
    let now = last_h * HOUR + 59_000;
    let a = api
        .ok("window", json!({"entity": "e013", "last": 5, "now": now}))
        .await;
    assert_eq!(a["value"], truth_sum(&truth, "e013", last_h - 4, last_h));
    let a = api
        .ok(
            "window_many",
            json!({"entities": names, "last": 5, "now": rfc3339(now)}),
        )
        .await;
    for (r, e) in a["results"].as_array().unwrap().iter().zip(&names) {
        assert_eq!(
            r["value"],
            truth_sum(&truth, e, last_h - 4, last_h),
            "window_many {e}"
        );
    }
    // range: everything, and a few middle hours.
    let everything = json!({"entities": names, "from": T0, "to": last_h * HOUR + HOUR - 1});
    let a = api.ok("range_many", everything).await;
    let mut total = 0;
    for (r, e) in a["results"].as_array().unwrap().iter().zip(&names) {
        let want = truth_sum(&truth, e, first_h, last_h);
        assert_eq!(r["value"], want, "range_many {e}");
        total += want;
    }
    assert_eq!(total, truth.values().sum::<i64>());
    let a = api
        .ok(
            "range",
            json!({"entity": "e099", "from": rfc3339((first_h + 2) * HOUR), "to": (first_h + 6) * HOUR}),
        )
        .await;
    assert_eq!(
        a["value"],
        truth_sum(&truth, "e099", first_h + 2, first_h + 6)
    );
    eprintln!(
        "all six operations equal the ground truth ({n} events, {} rows, total {total})",
        truth.len()
    );
}

/// The errors a client gets, with their status and code.
async fn check_errors(api: &Api) {
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "events",
            "window",
            json!({"entity": "e1", "last": -3}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "window",
            json!({"entity": "e1", "last": 0}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "window",
            json!({"entity": "e1"}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "range",
            json!({"entity": "e1", "from": 10, "to": 5}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "range",
            json!({"entity": "e1", "from": "yesterday", "to": 5}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "get",
            json!({"entity": "e1"}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "get",
            json!({"entities": ["e1"], "at": 0}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "get_many",
            json!({"entities": [], "at": 0}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "get",
            json!({"entity": "e1", "at": 0, "colour": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "events",
            "get",
            json!({"entity": "e1", "at": 0, "last": 2}).to_string(),
            400,
            "bad_request",
        ),
        ("events", "get", "{not json".to_owned(), 400, "bad_request"),
        (
            "nope",
            "get",
            json!({"entity": "e1", "at": 0}).to_string(),
            404,
            "unknown_pipeline",
        ),
        (
            "events",
            "median",
            json!({"entity": "e1"}).to_string(),
            404,
            "unknown_operation",
        ),
    ];
    for (pipeline, op, body, status, code) in cases {
        let (got, answer) = api.post_raw(pipeline, op, body.clone()).await;
        assert_eq!(got, status, "{pipeline}/{op} {body}: {answer}");
        assert_eq!(
            answer["error"]["code"], code,
            "{pipeline}/{op} {body}: {answer}"
        );
        assert_eq!(answer["error"]["status"], status);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
    }
    let (_, a) = api
        .post("window", &json!({"entity": "e1", "last": -3}))
        .await;
    assert!(
        a["error"]["message"].as_str().unwrap().contains("-3"),
        "{a}"
    );
}

#[test]
fn queries_health_and_metrics_while_the_worker_runs_live() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 6_000;
    let export = p(&dir, "export");
    write_export(&export, n);
    let (_broker, topic) = Topic::new();
    rt.block_on(topic.produce(n));
    let mut args = run_args(&export, &topic.brokers);
    args.extend(
        [
            "--data-dir",
            &p(&dir, "data").to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
    );
    let served = Served::spawn(&args);
    let api = Api::new(&served, "events");
    let producer = keep_producing(topic.clone(), 20);
    rt.block_on(async {
        let (status, body) = api.get("/healthz").await;
        assert_eq!(status, 200);
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["pipeline"], "events");
        // The stage goes to live once the backfill hands off.
        let started = Instant::now();
        loop {
            let (_, body) = api.get("/healthz").await;
            let health: Value = serde_json::from_str(&body).unwrap();
            if health["stage"] == "live" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "never live: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    producer.finish();
    rt.block_on(topic.produce(300));
    let total = topic.produced.load(std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        // Live flushes every 100 ms: wait until the endpoint shows every
        // event, then every operation must equal the truth.
        wait_for_all(&api, total).await;
        check_queries(&api, total).await;
        check_errors(&api).await;

        let m = api.metrics().await;
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
        assert_eq!(get("murmur_events_total{stage=\"backfill\"}"), n as f64);
        assert_eq!(
            get("murmur_events_total{stage=\"live\"}"),
            (total - n) as f64
        );
        assert!(get("murmur_batches_total{stage=\"live\"}") >= 1.0);
        assert!(get("murmur_deltas_total{stage=\"backfill\"}") >= ENTITIES as f64);
        assert_eq!(get("murmur_bad_records_total"), 0.0);
        assert_eq!(
            get("murmur_backfill_units{state=\"done\"}"),
            get("murmur_backfill_units{state=\"total\"}")
        );
        for partition in 0..PARTITIONS {
            let lane = format!("murmur_lag_milliseconds{{lane=\"kafka:{TOPIC}:{partition}\"}}");
            assert!(m.contains_key(&lane), "no {lane} in {m:?}");
        }
        // Queries are counted per operation, refusals included (2 answered
        // and 5 refused `get`s); an unknown pipeline or operation is not.
        assert_eq!(get("murmur_queries_total{op=\"get\"}"), 7.0);
        assert!(!m.keys().any(|k| k.contains("median")));
    });
    let out = served.stop();
    let s = summary(&out);
    assert_eq!(s["backfill_records"], n);
    assert_eq!(s["live_records"], total - n);

    // `serve` over the same file: the same answers from a fresh process.
    let data = p(&dir, "data").to_string_lossy().into_owned();
    let serve = |extra: &[&str]| {
        let mut args: Vec<String> = ["serve", "--data-dir", &data, "--listen", "127.0.0.1:0"]
            .map(str::to_owned)
            .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Served::spawn(&args)
    };
    let served = serve(&[]);
    rt.block_on(check_queries(&Api::new(&served, "events"), total));
    served.stop();
    // The same pipeline declared without a window: window and range
    // queries are refused with 412, get reads the all-time row.
    let served = serve(&["--window", "none"]);
    let api = Api::new(&served, "events");
    rt.block_on(async {
        for (op, body) in [
            ("window", json!({"entity": "e001", "last": 2})),
            (
                "range_many",
                json!({"entities": ["e001"], "from": 0, "to": 5}),
            ),
        ] {
            let (status, a) = api.post(op, &body).await;
            assert_eq!(status, 412, "{op}: {a}");
            assert_eq!(a["error"]["code"], "not_windowed");
        }
        let (status, a) = api.post("get", &json!({"entity": "e001", "at": 0})).await;
        assert_eq!(status, 400, "{a}");
        assert_eq!(api.ok("get", json!({"entity": "e001"})).await["value"], 0);
    });
    served.stop();
}

#[test]
fn serve_over_dynamodb_is_exact_and_identical_queries_share_a_read() {
    if service("AWS_ENDPOINT_URL").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let n = 4_000;
    let export = p(&dir, "export");
    write_export(&export, n);
    let _moto = moto_heavy();
    let table = unique_table("http");
    let store = dynamodb_flags(&table);
    let mut args: Vec<String> = [
        "run",
        "--backfill",
        "jsonl",
        "--from",
        &export.to_string_lossy(),
        "--live",
        "none",
        "--create-tables",
        "--progress",
        "never",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(store.iter().cloned());
    let s = finished(&args, &Kill::Never);
    assert_eq!(s["backfill_records"], n);

    let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0"]
        .map(str::to_owned)
        .to_vec();
    args.extend(store);
    let served = Served::spawn(&args);
    let api = Api::new(&served, "events");
    rt.block_on(async {
        check_queries(&api, n).await;
        check_errors(&api).await;

        // 16 identical window_many queries at once: each read is one
        // BatchGetItem per 100 keys, and the queries that arrive while one
        // is in flight share it.
        let names = entities();
        let hours = 24;
        let body = json!({"entities": names, "last": hours, "now": T0 + 23 * HOUR});
        let chunks = (names.len() * hours).div_ceil(100) as f64;
        let before = api.metrics().await;
        let asks: Vec<_> = (0..16)
            .map(|_| {
                let http = api.http.clone();
                let url = format!("{}/v1/pipelines/events/window_many", api.base);
                let body = body.clone();
                tokio::spawn(async move {
                    let r = http.post(url).json(&body).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    r.json::<Value>().await.unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for a in asks {
            answers.push(a.await.unwrap());
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "identical queries, identical answers");
        let after = api.metrics().await;
        let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
        let reads = delta("murmur_query_reads_total");
        let joined = delta("murmur_queries_coalesced_total");
        let store_reads = delta("murmur_store_requests_total{kind=\"read\"}");
        eprintln!(
            "16 identical queries: {reads} store reads ({store_reads} BatchGetItem requests), {joined} coalesced"
        );
        assert_eq!(reads + joined, 16.0);
        assert!(reads < 16.0, "no query was coalesced");
        assert_eq!(store_reads, reads * chunks, "one BatchGetItem per 100 keys per read");
    });
    served.stop();
}
