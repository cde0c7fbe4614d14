//! # murmur-source-snapshot
//!
//! Snapshot sources for Murmur backfills: JSON Lines and Parquet objects
//! over [`object_store`] (local directory, S3, memory) and, with the
//! `dynamodb` feature, a parallel DynamoDB table scan. Sources produce
//! [`murmur_core::Record`]s and know nothing of keys, monoids or stores.
//!
//! ## The contract
//!
//! A [`SnapshotSource`]:
//!
//! 1. **lists its work units** ([`SnapshotSource::list_units`]): objects in
//!    lexicographic key order (after the key filter and the Hive partition
//!    filter, see [`ObjectListing`]) or scan segments, numbered from 0. The
//!    same data always gives the same list.
//! 2. **spreads them over lanes**: [`LanePlan`] assigns units to a fixed
//!    number of lanes, balanced by size, deterministically, and
//!    [`LanePlan::for_worker`] picks the lanes of worker `i` of `n` — so
//!    `--worker-index i --worker-count n` splits a backfill across machines.
//! 3. **reads a unit from a position** ([`SnapshotSource::read`]) as a
//!    stream of [`Chunk`]s `{start, end, last, records, bad}` cut at resumable
//!    boundaries; [`SnapshotSource::scan`] reads many units with
//!    bounded concurrency (order within a unit preserved), and
//!    [`SnapshotSource::read_in_order`] reads a lane's units one after
//!    another with the next one already being read.
//! 4. **carries a handoff token** ([`SnapshotSource::handoff`]): an explicit
//!    one or the [`HANDOFF_MANIFEST`] object beside the data. The DynamoDB
//!    source can also *capture* a DynamoDB Streams position before the scan.
//!
//! ## The canonical event
//!
//! [`CountEventLines`] (JSON Lines) and [`CountEventColumns`] (Parquet)
//! decode the canonical [`CountEvent`] of `murmur-core`, the type the live
//! sources produce too, so one `Pipeline<CountEvent, _>` serves backfill and
//! live. For other types, use [`SerdeLines`] or implement [`LineDecoder`] /
//! [`BatchDecoder`].
//!
//! ## Positions
//!
//! | source | position | chunk |
//! |---|---|---|
//! | JSON Lines | `Object { index, key, unit: line }`, 0-based line index | [`JsonLinesOptions::chunk_lines`] lines (8192), boundaries at multiples of it |
//! | Parquet | `Object { index, key, unit: row }`, 0-based row index in the object | at most [`ParquetOptions::chunk_rows`] rows (8192), never crossing a row group; a row group's first row is always a boundary |
//! | DynamoDB | `Scan { segment, last_key }`, the last evaluated key as DynamoDB JSON | one scan page; the segment's last page ends at `last_key: Some("{}")` |
//!
//! `index` is [`WorkUnit::index`] and `key` the object key. A chunk's `end`
//! is exclusive and equals the next chunk's `start`, so it is what a lane
//! checkpoints; the last chunk's `end` names the finished unit (object: its
//! line/row count; segment: the empty key `{}`), never [`Position::End`],
//! which stays free to mean "lane finished". Reading from
//! [`Position::Beginning`] reads a unit from its start; reading from a
//! finished unit's end position, or from [`Position::End`], yields one
//! empty last chunk.
//!
//! **Replay.** A runner forms a batch from whole chunks and stores
//! `[first.start, last.end)` as the batch intent; after a crash it calls
//! `read(unit, start)` and takes chunks until it reaches `end`. For objects
//! this reproduces the identical chunks (same boundaries, same records, in
//! the same order), because chunking depends only on the data and the chunk
//! size options — keep those fixed for a run. The data is pinned too: every
//! request for an object asks for the version its listing saw (`If-Match`
//! its [`WorkUnit::e_tag`]), so an object rewritten since, even to the same
//! size, fails its read with [`Error::Rewritten`] instead of yielding other
//! records at the same positions. A DynamoDB page replayed from
//! its start key is the same page unless the table changed meanwhile (a scan
//! is not a snapshot; see the `dynamodb` module).
//!
//! ## Bad input
//!
//! An undecodable line or row, or a line longer than
//! [`JsonLinesOptions::max_line_bytes`], is a [`BadRecord`] (object, 1-based
//! line/row, reason) sent to the source's [`BadRecordSink`]: logged,
//! counted, optionally written to dead-letter JSON Lines objects (one per
//! chunk, put before the chunk is delivered: see [`DeadLetter`]), and past
//! [`BadRecordPolicy::max_bad_records`] the scan fails with
//! [`Error::TooManyBadRecords`]. Each [`Chunk`] says how many bad records
//! it had; a backfill commits that count with the chunk's batch and
//! [carries it over](BadRecordSink::carry_over) on resume, so the limit
//! holds over a whole run, however often it restarts. A damaged object —
//! truncated or corrupt gzip/zstd, a `.gz` object that is not gzip, an
//! unreadable Parquet footer, a footer pointing outside the object, pages
//! the Parquet decoder cannot read (the parquet crate still panics on some
//! malformed pages; that is caught and reported as the object's damage) —
//! and a schema mismatch fail the unit's read with an [`Error`] naming the
//! object (and column). Nothing is dropped silently and nothing panics: a
//! generated corpus of damaged objects (bytes overwritten, inserted, cut
//! off) checks it.
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use futures::TryStreamExt as _;
//! use murmur_core::Position;
//! use object_store::{memory::InMemory, path::Path, ObjectStoreExt as _};
//! use murmur_source_snapshot::{CountEventLines, JsonLinesOptions, JsonLinesSource, LanePlan,
//!     ObjectListing, SnapshotSource, BadRecordPolicy};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = Arc::new(InMemory::new());
//! for day in ["01", "02"] {
//!     let mut text = String::new();
//!     for i in 0..5 {
//!         text += &format!(r#"{{"entity_id":"e{i}","count":1,"occurred_at":"2026-05-{day}T10:00:00Z"}}"#);
//!         text += "\n";
//!     }
//!     store.put(&Path::from(format!("events/day={day}/part-0.json")), text.into()).await.unwrap();
//! }
//! store.put(&Path::from("events/_murmur_handoff.json"),
//!     r#"{"kind":"event_time_cut","at_ms":1777800000000}"#.into()).await.unwrap();
//!
//! let options = JsonLinesOptions { chunk_lines: 2, ..Default::default() };
//! let source = JsonLinesSource::with_options(
//!     ObjectListing::new(store, Path::from("events")), CountEventLines, options,
//!     BadRecordPolicy::default())?;
//! assert!(source.handoff().await?.is_some());
//!
//! let plan = LanePlan::new("backfill", source.list_units().await?, 2)?;
//! for lane in plan.for_worker(0, 1)? {
//!     for unit in &lane.units {
//!         let chunks: Vec<_> = source.read(unit, &Position::Beginning).try_collect().await?;
//!         // 5 lines in chunks of 2: [0,2) [2,4) [4,5)
//!         assert_eq!(chunks.len(), 3);
//!         // Replaying the second chunk reproduces it exactly.
//!         let again: Vec<_> = source.read(unit, &chunks[1].start).try_collect().await?;
//!         assert_eq!(again[0], chunks[1]);
//!     }
//! }
//! # Ok::<(), murmur_source_snapshot::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//!
//! * `dynamodb`: `DynamoDbScanSource` (parallel scan, RCU rate limit,
//!   serde_dynamo decoding) and DynamoDB Streams handoff capture.

