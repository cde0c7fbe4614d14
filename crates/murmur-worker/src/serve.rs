//! The worker's HTTP endpoint (`--listen ADDR` on `run`, or `serve`).
//!
//! - `POST /v1/pipelines/{pipeline}/{op}`, `op` one of `get`, `get_many`,
//!   `window`, `window_many`, `range`, `range_many`: a JSON request, a JSON
//!   answer, one batched store read each (see [`crate::query`]).
//! - `GET /healthz`: the pipeline and the stage the worker is in.
//! - `GET /metrics`: the worker's counters in the Prometheus text format.
//!
//! Errors are JSON (`{"error": {"status", "code", "message"}}`): 400 for bad
//! input, 404 for an unknown pipeline or operation, 412 for a window or
//! range query on an unwindowed pipeline, 503 when the store fails.
//!
//! Identical queries that arrive while one is being answered share its
//! store read (request coalescing): a dashboard refreshed by many viewers
//! costs one read per refresh, not one per viewer.

use crate::pipeline::Render;
use crate::query::{Op, Refusal, answer};
use crate::stores::Backend;
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use murmur_bootstrap::Progress;
use murmur_core::store::now_ms;
use murmur_core::{CountEvent, Pipeline, StateStore};
use murmur_source_snapshot::BadRecordSink;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most entities one `*_many` request may name.
const MAX_ENTITIES: usize = 10_000;

/// The six operations, in the order of the `murmur_queries_total` labels.
const OPS: [&str; 6] = [
    "get",
    "get_many",
    "window",
    "window_many",
    "range",
    "range_many",
];

