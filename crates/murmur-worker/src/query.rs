//! The queries — `get`, `window`, `range`, each for one entity or many —
//! answered the same way for the command line (one JSON object per entity
//! on stdout) and the HTTP endpoint ([`crate::serve`]): one batched read and
//! a monoid fold from [`murmur_core::query`], rendered per monoid.

use crate::cli::{GetArgs, QueryArgs, RangeArgs, ServeArgs, WindowArgs};
use crate::pipeline::{Render, WithPipeline, with_pipeline};
use crate::serve::{self, Telemetry};
use crate::stores;
use murmur_core::query::{self, QueryError};
use murmur_core::store::now_ms;
use murmur_core::{BucketKey, CountEvent, Pipeline, RowKey, StateStore};
use tokio_util::sync::CancellationToken;

/// A query, with its time arguments resolved to epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The bucket holding `at` (windowed) or the all-time row (unwindowed).
    Get {
        /// A time inside the bucket.
        at: Option<i64>,
    },
    /// The last `last` buckets up to and including the one holding `now`.
    Window {
        /// How many buckets.
        last: usize,
        /// The newest bucket holds this time.
        now: i64,
    },
    /// The buckets overlapping `[from, to]`.
    Range {
        /// Start, inclusive.
        from: i64,
        /// End, inclusive.
        to: i64,
    },
}

/// Why a query got no answer; the HTTP endpoint maps each kind to a status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The arguments are wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The query needs a windowed pipeline and this one is not (412).
    #[error("{0}")]
    NotWindowed(String),
    /// The store failed (503).
    #[error("store: {0}")]
    Store(String),
    /// A stored value does not decode as the pipeline's monoid (500).
    #[error("{0}")]
    Corrupt(String),
}

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Store(e) => Refusal::Store(e.to_string()),
            QueryError::Decode { .. } => Refusal::Corrupt(e.to_string()),
            // Time arguments outside the window's range, or too many rows.
            other => Refusal::BadRequest(other.to_string()),
        }
    }
}

/// Answers `op` for `entities` with one batched read: one rendered value
/// per entity, aligned with `entities`. `contains` is the `seen` probe.
pub async fn answer<M: Render>(
    state: &dyn StateStore,
    pipeline: &Pipeline<CountEvent, M>,
    op: &Op,
    entities: &[&str],
    contains: Option<&str>,
) -> Result<Vec<serde_json::Value>, Refusal> {
    let monoid = pipeline.monoid();
    let unwindowed = || {
        Refusal::NotWindowed(format!(
            "pipeline {} has no window: window and range queries need one",
            pipeline.name()
        ))
    };
    let values = match (op, pipeline.window()) {
        (Op::Get { at }, window) => {
            let bucket = match (window, at) {
                (None, None) => BucketKey::ALL_TIME,
                (Some(w), Some(at)) => w.bucket_of(*at).map_err(QueryError::from)?,
                (None, Some(_)) => {
                    return Err(Refusal::BadRequest(format!(
                        "pipeline {} has no window: get takes no time",
                        pipeline.name()
                    )));
                }
                (Some(_), None) => {
                    return Err(Refusal::BadRequest(format!(
                        "pipeline {} is windowed: get needs a time inside the bucket",
                        pipeline.name()
                    )));
                }
            };
            let keys: Vec<RowKey> = entities.iter().map(|e| RowKey::new(*e, bucket)).collect();
            query::get_many(state, monoid, &keys).await?
        }
        (Op::Window { last, now }, Some(w)) => {
            if *last == 0 {
                return Err(Refusal::BadRequest(
                    "a window needs at least one bucket".into(),
                ));
            }
            query::window_many(state, monoid, w, entities, *now, *last).await?
        }
        (Op::Range { from, to }, Some(w)) => {
            if from > to {
                return Err(Refusal::BadRequest(format!(
                    "range from {from} is after to {to}"
                )));
            }
            query::range_many(state, monoid, w, entities, *from, *to).await?
        }
        (_, None) => return Err(unwindowed()),
    };
    Ok(values
        .iter()
        .map(|value| monoid.render(value, contains))
        .collect())
}

/// `murmur-worker get`.
pub async fn get(args: &GetArgs) -> anyhow::Result<()> {
    execute(&args.query, Op::Get { at: args.at }).await
}

/// `murmur-worker window`.
pub async fn window(args: &WindowArgs) -> anyhow::Result<()> {
    let op = Op::Window {
        last: args.last,
        now: args.now.unwrap_or_else(now_ms),
    };
    execute(&args.query, op).await
}

/// `murmur-worker range`.
pub async fn range(args: &RangeArgs) -> anyhow::Result<()> {
    let op = Op::Range {
        from: args.from,
        to: args.to,
    };
    execute(&args.query, op).await
}

async fn execute(args: &QueryArgs, op: Op) -> anyhow::Result<()> {
    let lines = with_pipeline(&args.pipeline, Query { args, op }).await??;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

struct Query<'a> {
    args: &'a QueryArgs,
    op: Op,
}

impl WithPipeline for Query<'_> {
    type Output = anyhow::Result<Vec<serde_json::Value>>;

    async fn call<M: Render>(self, pipeline: Pipeline<CountEvent, M>) -> Self::Output {
        let stores = stores::open(&self.args.store, pipeline.name()).await?;
        let entities: Vec<&str> = self.args.entities.iter().map(String::as_str).collect();
        let contains = self.args.contains.as_deref();
        let values = answer(&*stores.state, &pipeline, &self.op, &entities, contains).await?;
        Ok(entities
            .iter()
            .zip(values)
            .map(|(entity, value)| serde_json::json!({ "entity": entity, "value": value }))
            .collect())
    }
}

/// `murmur-worker serve`: the HTTP endpoint alone, until `stop`.
pub async fn serve(args: &ServeArgs, stop: CancellationToken) -> anyhow::Result<()> {
    with_pipeline(&args.pipeline, Serve { args, stop }).await?
}

struct Serve<'a> {
    args: &'a ServeArgs,
    stop: CancellationToken,
}

impl WithPipeline for Serve<'_> {
    type Output = anyhow::Result<()>;

    async fn call<M: Render>(self, pipeline: Pipeline<CountEvent, M>) -> Self::Output {
        let backend = stores::Backend::connect(&self.args.store).await?;
        let telemetry = Telemetry::new();
        telemetry.stage("serving");
        telemetry.version(backend.active(pipeline.name()).await?);
        if let stores::Backend::Dynamodb { metrics, .. } = &backend {
            telemetry.store(Some(metrics.clone()));
        }
        let reads = serve::Reads::active(backend, pipeline.name());
        let router = serve::router(pipeline, reads, telemetry);
        let (_, task) = serve::start(self.args.listen, router, self.stop).await?;
        task.await?;
        Ok(())
    }
}