mod bad;
mod count_event;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
mod error;
mod jsonl;
mod lanes;
mod lines;
mod listing;
mod parquet;
mod source;
mod spare;

use std::sync::Arc;

pub use bad::{
    BadRecord, BadRecordPolicy, BadRecordSink, ChunkBadRecords, DeadLetter, RecordLocation,
};
pub use count_event::{CountEventColumns, CountEventLines, rfc3339_ms};
// The canonical counting event lives in murmur-core (one type for backfill
// and live); re-exported for the ready decoders' users.
#[cfg(feature = "dynamodb")]
pub use dynamodb::DynamoDbScanSource;
pub use error::{BoxError, Error, Result};
pub use jsonl::{JsonLinesOptions, JsonLinesSource, LineDecoder, SerdeLines};
pub use lanes::{LaneAssignment, LanePlan};
pub use listing::{HANDOFF_MANIFEST, ObjectListing, default_key_filter, hive_partitions};
pub use murmur_core::CountEvent;
pub use parquet::{
    Batch, BatchDecoder, ColumnError, DecodedRows, FloatColumn, IntColumn, ParquetOptions,
    ParquetSource, StrColumn, TimeColumn,
};
pub use source::{Chunk, ChunkStream, Partitions, SnapshotSource, UNITS_AHEAD, WorkUnit};

use murmur_core::Position;

/// The line/row index to start reading an object unit at; `None` for
/// [`Position::End`].
pub(crate) fn object_start(unit: &WorkUnit, from: &Position) -> Result<Option<u64>> {
    match from {
        Position::Beginning => Ok(Some(0)),
        Position::End => Ok(None),
        Position::Object { key, unit: n, .. } if *key == unit.key => Ok(Some(*n)),
        Position::Object { key, .. } => Err(Error::Position {
            unit: unit.key.to_string(),
            position: from.to_string(),
            reason: format!("the position belongs to object `{key}`"),
        }),
        other => Err(Error::Position {
            unit: unit.key.to_string(),
            position: other.to_string(),
            reason: "not an object position".into(),
        }),
    }
}

/// The [`plan_settings`](SnapshotSource::plan_settings) of an object
/// source: its chunk size (`<chunk>=<n>`) and event-time range.
pub(crate) fn object_settings(
    chunk: &str,
    n: u64,
    event_time_range: Option<&std::ops::Range<i64>>,
) -> String {
    match event_time_range {
        Some(r) => format!("{chunk}={n} event_time={}..{}", r.start, r.end),
        None => format!("{chunk}={n}"),
    }
}

/// The position of line/row `n` of an object unit.
pub(crate) fn unit_position(unit: &WorkUnit, n: u64) -> Position {
    Position::Object {
        index: unit.index,
        key: Arc::clone(&unit.key),
        unit: n,
    }
}
