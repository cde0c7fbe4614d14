//! `get`, `window`, `range`: one batched read and a fold, printed as one JSON
//! object per entity on stdout.

use crate::cli::{GetArgs, QueryArgs, RangeArgs, WindowArgs};
use crate::pipeline::{Render, WithPipeline, with_pipeline};
use crate::stores;
use anyhow::bail;
use murmur_core::store::now_ms;
use murmur_core::{BucketKey, CountEvent, Pipeline, RowKey, query};

/// The query of a subcommand.
enum Op {
    Get { at: Option<i64> },
    Window { last: usize, now: i64 },
    Range { from: i64, to: i64 },
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
    if args.from > args.to {
        bail!("--from must not be after --to");
    }
    execute(
        &args.query,
        Op::Range {
            from: args.from,
            to: args.to,
        },
    )
    .await
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
        let state = &*stores.state;
        let monoid = pipeline.monoid();
        let entities: Vec<&str> = self.args.entities.iter().map(String::as_str).collect();
        let values = match (&self.op, pipeline.window()) {
            (Op::Get { at }, window) => {
                let bucket = match (window, at) {
                    (None, None) => BucketKey::ALL_TIME,
                    (Some(w), Some(at)) => w.bucket_of(*at)?,
                    (None, Some(_)) => bail!("--at is for windowed pipelines (--window none here)"),
                    (Some(_), None) => bail!("get on a windowed pipeline needs --at"),
                };
                let keys: Vec<RowKey> = entities.iter().map(|e| RowKey::new(*e, bucket)).collect();
                query::get_many(state, monoid, &keys).await?
            }
            (Op::Window { last, now }, Some(w)) => {
                query::window_many(state, monoid, w, &entities, *now, *last).await?
            }
            (Op::Range { from, to }, Some(w)) => {
                query::range_many(state, monoid, w, &entities, *from, *to).await?
            }
            (_, None) => bail!("window and range need a windowed pipeline (--window none here)"),
        };
        Ok(entities
            .iter()
            .zip(values)
            .map(|(entity, value)| {
                serde_json::json!({
                    "entity": entity,
                    "value": monoid.render(&value, self.args.contains.as_deref()),
                })
            })
            .collect())
    }
}
