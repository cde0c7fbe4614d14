//! An HTTP-level fault layer: a tiny HTTP/1.1 proxy in front of moto that
//! answers a fraction of DynamoDB requests itself — throttling errors, 500s,
//! "all keys unprocessed" — or forwards a write and then answers 500 (the
//! write landed, the client cannot know), or simulates a crash after N
//! forwarded writes.
//!
//! One request per connection: every response carries `Connection: close`
//! (moto's own responses do too), so the client never reuses a connection
//! the proxy is about to close.
//!
//! The proxy also makes moto *atomic per item*: moto's server handles
//! requests on concurrent threads without locking, so two concurrent
//! conditional writes to one item can both pass their condition (measured:
//! 8 threads x 40 version-checked increments of one item ended at 316, not
//! 320), and a reader can see an item that an `UpdateItem` has created but
//! not yet filled. DynamoDB applies each request atomically; so every
//! forwarded request holds a per-table lock (shared by all proxies in the
//! test process) while moto processes it. Clients stay fully concurrent.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What to inject. Rates are per data-plane request (GetItem, BatchGetItem,
/// UpdateItem, PutItem, Scan); control-plane requests are always forwarded.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer HTTP 400 `ThrottlingException` / `ProvisionedThroughputExceededException`
    /// (alternating at random), without forwarding.
    pub throttle: f64,
    /// Answer HTTP 500 `InternalServerError` without forwarding.
    pub server_error: f64,
    /// For writes (UpdateItem, PutItem): forward, let moto apply it, then
    /// answer HTTP 500 instead of moto's response.
    pub forward_then_500: f64,
    /// For BatchGetItem: answer 200 with every requested key unprocessed.
    pub unprocessed: f64,
    /// Forward, then hold moto's answer back for `stall_for` (longer than
    /// the client's attempt timeout: the client gives up on a request that
    /// was applied).
    pub stall: f64,
    /// How long a stalled answer is held back.
    pub stall_for: std::time::Duration,
    /// After this many writes were forwarded, answer every further write with
    /// a non-retryable 400 (a "crash" of the writer).
    pub crash_after_writes: Option<u64>,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub writes_forwarded: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub forwarded_then_500: AtomicU64,
    pub unprocessed: AtomicU64,
    pub stalled: AtomicU64,
    pub crashed: AtomicU64,
}

impl Counts {
    /// Faults answered instead of forwarding (each costs the client one retry).
    pub fn pre_forward_faults(&self) -> u64 {
        self.throttled.load(Relaxed) + self.server_errors.load(Relaxed)
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    counts: Counts,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream_url` (`http://host:port`).
    pub async fn start(upstream_url: &str, faults: Faults, seed: u64) -> FaultProxy {
        let hostport = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let upstream = tokio::net::lookup_host(&hostport)
            .await
            .expect("resolve upstream")
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counts: Counts::default(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &s).await {
                        eprintln!("fault proxy: connection error: {e}");
                    }
                });
            }
        });
        FaultProxy { url, shared, task }
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }

    /// Crashes the writer after `writes` more forwarded writes (no other
    /// faults), or disarms the crash with `None`.
    pub fn arm_crash(&self, writes: Option<u64>) {
        let mut faults = self.shared.faults.lock().unwrap();
        self.shared.counts.writes_forwarded.store(0, Relaxed);
        *faults = Faults {
            crash_after_writes: writes,
            ..Faults::default()
        };
    }
}

enum Action {
    Forward,
    ForwardThen500,
    ForwardStalled(std::time::Duration),
    Respond(u16, String),
}

fn error_body(kind: &str, message: &str) -> String {
    serde_json::json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": message}).to_string()
}