/// The counters `/metrics` shows: the run's stages, the store's requests,
/// bad rows and the endpoint's own queries. The run registers what it
/// creates as it goes.
#[derive(Default)]
pub struct Telemetry {
    stage: Mutex<&'static str>,
    backfill: Mutex<Option<Arc<Progress>>>,
    live: Mutex<Option<Arc<Progress>>>,
    bad: Mutex<Vec<Arc<BadRecordSink>>>,
    store: Mutex<Option<Arc<murmur_state_ddb::Metrics>>>,
    version: AtomicU64,
    queries: [AtomicU64; 6],
    coalesced: AtomicU64,
    reads: AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("stage", &*lock(&self.stage))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Telemetry {
    /// New, in stage `starting`.
    pub fn new() -> Arc<Self> {
        let t = Telemetry::default();
        *lock(&t.stage) = "starting";
        Arc::new(t)
    }

    /// The worker entered `stage` (`backfill`, `live`, `stopped`, `serving`).
    pub fn stage(&self, stage: &'static str) {
        *lock(&self.stage) = stage;
    }

    /// The version of the state the worker writes.
    pub fn version(&self, version: u64) {
        self.version.store(version, Ordering::Relaxed);
    }

    /// The counters of the backfill stage.
    pub fn backfill(&self, progress: Arc<Progress>) {
        *lock(&self.backfill) = Some(progress);
    }

    /// The counters of the live stage.
    pub fn live(&self, progress: Arc<Progress>) {
        *lock(&self.live) = Some(progress);
    }

    /// A source's bad-row sink (its count is read at each scrape).
    pub fn bad_records(&self, sink: Arc<BadRecordSink>) {
        lock(&self.bad).push(sink);
    }

    /// The DynamoDB stores' request counters.
    pub fn store(&self, metrics: Option<Arc<murmur_state_ddb::Metrics>>) {
        *lock(&self.store) = metrics;
    }
}

/// A series' labels.
type Labels<'a> = Vec<(&'a str, &'a str)>;

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in samples {
        if labels.is_empty() {
            ConstCounter::new(*value).encode(family)?;
            break;
        }
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, i64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Telemetry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stages = [
            ("backfill", lock(&self.backfill).clone()),
            ("live", lock(&self.live).clone()),
        ];
        let snaps: Vec<(&str, murmur_bootstrap::ProgressSnapshot)> = stages
            .iter()
            .filter_map(|(stage, p)| p.as_ref().map(|p| (*stage, p.snapshot())))
            .collect();
        let per_stage =
            |f: fn(&murmur_bootstrap::ProgressSnapshot) -> u64| -> Vec<(Labels<'_>, u64)> {
                snaps
                    .iter()
                    .map(|(stage, s)| (vec![("stage", *stage)], f(s)))
                    .collect()
            };
        let e = &mut encoder;
        counter(
            e,
            "murmur_events",
            "Events folded.",
            &per_stage(|s| s.records),
        )?;
        counter(
            e,
            "murmur_events_outside_cut",
            "Events dropped by the event-time cut (the other stage counts them).",
            &per_stage(|s| s.skipped),
        )?;
        counter(
            e,
            "murmur_duplicates",
            "Events skipped by the deduper.",
            &per_stage(|s| s.duplicates),
        )?;
        counter(
            e,
            "murmur_batches",
            "Batches committed.",
            &per_stage(|s| s.batches),
        )?;
        counter(
            e,
            "murmur_batches_replayed",
            "Batches replayed from a pending intent after a crash.",
            &per_stage(|s| s.replayed),
        )?;
        counter(
            e,
            "murmur_deltas",
            "Row deltas written (one per entity and bucket per batch).",
            &per_stage(|s| s.rows),
        )?;
        let bad: u64 = lock(&self.bad).iter().map(|b| b.count()).sum();
        counter(
            e,
            "murmur_bad_records",
            "Undecodable rows routed to the error sink.",
            &[(vec![], bad)],
        )?;
        if let Some(p) = lock(&self.backfill).as_ref() {
            let s = p.snapshot();
            gauge(
                e,
                "murmur_backfill_units",
                "Backfill work units of this worker, by state.",
                &[
                    (vec![("state", "total")], s.units_total as i64),
                    (vec![("state", "done")], s.units_done as i64),
                ],
            )?;
        }
        if let Some(p) = lock(&self.live).as_ref() {
            let lags = p.lane_lags();
            let samples: Vec<(Labels<'_>, i64)> = lags
                .iter()
                .map(|(lane, lag)| (vec![("lane", lane.as_str())], *lag))
                .collect();
            gauge(
                e,
                "murmur_lag_milliseconds",
                "Live event-time lag: wall clock minus the newest event time of the lane's last chunk.",
                &samples,
            )?;
        }
        if let Some(m) = lock(&self.store).as_ref() {
            let m = m.snapshot();
            counter(
                e,
                "murmur_store_requests",
                "DynamoDB requests sent (every attempt).",
                &[
                    (vec![("kind", "read")], m.read_requests),
                    (vec![("kind", "write")], m.write_requests),
                    (vec![("kind", "all")], m.requests),
                ],
            )?;
            counter(
                e,
                "murmur_store_retries",
                "DynamoDB requests retried (throttling, 5xx, unprocessed keys, CAS conflicts).",
                &[(vec![], m.retries)],
            )?;
            counter(
                e,
                "murmur_store_throttled",
                "DynamoDB attempts answered with a throttling error.",
                &[(vec![], m.throttled)],
            )?;
        }
        let queries: Vec<(Labels<'_>, u64)> = OPS
            .iter()
            .zip(&self.queries)
            .map(|(op, n)| (vec![("op", *op)], n.load(Ordering::Relaxed)))
            .collect();
        counter(
            e,
            "murmur_queries",
            "Queries answered or refused.",
            &queries,
        )?;
        counter(
            e,
            "murmur_query_reads",
            "Store reads made for queries (coalesced queries share one).",
            &[(vec![], self.reads.load(Ordering::Relaxed))],
        )?;
        counter(
            e,
            "murmur_queries_coalesced",
            "Queries answered by another identical query's read.",
            &[(vec![], self.coalesced.load(Ordering::Relaxed))],
        )?;
        Ok(())
    }
}

/// Where queries read: a fixed store, or the active version of a
/// pipeline's state, looked up again when the last lookup is older than
/// [`ALIAS_CACHE`] (so readers follow a swap within about a second).
pub enum Reads {
    /// Always this store (the coalescing test's gated store).
    #[cfg_attr(not(test), allow(dead_code))]
    Fixed(Arc<dyn StateStore>),
    /// The active version of `alias`.
    Active {
        /// Opens any version's stores.
        backend: Box<Backend>,
        /// The alias (the pipeline name).
        alias: String,
        /// The last lookup.
        cache: tokio::sync::Mutex<Option<Lookup>>,
    },
}

/// A lookup of the active version: the version, its state store, when.
type Lookup = (u64, Arc<dyn StateStore>, Instant);

/// How long a lookup of the active version is reused.
pub const ALIAS_CACHE: Duration = Duration::from_secs(1);

impl Reads {
    /// Reads that follow the active version of `alias`.
    pub fn active(backend: Backend, alias: &str) -> Reads {
        Reads::Active {
            backend: Box::new(backend),
            alias: alias.to_owned(),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The store to read now, with its version (0 for a fixed store).
    async fn state(&self) -> Result<(u64, Arc<dyn StateStore>), Refusal> {
        let (backend, alias, cache) = match self {
            Reads::Fixed(store) => return Ok((0, store.clone())),
            Reads::Active {
                backend,
                alias,
                cache,
            } => (backend, alias, cache),
        };
        let mut cached = cache.lock().await;
        if let Some((version, store, at)) = cached.as_ref()
            && at.elapsed() < ALIAS_CACHE
        {
            return Ok((*version, store.clone()));
        }
        let store_err = |e: anyhow::Error| Refusal::Store(format!("{e:#}"));
        let version = backend.active(alias).await.map_err(store_err)?;
        let store = match cached.take() {
            Some((v, store, _)) if v == version => store,
            _ => backend.open(alias, version).await.map_err(store_err)?.state,
        };
        *cached = Some((version, store.clone(), Instant::now()));
        Ok((version, store))
    }
}

/// Answers queries of one pipeline, whatever its monoid.
trait Engine: Send + Sync {
    fn name(&self) -> &str;
    fn answer(
        &self,
        op: Op,
        entities: Vec<String>,
        contains: Option<String>,
    ) -> BoxFuture<'static, Result<(u64, Vec<serde_json::Value>), Refusal>>;
}

struct Typed<M: Render> {
    pipeline: Pipeline<CountEvent, M>,
    reads: Arc<Reads>,
}

impl<M: Render> Engine for Typed<M> {
    fn name(&self) -> &str {
        self.pipeline.name()
    }

    fn answer(
        &self,
        op: Op,
        entities: Vec<String>,
        contains: Option<String>,
    ) -> BoxFuture<'static, Result<(u64, Vec<serde_json::Value>), Refusal>> {
        let pipeline = self.pipeline.clone();
        let reads = self.reads.clone();
        async move {
            let (version, state) = reads.state().await?;
            let entities: Vec<&str> = entities.iter().map(String::as_str).collect();
            let values = answer(&*state, &pipeline, &op, &entities, contains.as_deref()).await?;
            Ok((version, values))
        }
        .boxed()
    }
}

type Answer = Result<Arc<(u64, Vec<serde_json::Value>)>, Refusal>;

/// In-flight reads by query; a query that finds its twin here awaits it.
#[derive(Default)]
struct Coalescer {
    inflight: Mutex<HashMap<String, Shared<BoxFuture<'static, Answer>>>>,
}

impl Coalescer {
    /// The answer of `key`: joins the read in flight for it (calling
    /// `joined`), or starts `read` (on its own task, so it completes and
    /// leaves the map even if every asker hangs up).
    async fn answer(
        self: &Arc<Self>,
        key: String,
        read: impl FnOnce() -> BoxFuture<'static, Result<(u64, Vec<serde_json::Value>), Refusal>>,
        joined: impl FnOnce(),
    ) -> Answer {
        let future = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(f) => {
                    joined();
                    f.clone()
                }
                None => {
                    let me = self.clone();
                    let k = key.clone();
                    let work = read();
                    let task = tokio::spawn(async move {
                        let out = work.await.map(Arc::new);
                        lock(&me.inflight).remove(&k);
                        out
                    });
                    let f = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Refusal::Store(format!("the read task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        future.await
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Endpoint {
    engine: Arc<dyn Engine>,
    telemetry: Arc<Telemetry>,
    registry: Arc<Registry>,
    coalescer: Arc<Coalescer>,
}

/// The router of the endpoint for `pipeline`, reading as `reads` says.
pub fn router<M: Render>(
    pipeline: Pipeline<CountEvent, M>,
    reads: Reads,
    telemetry: Arc<Telemetry>,
) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TelemetryRef(telemetry.clone())));
    let endpoint = Endpoint {
        engine: Arc::new(Typed {
            pipeline,
            reads: Arc::new(reads),
        }),
        telemetry,
        registry: Arc::new(registry),
        coalescer: Arc::default(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/pipelines/{pipeline}/{op}", post(query))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route".into())
        })
        .with_state(endpoint)
}

/// The registry owns its collectors; this lends it the shared telemetry.
#[derive(Debug)]
struct TelemetryRef(Arc<Telemetry>);

impl Collector for TelemetryRef {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

/// Binds `addr` (fails at once on a taken port) and serves `router` until
/// `stop` is cancelled; returns the bound address (port 0 picks one).
pub async fn start(
    addr: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "query endpoint listening on http://{bound}");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("query endpoint failed: {e}");
        }
    });
    Ok((bound, task))
}

/// An error answer: `{"error": {"status", "code", "message"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            code,
            message,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let (status, code) = match &r {
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Refusal::NotWindowed(_) => (StatusCode::PRECONDITION_FAILED, "not_windowed"),
            Refusal::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Refusal::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_value"),
        };
        ApiError::new(status, code, r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "status": self.status.as_u16(),
                "code": self.code,
                "message": self.message,
            }
        });
        (self.status, Json(body)).into_response()
    }
}

