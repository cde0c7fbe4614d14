//! # murmur-core
//!
//! The pure heart of Murmur: exact, windowed counters and sketches over event
//! streams. This crate holds no I/O beyond the embedded store; sources and
//! DynamoDB live in their own crates and implement the contracts defined here.
//!
//! * [`Record`]: what sources produce — value, event time, optional event id,
//!   source [`Position`].
//! * [`CountEvent`]: the canonical counting event, one type for backfill and
//!   live sources.
//! * [`monoid`]: identity + associative combine with a canonical, versioned
//!   encoding: Sum, Count, Min, Max, First, Last, Set, HyperLogLog, Top-K,
//!   Bloom, Map, Tuple, DecayedSum.
//! * [`Window`]: tumbling, epoch-aligned buckets with retention.
//! * [`Pipeline`]: name, key function(s), value function, monoid, window —
//!   one value used unchanged by backfill and live.
//! * [`Aggregator`]: folds records into one delta per (entity, bucket) per
//!   batch.
//! * [`StateStore`] and [`CheckpointStore`]: the fenced batch write protocol
//!   (see [`store`]); [`MemoryStore`] and [`EmbeddedStore`] implement both.
//! * [`AliasStore`]: which version of a pipeline's state is active, swapped
//!   forward only (a replay builds a new version and swaps it in).
//! * [`HandoffToken`]: where live starts after a backfill.
//! * [`query`]: one batched read and a fold per query.
//!
//! ```
//! use murmur_core::{Aggregator, FlushPolicy, MemoryStore, Pipeline, Record, StateStore,
//!     WriteBatch, LaneId, Window, monoid::Sum, query};
//!
//! # tokio_test_block_on(async {
//! struct Click { page: &'static str }
//! let pipeline = Pipeline::builder("clicks", Sum)
//!     .key_by(|c: &Click| c.page.to_string())
//!     .value(|_| 1)
//!     .window(Window::hour())
//!     .build()?;
//!
//! let mut agg = Aggregator::new(pipeline.clone(), FlushPolicy::default());
//! for (page, t) in [("/home", 1_000), ("/home", 2_000), ("/about", 3_000)] {
//!     agg.push(&Record::new(Click { page }, t), t)?;
//! }
//! let store = MemoryStore::new();
//! let batch = WriteBatch { lane: LaneId::new("demo"), seq: 1, rows: agg.take() };
//! store.apply(pipeline.monoid(), &batch).await?;
//! store.apply(pipeline.monoid(), &batch).await?; // a replay changes nothing
//!
//! let home = query::window(&store, pipeline.monoid(), &Window::hour(), "/home", 3_000, 1).await?;
//! assert_eq!(home, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>>(f: F) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
//! # }
//! ```

pub mod aggregate;
#[cfg(feature = "conformance")]
pub mod conformance;
mod count_event;
pub mod embedded;
pub mod error;
pub mod handoff;
pub mod memory;
pub mod monoid;
pub mod pipeline;
pub mod query;
pub mod record;
pub mod store;
pub mod window;

pub use aggregate::{Aggregator, AggregatorStats, FlushPolicy, Pushed};
pub use count_event::CountEvent;
pub use embedded::EmbeddedStore;
pub use error::{MonoidError, PipelineError, StoreError};
pub use handoff::HandoffToken;
pub use memory::MemoryStore;
pub use monoid::{Cell, DynMonoid, Kind, Monoid};
pub use pipeline::{Pipeline, PipelineBuilder};
pub use record::{InstalledCheck, LaneId, Position, Record, RecordCheck};
pub use store::{
    AliasStore, ApplyReport, BatchIntent, CheckpointStore, Claim, Deduper, LaneState, RowDelta,
    RowKey, RunRecord, RunStatus, StateStore, StoredValue, WriteBatch,
};
pub use window::{BucketKey, Window};
