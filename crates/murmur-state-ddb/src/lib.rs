//! # murmur-state-ddb
//!
//! DynamoDB as Murmur's source of truth: the production
//! [`StateStore`](murmur_core::StateStore) ([`DynamoDbStore`]), the
//! [`CheckpointStore`](murmur_core::CheckpointStore)
//! ([`DynamoDbCheckpointStore`]), the per-event
//! [`Deduper`](murmur_core::Deduper) ([`DynamoDbDeduper`]), the
//! [`AliasStore`](murmur_core::AliasStore) saying which version of a
//! pipeline's state is active ([`DynamoDbAliasStore`]) and table
//! provisioning ([`ensure_state_table`], [`ensure_checkpoint_table`],
//! [`ensure_dedup_table`], [`ensure_alias_table`]).
//!
//! The library takes typed configuration: an `aws_sdk_dynamodb::Client` (or
//! an `aws_config::SdkConfig`) plus a [`StoreConfig`]. It never reads the
//! environment; binaries do, e.g. with `aws_config::load_from_env()`, which
//! honours the standard credential chain and `AWS_ENDPOINT_URL`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use murmur_core::{LaneId, Position, StateStore, CheckpointStore, WriteBatch, BatchIntent};
//! use murmur_state_ddb::{DynamoDbCheckpointStore, DynamoDbStore, StoreConfig};
//!
//! let sdk = aws_config::load_from_env().await;
//! let client = aws_sdk_dynamodb::Client::new(&sdk);
//! murmur_state_ddb::ensure_state_table(&client, "murmur-state").await?;
//! murmur_state_ddb::ensure_checkpoint_table(&client, "murmur-checkpoints").await?;
//! let store = DynamoDbStore::new(&client, StoreConfig::new("murmur-state"));
//! let checkpoints = DynamoDbCheckpointStore::new(&client, StoreConfig::new("murmur-checkpoints"))
//!     .with_metrics(store.metrics().clone());
//!
//! let lane = LaneId::new("kafka:clicks:0");
//! checkpoints.init_lane(&lane, &Position::Offset { offset: 0 }).await?;
//! let batch = WriteBatch { lane: lane.clone(), seq: 1, rows: vec![/* from an Aggregator */] };
//! checkpoints
//!     .begin_batch(&BatchIntent {
//!         lane: lane.clone(),
//!         seq: 1,
//!         start: Position::Offset { offset: 0 },
//!         end: Position::Offset { offset: 500 },
//!         bad_records: 0,
//!     })
//!     .await?;
//! let report = store.apply(&murmur_core::monoid::Sum, &batch).await?;
//! checkpoints.commit_batch(&lane, 1).await?;
//! println!("{} rows in {} requests", report.rows_written, report.requests);
//! # Ok(()) }
//! ```
//!
//! # State table item layout
//!
//! One item per (entity, bucket):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `pk` | S | partition key: the entity (`page:/home`, `hourly:user-42`) |
//! | `sk` | N | sort key: the [`BucketKey`](murmur_core::BucketKey) (`0` = all-time) |
//! | `v` | N or B | the value: N for Sum / Count / Min / Max ([`Cell::Int`](murmur_core::Cell::Int)), B for every encoded monoid ([`Cell::Bytes`](murmur_core::Cell::Bytes), versioned bytes) |
//! | `ttl` | N | expiry, epoch seconds = bucket end + retention; absent without retention; the table's TTL attribute; only ever raised |
//! | `f:<lane>` | N | fence of lane `<lane>`: the highest batch sequence number of that lane applied to the row (fenced kinds only; one top-level attribute per lane, addressed through `ExpressionAttributeNames`) |
//! | `ver` | N | write counter, incremented by every write; the compare-and-set version |
//!
//! # Write path, by [`WriteStrategy`](murmur_core::monoid::WriteStrategy)
//!
//! Every row of batch `(lane, seq)` is one conditional write; a replay — of
//! the whole batch, or after a crash part-way — changes nothing that already
//! landed, and a failed condition is counted as
//! [`rows_unchanged`](murmur_core::ApplyReport::rows_unchanged), not an error.
//!
//! * **Add** (Sum, Count): one `UpdateItem`
//!   `SET #f = :seq, #ttl = :ttl ADD #v :d, #ver :one` with the condition
//!   `(attribute_not_exists(#f) OR #f < :seq) AND (v absent or a number) AND
//!   (ttl absent or <= :ttl)`.
//! * **IntMin / IntMax** (Min, Max; idempotent, so unfenced): one
//!   `UpdateItem` `SET #v = :d, #ttl = :ttl ADD #ver :one` on the condition
//!   that `v` is absent or a larger (smaller) number, and `ttl` absent or not
//!   later.
//! * **MergeIdempotent / MergeFenced** (every byte-encoded monoid): a
//!   strongly consistent `GetItem`, [`merge_row`](murmur_core::store::merge_row)
//!   (the same pure rule the memory and embedded stores use: fence check,
//!   combine, expiry maximum), then `UpdateItem SET v, ver, ttl, f:<lane>`
//!   conditional on `ver` being unchanged. A lost race
//!   (`ConditionalCheckFailedException`, the current item returned with it
//!   through `ReturnValuesOnConditionCheckFailure`) is merged again from that
//!   item after a jittered backoff, up to
//!   [`RetryPolicy::max_conflicts`] times.
//!
//! When the condition of an Add / IntMin / IntMax write fails, the item as it
//! was comes back with the failure and the general merge above decides from
//! it: the fence shows the batch landed (unchanged, no further request), the
//! value would not change (unchanged), the stored expiry is later (one
//! compare-and-set write keeping it), or the stored `v` is not a number (a
//! [`StoreError::Row`](murmur_core::StoreError::Row) naming table, key and
//! reason). So every path applies exactly the rules of `merge_row`.
//!
//! A merged item estimated above DynamoDB's 400 KB limit is refused before
//! it is sent ([`Error::ItemTooLarge`]).
//!
//! Rows of one batch are written concurrently, at most
//! [`StoreConfig::max_concurrency`] at a time.
//!
//! # Reads
//!
//! [`get_many`](murmur_core::StateStore::get_many) issues strongly consistent
//! `BatchGetItem` requests of at most 100 distinct keys (duplicates are read
//! once), re-requests `UnprocessedKeys` with backoff, and returns the values
//! aligned with the input keys.
//!
//! # Retries and accounting
//!
//! The SDK's own retries are switched off on the client each component uses
//! (it is rebuilt from the one you pass, keeping endpoint, credentials and
//! region), so the [`RetryPolicy`] here is the only one and every attempt is
//! counted: throttling (`ProvisionedThroughputExceededException`,
//! `ThrottlingException`, `RequestLimitExceeded`), HTTP 5xx, attempt timeouts
//! and connection failures are retried with capped exponential backoff and
//! full jitter. Requests, retries, throttles, compare-and-set conflicts and
//! consumed capacity are counted in [`Metrics`] (shareable between
//! components) and per call in [`ApplyReport`](murmur_core::ApplyReport).
//! Retrying a write whose first attempt did land (a 5xx or timeout *after*
//! the service applied it) is exact: the retry fails its fence or version
//! condition and is counted as unchanged.
//!
//! # Checkpoints and claims
//!
//! See [`DynamoDbCheckpointStore`] (items `lane#<id>` / `run#<id>` holding
//! JSON state and a version; every operation is a consistent read, the pure
//! transition from murmur-core and a put conditional on the version) and
//! [`DynamoDbDeduper`] (one conditional `PutItem` per event id).
//!
//! # Errors
//!
//! One [`Error`] enum whose variants name the table, the item and the reason;
//! the trait implementations convert it to
//! [`StoreError`](murmur_core::StoreError) (`Row` for values that do not
//! decode as the pipeline's monoid, `LaneProtocol` / `Run` / `Corrupt` for
//! checkpoint items, `Backend` for everything else, with this crate's error
//! as the source). No message contains credentials.
//!
//! # Limits
//!
//! * DynamoDB numbers do not wrap: a Sum row driven past `i64` by `ADD`
//!   reads back as [`Error::BadItem`] rather than wrapping as
//!   [`Sum`](murmur_core::monoid::Sum) does in memory.
//! * Each lane that ever wrote a fenced row leaves a `f:<lane>` attribute
//!   (about 25 bytes plus the lane id) on it; keep lane ids stable (Kafka
//!   partitions, Kinesis shards, snapshot slots), not per run.

mod alias;
mod checkpoint;
mod client;
mod config;
mod dedup;
mod error;
mod item;
mod metrics;
mod provision;
mod store;

pub use alias::DynamoDbAliasStore;
pub use checkpoint::DynamoDbCheckpointStore;
pub use config::{RetryPolicy, StoreConfig};
pub use dedup::DynamoDbDeduper;
pub use error::{Error, Result};
pub use metrics::{Metrics, MetricsSnapshot};
pub use provision::{
    ensure_alias_table, ensure_checkpoint_table, ensure_dedup_table, ensure_state_table,
};
pub use store::DynamoDbStore;