async fn healthz(State(ep): State<Endpoint>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "pipeline": ep.engine.name(),
        "stage": *lock(&ep.telemetry.stage),
        "version": ep.telemetry.version.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(ep): State<Endpoint>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &ep.registry) {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            format!("cannot encode the metrics: {e}"),
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A time argument: epoch milliseconds or RFC 3339.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum Time {
    Millis(i64),
    Text(String),
}

impl Time {
    fn resolve(&self, field: &str) -> Result<i64, ApiError> {
        match self {
            Time::Millis(ms) => Ok(*ms),
            Time::Text(s) => {
                crate::cli::parse_time(s).map_err(|e| ApiError::bad(format!("{field}: {e}")))
            }
        }
    }
}

/// A query request; which fields an operation takes is checked by
/// [`Request::op`].
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    now: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contains: Option<String>,
}

impl Request {
    /// The entities, the resolved operation and whether the answer is a
    /// list, after checking that exactly the fields of `op` are present.
    fn op(&self, op: &str) -> Result<(Vec<String>, Op, bool), ApiError> {
        let (kind, many) = match op.strip_suffix("_many") {
            Some(kind) => (kind, true),
            None => (op, false),
        };
        let allowed: &[&str] = match kind {
            "get" => &["at"],
            "window" => &["last", "now"],
            "range" => &["from", "to"],
            _ => unreachable!("checked by the handler"),
        };
        let present = [
            ("at", self.at.is_some()),
            ("last", self.last.is_some()),
            ("now", self.now.is_some()),
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
        ];
        if let Some((field, _)) = present.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            return Err(ApiError::bad(format!(
                "{op} takes no \"{field}\" (it takes {})",
                allowed.join(", ")
            )));
        }
        let entities = match (many, &self.entity, &self.entities) {
            (false, Some(e), None) => vec![e.clone()],
            (true, None, Some(es)) if es.is_empty() => {
                return Err(ApiError::bad(format!("{op}: \"entities\" is empty")));
            }
            (true, None, Some(es)) if es.len() > MAX_ENTITIES => {
                return Err(ApiError::bad(format!(
                    "{op}: {} entities, more than the limit of {MAX_ENTITIES}",
                    es.len()
                )));
            }
            (true, None, Some(es)) => es.clone(),
            (false, _, _) => {
                return Err(ApiError::bad(format!(
                    "{op} takes one \"entity\" (use {op}_many for a list)"
                )));
            }
            (true, _, _) => {
                return Err(ApiError::bad(format!("{op} takes an \"entities\" list")));
            }
        };
        let resolved = match kind {
            "get" => Op::Get {
                at: self.at.as_ref().map(|t| t.resolve("at")).transpose()?,
            },
            "window" => {
                let last = self
                    .last
                    .ok_or_else(|| ApiError::bad(format!("{op} needs \"last\" (buckets)")))?;
                if last < 1 {
                    return Err(ApiError::bad(format!(
                        "\"last\" must be a positive number of buckets, got {last}"
                    )));
                }
                let now = match &self.now {
                    Some(t) => t.resolve("now")?,
                    None => now_ms(),
                };
                Op::Window {
                    last: usize::try_from(last).unwrap_or(usize::MAX),
                    now,
                }
            }
            _ => {
                let (Some(from), Some(to)) = (&self.from, &self.to) else {
                    return Err(ApiError::bad(format!("{op} needs \"from\" and \"to\"")));
                };
                Op::Range {
                    from: from.resolve("from")?,
                    to: to.resolve("to")?,
                }
            }
        };
        Ok((entities, resolved, many))
    }
}