fn decide(s: &Shared, target: &str, body: &[u8]) -> Action {
    let op = target.rsplit('.').next().unwrap_or_default();
    let data_plane = matches!(
        op,
        "GetItem" | "BatchGetItem" | "UpdateItem" | "PutItem" | "Scan"
    );
    if !data_plane {
        return Action::Forward;
    }
    let write = matches!(op, "UpdateItem" | "PutItem");
    let faults = s.faults.lock().unwrap().clone();
    let c = &s.counts;
    if write && let Some(limit) = faults.crash_after_writes {
        // Reserve a forwarding slot atomically so concurrent writes cannot
        // overshoot the limit.
        let prev = c.writes_forwarded.fetch_add(1, Relaxed);
        if prev >= limit {
            c.writes_forwarded.fetch_sub(1, Relaxed);
            c.crashed.fetch_add(1, Relaxed);
            return Action::Respond(
                400,
                serde_json::json!({"__type": "com.amazon.coral.validate#ValidationException", "message": "injected crash: writer is gone"}).to_string(),
            );
        }
        return Action::Forward;
    }
    let mut rng = s.rng.lock().unwrap();
    let roll: f64 = rng.random();
    let mut edge = faults.throttle;
    if roll < edge {
        c.throttled.fetch_add(1, Relaxed);
        let kind = if rng.random_bool(0.5) {
            "ThrottlingException"
        } else {
            "ProvisionedThroughputExceededException"
        };
        return Action::Respond(400, error_body(kind, "injected throttle"));
    }
    edge += faults.server_error;
    if roll < edge {
        c.server_errors.fetch_add(1, Relaxed);
        return Action::Respond(500, error_body("InternalServerError", "injected 500"));
    }
    edge += faults.stall;
    if roll < edge {
        c.stalled.fetch_add(1, Relaxed);
        if write {
            c.writes_forwarded.fetch_add(1, Relaxed);
        }
        return Action::ForwardStalled(faults.stall_for);
    }
    // The write-only and read-only bands share the range after the stalls.
    if write && roll < edge + faults.forward_then_500 {
        c.forwarded_then_500.fetch_add(1, Relaxed);
        return Action::ForwardThen500;
    }
    if op == "BatchGetItem" && roll < edge + faults.unprocessed {
        let request: serde_json::Value =
            serde_json::from_slice(body).expect("BatchGetItem body is JSON");
        let unprocessed = request.get("RequestItems").cloned().unwrap_or_default();
        c.unprocessed.fetch_add(1, Relaxed);
        return Action::Respond(
            200,
            serde_json::json!({"Responses": {}, "UnprocessedKeys": unprocessed}).to_string(),
        );
    }
    if write {
        c.writes_forwarded.fetch_add(1, Relaxed);
    }
    Action::Forward
}

async fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Ok(()); // client closed before a full request
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut content_length = 0usize;
    let mut target = String::new();
    let mut forwarded_head = String::new();
    for (i, line) in head_text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0 {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "x-amz-target" => target = value.to_owned(),
                "connection" => continue,
                "transfer-encoding" => panic!("fault proxy: chunked requests are not supported"),
                _ => {}
            }
        }
        forwarded_head.push_str(line);
        forwarded_head.push_str("\r\n");
    }
    forwarded_head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).await?;
    let mut conn = reader.into_inner();

    let action = decide(s, &target, &body);
    let response = match action {
        Action::Respond(status, body) => synthetic(status, &body),
        Action::Forward | Action::ForwardThen500 | Action::ForwardStalled(_) => {
            let locks = item_locks(&body);
            let mut _atomic = Vec::with_capacity(locks.len());
            for lock in &locks {
                _atomic.push(lock.lock().await);
            }
            let mut up = TcpStream::connect(s.upstream).await?;
            up.write_all(forwarded_head.as_bytes()).await?;
            up.write_all(&body).await?;
            let mut response = Vec::new();
            up.read_to_end(&mut response).await?;
            s.counts.forwarded.fetch_add(1, Relaxed);
            drop(_atomic);
            match action {
                Action::ForwardThen500 => synthetic(
                    500,
                    &error_body(
                        "InternalServerError",
                        "injected 500 after the write was applied",
                    ),
                ),
                Action::ForwardStalled(delay) => {
                    tokio::time::sleep(delay).await;
                    response
                }
                _ => response,
            }
        }
    };
    conn.write_all(&response).await?;
    conn.shutdown().await?;
    Ok(())
}

/// The locks of the items a request touches, in a global order (one lock
/// per table and primary key, shared by every proxy in the process).
/// Single-item requests lock their item, `BatchGetItem` locks every key it
/// reads; other requests (tables, scans) lock nothing.
fn item_locks(body: &[u8]) -> Vec<Arc<tokio::sync::Mutex<()>>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    // A canonical string of a key object: attribute names sorted.
    fn key_string(table: &str, key: &serde_json::Map<String, serde_json::Value>) -> String {
        let mut parts: Vec<String> = key
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), "pk" | "sk"))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        parts.sort();
        format!("{table}\u{0}{}", parts.join("\u{0}"))
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    if let Some(table) = request.get("TableName").and_then(|t| t.as_str()) {
        // GetItem / UpdateItem / DeleteItem carry `Key`; PutItem the item.
        if let Some(key) = request
            .get("Key")
            .or_else(|| request.get("Item"))
            .and_then(|k| k.as_object())
        {
            keys.push(key_string(table, key));
        }
    } else if let Some(items) = request.get("RequestItems").and_then(|r| r.as_object()) {
        for (table, spec) in items {
            for key in spec
                .get("Keys")
                .and_then(|k| k.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(key) = key.as_object() {
                    keys.push(key_string(table, key));
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap();
    keys.into_iter()
        .map(|k| locks.entry(k).or_default().clone())
        .collect()
}

fn synthetic(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Internal Server Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
