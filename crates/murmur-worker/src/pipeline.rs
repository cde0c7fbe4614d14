//! The reference pipeline over `CountEvent`, built once from the flags and
//! handed to the backfill, the live stage and the queries alike.

use crate::cli::{Aggregate, PipelineArgs, WindowKind};
use anyhow::Context as _;
use murmur_core::monoid::{Bloom, Count, HyperLogLog, Sum, TopK};
use murmur_core::{CountEvent, Monoid, Pipeline, Window};
use std::time::Duration;

/// The key of the whole-population aggregates (`distinct`, `top`, `seen`).
pub const ALL: &str = "*";

/// Work that needs the pipeline with its concrete monoid.
pub trait WithPipeline {
    /// What the work returns.
    type Output;
    /// Runs the work.
    async fn call<M: Render>(self, pipeline: Pipeline<CountEvent, M>) -> Self::Output;
}

/// How a monoid's value is shown by the queries and the demo.
pub trait Render: Monoid {
    /// A JSON value for one entity; `contains` is the `seen` probe.
    fn render(&self, value: &Self::Value, contains: Option<&str>) -> serde_json::Value;
}

impl Render for Sum {
    fn render(&self, value: &i64, _: Option<&str>) -> serde_json::Value {
        (*value).into()
    }
}

impl Render for Count {
    fn render(&self, value: &i64, _: Option<&str>) -> serde_json::Value {
        (*value).into()
    }
}

impl Render for HyperLogLog {
    fn render(&self, value: &Self::Value, _: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "estimate": value.estimate().round() as u64,
            "standard_error": self.standard_error(),
        })
    }
}

impl Render for TopK {
    fn render(&self, value: &Self::Value, _: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "top": self.top(value),
            "total": value.total(),
            "max_error": value.max_error(),
        })
    }
}

impl Render for Bloom {
    fn render(&self, value: &Self::Value, contains: Option<&str>) -> serde_json::Value {
        match contains {
            Some(item) => {
                serde_json::json!({ "item": item, "maybe_contains": self.contains(value, item) })
            }
            None => serde_json::json!({ "bits": self.bits(), "hashes": self.hashes() }),
        }
    }
}

/// The window of the flags, with retention.
pub fn window(args: &PipelineArgs) -> Option<Window> {
    let w = match args.window {
        WindowKind::None => return None,
        WindowKind::Minute => Window::minute(),
        WindowKind::Hour => Window::hour(),
        WindowKind::Day => Window::day(),
    };
    Some(match args.retention_days {
        Some(days) => w.with_retention(Duration::from_secs(days * 86_400)),
        None => w,
    })
}

/// Builds the pipeline of the flags and runs `work` with it.
pub async fn with_pipeline<W: WithPipeline>(
    args: &PipelineArgs,
    work: W,
) -> anyhow::Result<W::Output> {
    let name = args.pipeline.as_str();
    let window = window(args);
    macro_rules! build {
        ($monoid:expr, key = $key:expr, value = $value:expr) => {{
            let builder = Pipeline::builder(name, $monoid)
                .key_by_str($key)
                .value($value);
            let builder = match window {
                Some(w) => builder.window(w),
                None => builder,
            };
            let pipeline = builder
                .build()
                .with_context(|| format!("invalid pipeline {name}"))?;
            Ok(work.call(pipeline).await)
        }};
    }
    match args.aggregate {
        Aggregate::Sum => build!(
            Sum,
            key = |e: &CountEvent| &e.entity_id,
            value = |e: &CountEvent| e.count
        ),
        Aggregate::Count => build!(
            Count,
            key = |e: &CountEvent| &e.entity_id,
            value = |_: &CountEvent| ()
        ),
        Aggregate::Distinct => build!(
            HyperLogLog::new(args.hll_precision, 0).context("--hll-precision")?,
            key = |_: &CountEvent| ALL,
            value = |e: &CountEvent| e.entity_id.to_string()
        ),
        Aggregate::Top => build!(
            TopK::new(args.top_k, args.top_capacity).context("--top-k / --top-capacity")?,
            key = |_: &CountEvent| ALL,
            value = |e: &CountEvent| e.entity_id.to_string()
        ),
        Aggregate::Seen => build!(
            Bloom::with_rate(args.bloom_items, args.bloom_fpr)
                .context("--bloom-items / --bloom-fpr")?,
            key = |_: &CountEvent| ALL,
            value = |e: &CountEvent| e.entity_id.to_string()
        ),
    }
}