async fn query(
    State(ep): State<Endpoint>,
    Path((pipeline, op)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if pipeline != ep.engine.name() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_pipeline",
            format!(
                "no pipeline {pipeline:?} here (this worker serves {:?})",
                ep.engine.name()
            ),
        ));
    }
    let Some(index) = OPS.iter().position(|o| *o == op) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_operation",
            format!("no operation {op:?} (one of {})", OPS.join(", ")),
        ));
    };
    ep.telemetry.queries[index].fetch_add(1, Ordering::Relaxed);
    let request: Request = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid request body: {e}")))?;
    let (entities, resolved, many) = request.op(&op)?;
    // Identical requests (same operation, same fields as sent) share a read.
    let key = format!(
        "{op}\n{}",
        serde_json::to_string(&request).unwrap_or_default()
    );
    let engine = ep.engine.clone();
    let telemetry = ep.telemetry.clone();
    let names = entities.clone();
    let contains = request.contains.clone();
    let joins = ep.telemetry.clone();
    let answer = ep
        .coalescer
        .answer(
            key,
            move || {
                telemetry.reads.fetch_add(1, Ordering::Relaxed);
                engine.answer(resolved, names, contains)
            },
            move || {
                joins.coalesced.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await?;
    let (version, values) = &*answer;
    let name = ep.engine.name();
    Ok(Json(if many {
        let results: Vec<serde_json::Value> = entities
            .iter()
            .zip(values.iter())
            .map(|(entity, value)| serde_json::json!({ "entity": entity, "value": value }))
            .collect();
        serde_json::json!({ "pipeline": name, "version": version, "results": results })
    } else {
        serde_json::json!({
            "pipeline": name,
            "version": version,
            "entity": entities[0],
            "value": values[0],
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_core::MemoryStore;
    use murmur_core::monoid::Sum;
    use murmur_core::{
        ApplyReport, DynMonoid, RowKey, StoreError, StoredValue, Window, WriteBatch,
    };

    /// A store whose reads wait for a gate and are counted: the logic test
    /// of coalescing (the HTTP tests run the real stores).
    struct GatedStore {
        inner: MemoryStore,
        reads: AtomicU64,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl StateStore for GatedStore {
        fn name(&self) -> &str {
            "gated"
        }

        async fn apply(
            &self,
            monoid: &dyn DynMonoid,
            batch: &WriteBatch,
        ) -> Result<ApplyReport, StoreError> {
            self.inner.apply(monoid, batch).await
        }

        async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate open");
            self.inner.get_many(keys).await
        }
    }

    #[tokio::test]
    async fn identical_concurrent_queries_share_one_read() {
        let store = Arc::new(GatedStore {
            inner: MemoryStore::new(),
            reads: AtomicU64::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let pipeline = Pipeline::builder("p", Sum)
            .key_by_str(|e: &CountEvent| &e.entity_id)
            .value(|e: &CountEvent| e.count)
            .window(Window::hour())
            .build()
            .unwrap();
        let telemetry = Telemetry::new();
        let app = router(pipeline, Reads::Fixed(store.clone()), telemetry.clone());
        let (addr, _task) = start(
            "127.0.0.1:0".parse().unwrap(),
            app,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/v1/pipelines/p/window");
        let ask = |body: serde_json::Value| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let r = client.post(&url).json(&body).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            })
        };
        let same = serde_json::json!({"entity": "a", "last": 3, "now": 7_200_000});
        let asks: Vec<_> = (0..8).map(|_| ask(same.clone())).collect();
        let other = ask(serde_json::json!({"entity": "b", "last": 3, "now": 7_200_000}));
        // The reads wait at the gate until all nine requests are in: two
        // reads, seven requests joined the first one's.
        let all_in = async {
            while telemetry.coalesced.load(Ordering::SeqCst) < 7
                || store.reads.load(Ordering::SeqCst) < 2
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(20), all_in)
            .await
            .is_err()
        {
            panic!(
                "not coalesced: {} store reads for 9 requests, {} joined",
                store.reads.load(Ordering::SeqCst),
                telemetry.coalesced.load(Ordering::SeqCst)
            );
        }
        store.gate.add_permits(100);
        for a in asks {
            let (status, body) = a.await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["value"], 0);
        }
        assert_eq!(other.await.unwrap().0, 200);
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            2,
            "one read per distinct query"
        );
        assert_eq!(telemetry.reads.load(Ordering::SeqCst), 2);
        assert_eq!(telemetry.coalesced.load(Ordering::SeqCst), 7);
        // Once answered, the next identical query reads again (no caching).
        let (status, _) = ask(same).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(store.reads.load(Ordering::SeqCst), 3);
    }
}
