//! The Murmur runner: backfill, then hand off to live, through one
//! [`murmur_core::Pipeline`] value.
//!
//! The shared machinery is the [`LaneWriter`]: both the backfill (a snapshot
//! worker slot) and the live worker (a Kafka partition, a Kinesis shard) feed
//! it chunks of records that end at resumable positions, and it turns them
//! into fenced batches — intent, rows, commit — so every effect lands exactly
//! once, through crashes and replays.
//!
//! Still to come here: the backfill and live drivers over the snapshot and
//! live sources, the handoff, and the reference `murmur-worker` binary.

mod backfill;
mod error;
mod lane;
mod live;

pub use backfill::{BackfillOptions, BackfillOutcome, BackfillStats, backfill};
pub use error::{Error, Result};
pub use lane::{BatchReport, LaneWriter, Resume};
pub use live::{LiveOptions, LiveStats, live};
