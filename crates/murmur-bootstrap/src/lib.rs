//! The Murmur runner: backfill, then hand off to live, through one
//! [`murmur_core::Pipeline`] value.
//!
//! The shared machinery is the [`LaneWriter`]: both the backfill (a snapshot
//! worker slot) and the live worker (a Kafka partition, a Kinesis shard) feed
//! it chunks of records that end at resumable positions, and it turns them
//! into fenced batches — intent, rows, commit — so every effect lands exactly
//! once, through crashes and replays.
//!
//! [`backfill`] drives a snapshot source's units through lane writers,
//! keeping the handoff token the run began with until its completion
//! record; [`live`]
//! drives a live source's lanes from that token (or their checkpoints).
//! Both update a shared [`Progress`]; both take an optional [`Dedup`] for
//! sources that overlap. The reference binary is `murmur-worker`.
//!
//! Both install the pipeline's check
//! ([`Pipeline::record_check`](murmur_core::Pipeline::record_check)) into
//! their source, so a record the pipeline would refuse (an empty entity
//! key, an event time no window holds) is a bad record of the snapshot
//! (counted, dead-lettered, held to `max_bad_records`) or a dead letter of
//! the live topic or stream, exactly like one that does not decode: the
//! source's bad-input rules decide what happens, not a lane error.

mod backfill;
mod error;
mod lane;
mod live;
mod progress;

pub use backfill::{BackfillOptions, BackfillOutcome, BackfillStats, backfill};
pub use error::{Error, Result};
pub use lane::{BatchReport, Dedup, LaneWriter, Resume};
pub use live::{LaneSink, LaneSinks, LiveOptions, LiveStats, live, live_into};
pub use progress::{Progress, ProgressSnapshot};
