//! [`EmbeddedStore`]: a persistent, single-file state and checkpoint store
//! (redb), the worker's local default.
//!
//! It follows exactly the rules of [`MemoryStore`](crate::MemoryStore): every
//! row is merged with [`merge_row`], every lane transition goes through
//! [`LaneState::begin`] / [`LaneState::commit`], every run completion
//! through [`RunRecord::complete`], and event claims ([`Deduper`]) are owned
//! by the first `(lane, seq)` to claim them. What it adds is durability:
//!
//! * [`StateStore::apply`] is **one write transaction per call**, committed
//!   with redb's default durability (fsync before `commit` returns). A call
//!   lands whole or not at all; a runner that splits a batch into several
//!   calls relies on the per-lane fences, exactly as with DynamoDB, so a
//!   replay after a crash part-way through the batch is a no-op for the rows
//!   that already landed.
//! * Every [`CheckpointStore`] operation is one write transaction (or none,
//!   when it changes nothing, e.g. re-recording the same pending intent).
//! * Write transactions save redb's allocator state (redb "quick repair"), so
//!   reopening after a crash is fast whatever the file size.
//!
//! # Layout
//!
//! One redb file holds any number of *namespaces* (one per pipeline, say; see
//! [`EmbeddedStore::with_namespace`]), each with four tables:
//!
//! | table                 | key                           | value                                    |
//! |-----------------------|-------------------------------|------------------------------------------|
//! | `<ns>/rows_by_bucket` | `(bucket: i64, entity bytes)` | format byte `1` + postcard [`StoredRow`] |
//! | `<ns>/lanes`          | lane id bytes                 | JSON [`LaneState`]                       |
//! | `<ns>/runs`           | run id bytes                  | JSON [`RunRecord`]                       |
//! | `<ns>/claims`         | event id bytes                | JSON `{lane, seq, expires_at}`           |
//!
//! Row keys order numerically by bucket, then by entity. redb writes a
//! changed B-tree page anew in every transaction that changes it, so what a
//! batch costs is the pages its rows lie on: live batches hold the latest
//! buckets, and a backfill's batches a span of history, so bucket first
//! their rows sit together on few pages, and new buckets fill new pages
//! whole. Keyed entity first, as files before this layout were, the rows
//! of one bucket spread over every page: the worker's backfill of the
//! snapshot benchmark's JSON Lines (20M events, 3.8M entity x day rows, 16
//! batches) wrote 2.6 GB into a 580 MB file in 27 s; bucket first it writes
//! 340 MB into a 290 MB file in 11.6 s. Opening a file of that layout
//! (`<ns>/rows`, entity first) moves its rows once, in one transaction. An
//! entity's buckets are read by key ([`StateStore::get_many`]), as every
//! query does.
//!
//! Keys and values are stored as raw bytes and decoded by this module: a
//! damaged value is a [`StoreError::Corrupt`], never a panic.
//!
//! # Threads and processes
//!
//! redb is synchronous. Each operation runs its transaction on Tokio's
//! blocking pool (`spawn_blocking`) when called inside a Tokio runtime, and
//! inline otherwise. `apply` reads the stored rows and writes the merged ones
//! in the same write transaction, but merges in the calling task (the monoid
//! is borrowed); writers of one file queue on an async mutex rather than on
//! blocking threads.
//!
//! A file may be open once at a time (redb takes an exclusive lock): open it
//! once per process and share the store by cloning it (clones are cheap and
//! share the database). Opening a file that is open elsewhere fails with a
//! [`StoreError::Backend`].

// `StoreError` is the crate-wide store error (its `Row` variant is ~128
// bytes); the helpers here return it on paths dominated by disk I/O.
#![allow(clippy::result_large_err)]

use crate::error::StoreError;
use crate::handoff::HandoffToken;
use crate::monoid::DynMonoid;
use crate::record::{LaneId, Position};
use crate::store::{
    AliasStore, ApplyReport, BatchIntent, CheckpointStore, Claim, Deduper, LaneState, Merge,
    RowDelta, RowKey, RunRecord, StateStore, StoredRow, StoredValue, WriteBatch, merge_row, now_ms,
};
use crate::window::BucketKey;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata as _,
    TableDefinition, TableError, TableHandle as _, WriteTransaction,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The namespace of [`EmbeddedStore::open`].
pub const DEFAULT_NAMESPACE: &str = "default";

/// Leading byte of every stored row: the row encoding's version.
const ROW_FORMAT: u8 = 1;

/// Alias -> active version, shared by every namespace of the file (a
/// namespace is one version of one pipeline's state).
const ALIASES: TableDefinition<'static, &'static str, u64> = TableDefinition::new("murmur_aliases");

/// Row key: bucket and entity (UTF-8 bytes).
type RowKeyBytes = (i64, &'static [u8]);
type RowsDef<'a> = TableDefinition<'a, RowKeyBytes, &'static [u8]>;
type BytesDef<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// The rows table's name after the namespace (`<ns>/rows_by_bucket`).
const ROWS: &str = "rows_by_bucket";

/// The rows table of files written before rows were keyed bucket first:
/// `<ns>/rows`, keyed (entity, bucket). [`EmbeddedStore::open`] moves its
/// rows.
const ENTITY_FIRST_ROWS: &str = "rows";
type EntityFirstRowsDef<'a> = TableDefinition<'a, (&'static [u8], i64), &'static [u8]>;

/// Moves the rows of every namespace still in the entity-first layout
/// (`<ns>/rows`) to `<ns>/rows_by_bucket`, in one write transaction: a
/// crash part-way leaves the file as it was, and the next open moves them
/// again. Refuses a namespace that holds rows in both layouts (a file this
/// build moved, written since by an earlier build): moving them would
/// overwrite the newer rows. Returns the rows moved.
fn migrate_entity_first_rows(
    db: &Database,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut txn = db.begin_write()?;
    let old: Vec<String> = txn
        .list_tables()?
        .map(|t| t.name().to_owned())
        .filter(|name| {
            name.rsplit_once('/')
                .is_some_and(|(_, table)| table == ENTITY_FIRST_ROWS)
        })
        .collect();
    if old.is_empty() {
        txn.abort()?;
        return Ok(0);
    }
    txn.set_quick_repair(true);
    let mut moved = 0u64;
    for name in &old {
        let namespace = name.rsplit_once('/').map_or("", |(ns, _)| ns);
        let to_name = format!("{namespace}/{ROWS}");
        {
            let from = txn.open_table(EntityFirstRowsDef::new(name))?;
            let mut to = txn.open_table(RowsDef::new(&to_name))?;
            if !to.is_empty()? {
                return Err(format!(
                    "namespace {namespace:?} holds rows in both layouts, `{name}` (entity first, \
                     as builds before the bucket-first layout write) and `{to_name}`: an \
                     earlier build wrote to a file this one had moved; refusing to overwrite \
                     either (keep the file of the build that wrote last)"
                )
                .into());
            }
            let mut n = 0u64;
            for item in from.iter()? {
                let (k, v) = item?;
                let (entity, bucket) = k.value();
                to.insert((bucket, entity), v.value())?;
                n += 1;
            }
            tracing::info!(namespace, rows = n, "moved rows to the bucket-first layout");
            moved += n;
        }
        txn.delete_table(EntityFirstRowsDef::new(name))?;
    }
    txn.commit()?;
    Ok(moved)
}

/// A row's key in the rows table.
fn row_key(key: &RowKey) -> (i64, &[u8]) {
    (key.bucket.0, key.entity.as_bytes())
}

/// The rows table's order of row keys: bucket, then entity.
fn table_order(a: &RowKey, b: &RowKey) -> std::cmp::Ordering {
    row_key(a).cmp(&row_key(b))
}

/// A persistent [`StateStore`] + [`CheckpointStore`] (+ [`Deduper`]) in one
/// redb file. Clones share the open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
}

/// One open file, shared by every clone and namespace.
struct Shared {
    db: Database,
    path: PathBuf,
    /// Writers queue here (asynchronously) instead of blocking pool threads
    /// on redb's writer lock.
    write_gate: tokio::sync::Mutex<()>,
}

/// Names of one namespace.
struct Namespace {
    namespace: String,
    /// `embedded:<path>`, plus `#<namespace>` outside the default one.
    store: String,
    rows: String,
    lanes: String,
    runs: String,
    claims: String,
}

impl Namespace {
    fn new(path: &Path, namespace: &str) -> Self {
        let store = if namespace == DEFAULT_NAMESPACE {
            format!("embedded:{}", path.display())
        } else {
            format!("embedded:{}#{namespace}", path.display())
        };
        // Each table name ends in its own suffix after the last '/', so no two
        // namespaces can share a table, whatever characters they contain.
        Namespace {
            namespace: namespace.to_owned(),
            store,
            rows: format!("{namespace}/{ROWS}"),
            lanes: format!("{namespace}/lanes"),
            runs: format!("{namespace}/runs"),
            claims: format!("{namespace}/claims"),
        }
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.shared.path)
            .field("namespace", &self.ns.namespace)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`, creating missing parent
    /// directories, in the [`DEFAULT_NAMESPACE`].
    ///
    /// Blocks while the file is opened; after a crash that includes redb's
    /// recovery of the last committed state.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let store = Namespace::new(&path, DEFAULT_NAMESPACE).store;
        let backend = |operation: &'static str| {
            let store = store.clone();
            move |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Backend {
                store,
                operation,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| backend("create directory")(e.into()))?;
        }
        let db = Database::builder()
            .create(&path)
            .map_err(|e| backend("open")(e.into()))?;
        migrate_entity_first_rows(&db).map_err(backend("move rows to the bucket-first layout"))?;
        tracing::debug!(store = %store, "opened embedded store");
        let ns = Arc::new(Namespace::new(&path, DEFAULT_NAMESPACE));
        Ok(EmbeddedStore {
            shared: Arc::new(Shared {
                db,
                path,
                write_gate: tokio::sync::Mutex::new(()),
            }),
            ns,
        })
    }

    /// The same file, seen through namespace `namespace`: separate rows,
    /// lanes and runs, so several pipelines can share one file. Cheap; the
    /// namespace's tables are created by its first write.
    pub fn with_namespace(&self, namespace: &str) -> Self {
        EmbeddedStore {
            shared: Arc::clone(&self.shared),
            ns: Arc::new(Namespace::new(&self.shared.path, namespace)),
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &str {
        &self.ns.namespace
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Every row of this namespace, sorted by key (for assertions and
    /// debugging).
    pub async fn rows(&self) -> Result<Vec<(RowKey, StoredRow)>, StoreError> {
        let this = self.clone();
        self.blocking("scan rows", move || {
            let txn = this.read_txn("scan rows")?;
            let Some(table) = this.open_read(&txn, this.rows_def(), "scan rows")? else {
                return Ok(Vec::new());
            };
            let iter = table.iter().map_err(this.backend("scan rows"))?;
            let mut out = Vec::new();
            for item in iter {
                let (k, v) = item.map_err(this.backend("scan rows"))?;
                let (bucket, entity) = k.value();
                let entity = std::str::from_utf8(entity).map_err(|e| {
                    this.corrupt(format!("row key {entity:?}/{bucket}"), e.to_string())
                })?;
                let key = RowKey::new(entity, BucketKey(bucket));
                let row = this.decode_row(&key, v.value())?;
                out.push((key, row));
            }
            // The table holds them bucket first.
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
    }

    // ---- plumbing -------------------------------------------------------

    fn rows_def(&self) -> RowsDef<'_> {
        TableDefinition::new(&self.ns.rows)
    }

    fn lanes_def(&self) -> BytesDef<'_> {
        TableDefinition::new(&self.ns.lanes)
    }

    fn runs_def(&self) -> BytesDef<'_> {
        TableDefinition::new(&self.ns.runs)
    }

    fn claims_def(&self) -> BytesDef<'_> {
        TableDefinition::new(&self.ns.claims)
    }

    fn backend<E>(&self, operation: &'static str) -> impl FnOnce(E) -> StoreError + use<'_, E>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| StoreError::Backend {
            store: self.ns.store.clone(),
            operation,
            source: Box::new(e),
        }
    }

    /// The file's name for errors, without the namespace.
    fn shared_name(&self) -> String {
        format!("embedded:{}", self.shared.path.display())
    }

    fn corrupt(&self, what: String, reason: String) -> StoreError {
        StoreError::Corrupt {
            store: self.ns.store.clone(),
            what,
            reason,
        }
    }

    fn lane_err(&self, lane: &LaneId, reason: String) -> StoreError {
        StoreError::LaneProtocol {
            store: self.ns.store.clone(),
            lane: lane.to_string(),
            reason,
        }
    }

    fn run_err(&self, run_id: &str, reason: String) -> StoreError {
        StoreError::Run {
            store: self.ns.store.clone(),
            run_id: run_id.to_owned(),
            reason,
        }
    }

    /// Runs `f` on Tokio's blocking pool when inside a runtime, else inline.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(f)
                .await
                .map_err(self.backend(operation))?,
            Err(_) => f(),
        }
    }

    fn read_txn(&self, operation: &'static str) -> Result<ReadTransaction, StoreError> {
        self.shared.db.begin_read().map_err(self.backend(operation))
    }

    /// Opens a table for reading; `None` if it was never written.
    fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        txn: &ReadTransaction,
        def: TableDefinition<'_, K, V>,
        operation: &'static str,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
        match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.backend(operation)(e)),
        }
    }

    fn begin_write(&self, operation: &'static str) -> Result<WriteTransaction, StoreError> {
        let mut txn = self
            .shared
            .db
            .begin_write()
            .map_err(self.backend(operation))?;
        // Two-phase commit plus the allocator state in every commit: reopening
        // after a crash needs no full-file repair.
        txn.set_quick_repair(true);
        Ok(txn)
    }

    /// Runs `f` in one write transaction on the blocking pool; commits
    /// (durably) if it reports a change, aborts otherwise.
    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EmbeddedStore, &WriteTransaction) -> Result<(T, bool), StoreError>
            + Send
            + 'static,
    {
        let _gate = self.shared.write_gate.lock().await;
        let this = self.clone();
        self.blocking(operation, move || {
            let txn = this.begin_write(operation)?;
            let (out, changed) = f(&this, &txn)?;
            this.finish(txn, changed, operation)?;
            Ok(out)
        })
        .await
    }

    fn finish(
        &self,
        txn: WriteTransaction,
        changed: bool,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        if changed {
            txn.commit().map_err(self.backend(operation))
        } else {
            txn.abort().map_err(self.backend(operation))
        }
    }

    fn decode_row(&self, key: &RowKey, bytes: &[u8]) -> Result<StoredRow, StoreError> {
        let what = || format!("row {}/{}", key.entity, key.bucket.0);
        match bytes.split_first() {
            Some((&ROW_FORMAT, rest)) => {
                postcard::from_bytes(rest).map_err(|e| self.corrupt(what(), e.to_string()))
            }
            Some((v, _)) => Err(self.corrupt(
                what(),
                format!("unsupported row format {v} (this build reads {ROW_FORMAT})"),
            )),
            None => Err(self.corrupt(what(), "empty value".into())),
        }
    }

    fn encode_row(&self, row: &StoredRow) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![ROW_FORMAT];
        postcard::to_io(row, &mut out).map_err(self.backend("encode row"))?;
        Ok(out)
    }

    fn decode_json<T: serde::de::DeserializeOwned>(
        &self,
        what: String,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(what, e.to_string()))
    }

    fn encode_json<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(self.backend("encode json"))
    }

    /// Reads lane `lane` inside a write transaction.
    fn read_lane(
        &self,
        table: &redb::Table<'_, &'static [u8], &'static [u8]>,
        lane: &LaneId,
    ) -> Result<Option<LaneState>, StoreError> {
        let guard = table
            .get(lane.as_str().as_bytes())
            .map_err(self.backend("read lane"))?;
        guard.map(|v| self.decode_lane(lane, v.value())).transpose()
    }

    fn decode_lane(&self, lane: &LaneId, bytes: &[u8]) -> Result<LaneState, StoreError> {
        let state: LaneState = self.decode_json(format!("lane {lane}"), bytes)?;
        if state.lane != *lane {
            return Err(self.corrupt(
                format!("lane {lane}"),
                format!("stored under the key of lane {}", state.lane),
            ));
        }
        Ok(state)
    }

    fn put_lane(
        &self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        state: &LaneState,
    ) -> Result<(), StoreError> {
        let bytes = self.encode_json(state)?;
        table
            .insert(state.lane.as_str().as_bytes(), bytes.as_slice())
            .map_err(self.backend("write lane"))?;
        Ok(())
    }

    fn read_run(
        &self,
        table: &redb::Table<'_, &'static [u8], &'static [u8]>,
        run_id: &str,
    ) -> Result<Option<RunRecord>, StoreError> {
        let guard = table
            .get(run_id.as_bytes())
            .map_err(self.backend("read run"))?;
        guard
            .map(|v| self.decode_json(format!("run {run_id}"), v.value()))
            .transpose()
    }

    fn put_run(
        &self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        run: &RunRecord,
    ) -> Result<(), StoreError> {
        let bytes = self.encode_json(run)?;
        table
            .insert(run.run_id.as_bytes(), bytes.as_slice())
            .map_err(self.backend("write run"))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for EmbeddedStore {
    fn name(&self) -> &str {
        &self.ns.store
    }

    async fn apply(
        &self,
        monoid: &dyn DynMonoid,
        batch: &WriteBatch,
    ) -> Result<ApplyReport, StoreError> {
        const OP: &str = "apply batch";
        let mut report = ApplyReport::default();
        if batch.rows.is_empty() {
            return Ok(report);
        }
        let _gate = self.shared.write_gate.lock().await;

        // The deltas in the table's key order: the reads and then the writes
        // each walk the B-tree once, left to right, through the few pages
        // the batch's buckets lie on. Stable: a key repeated within the
        // batch keeps the batch's order.
        let mut order: Vec<&RowDelta> = batch.rows.iter().collect();
        order.sort_by(|a, b| table_order(&a.key, &b.key));

        // 1. Open the write transaction and read the stored rows (blocking
        //    pool). The transaction travels back here: the merge needs the
        //    borrowed monoid, which cannot move to another thread.
        let this = self.clone();
        let keys: Vec<RowKey> = order.iter().map(|d| d.key.clone()).collect();
        let (txn, existing) = self
            .blocking(OP, move || {
                let txn = this.begin_write(OP)?;
                let existing = {
                    let table = txn.open_table(this.rows_def()).map_err(this.backend(OP))?;
                    let mut existing = Vec::with_capacity(keys.len());
                    for key in &keys {
                        let guard = table.get(row_key(key)).map_err(this.backend(OP))?;
                        existing.push(guard.map(|v| this.decode_row(key, v.value())).transpose()?);
                    }
                    existing
                };
                Ok((txn, existing))
            })
            .await?;

        // 2. Merge (pure). A batch holds one delta per row; a key repeated
        //    within it (next to itself now) sees its earlier write, as in a
        //    store applying rows one by one (so a fenced kind skips the
        //    repeat: its fence is already at this batch).
        let mut written: Vec<(&RowKey, StoredRow)> = Vec::with_capacity(order.len());
        for (delta, stored) in order.iter().zip(&existing) {
            report.requests += 1;
            let repeated = written.last_mut().filter(|(k, _)| **k == delta.key);
            let current = repeated.as_ref().map(|(_, row)| row).or(stored.as_ref());
            let merged =
                merge_row(monoid, current, delta, &batch.lane, batch.seq).map_err(|source| {
                    StoreError::Row {
                        store: self.ns.store.clone(),
                        entity: delta.key.entity.to_string(),
                        bucket: delta.key.bucket.0,
                        source,
                    }
                })?;
            match merged {
                Merge::Write(row) => {
                    match repeated {
                        Some((_, earlier)) => *earlier = row,
                        None => written.push((&delta.key, row)),
                    }
                    report.rows_written += 1;
                }
                Merge::Unchanged => report.rows_unchanged += 1,
            }
        }
        let writes = written
            .iter()
            .map(|(key, row)| Ok(((*key).clone(), self.encode_row(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;

        // 3. Write and commit durably (blocking pool); a full replay commits
        //    nothing.
        let this = self.clone();
        self.blocking(OP, move || {
            let changed = !writes.is_empty();
            {
                let mut table = txn.open_table(this.rows_def()).map_err(this.backend(OP))?;
                for (key, bytes) in &writes {
                    table
                        .insert(row_key(key), bytes.as_slice())
                        .map_err(this.backend(OP))?;
                }
            }
            this.finish(txn, changed, OP)
        })
        .await?;
        Ok(report)
    }

    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        const OP: &str = "get rows";
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let keys = keys.to_vec();
        self.blocking(OP, move || {
            let txn = this.read_txn(OP)?;
            let Some(table) = this.open_read(&txn, this.rows_def(), OP)? else {
                return Ok(vec![None; keys.len()]);
            };
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                let guard = table.get(row_key(key)).map_err(this.backend(OP))?;
                out.push(
                    guard
                        .map(|v| this.decode_row(key, v.value()).map(|r| r.stored_value()))
                        .transpose()?,
                );
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait::async_trait]
impl CheckpointStore for EmbeddedStore {
    fn name(&self) -> &str {
        &self.ns.store
    }

    async fn lane(&self, lane: &LaneId) -> Result<Option<LaneState>, StoreError> {
        const OP: &str = "read lane";
        let this = self.clone();
        let lane = lane.clone();
        self.blocking(OP, move || {
            let txn = this.read_txn(OP)?;
            let Some(table) = this.open_read(&txn, this.lanes_def(), OP)? else {
                return Ok(None);
            };
            let guard = table
                .get(lane.as_str().as_bytes())
                .map_err(this.backend(OP))?;
            guard
                .map(|v| this.decode_lane(&lane, v.value()))
                .transpose()
        })
        .await
    }

    async fn lanes(&self, prefix: &str) -> Result<Vec<LaneState>, StoreError> {
        const OP: &str = "scan lanes";
        let this = self.clone();
        let prefix = prefix.to_owned();
        self.blocking(OP, move || {
            let txn = this.read_txn(OP)?;
            let Some(table) = this.open_read(&txn, this.lanes_def(), OP)? else {
                return Ok(Vec::new());
            };
            let p = prefix.as_bytes();
            let mut out = Vec::new();
            for item in table.range(p..).map_err(this.backend(OP))? {
                let (k, v) = item.map_err(this.backend(OP))?;
                let key = k.value();
                if !key.starts_with(p) {
                    break;
                }
                let id = std::str::from_utf8(key)
                    .map_err(|e| this.corrupt(format!("lane key {key:?}"), e.to_string()))?;
                out.push(this.decode_lane(&LaneId::new(id), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn init_lane(&self, lane: &LaneId, start: &Position) -> Result<LaneState, StoreError> {
        let (lane, start) = (lane.clone(), start.clone());
        self.write("init lane", move |this, txn| {
            let mut table = txn
                .open_table(this.lanes_def())
                .map_err(this.backend("init lane"))?;
            if let Some(state) = this.read_lane(&table, &lane)? {
                return Ok((state, false));
            }
            let state = LaneState::new(lane, start);
            this.put_lane(&mut table, &state)?;
            Ok((state, true))
        })
        .await
    }

    async fn begin_batch(&self, intent: &BatchIntent) -> Result<(), StoreError> {
        let intent = intent.clone();
        self.write("begin batch", move |this, txn| {
            let mut table = txn
                .open_table(this.lanes_def())
                .map_err(this.backend("begin batch"))?;
            let mut state = this
                .read_lane(&table, &intent.lane)?
                .ok_or_else(|| this.lane_err(&intent.lane, "lane was never initialised".into()))?;
            let before = state.clone();
            state
                .begin(&intent)
                .map_err(|r| this.lane_err(&intent.lane, r))?;
            let changed = state != before;
            if changed {
                this.put_lane(&mut table, &state)?;
            }
            Ok(((), changed))
        })
        .await
    }

    async fn commit_batch(&self, lane: &LaneId, seq: u64) -> Result<LaneState, StoreError> {
        let lane = lane.clone();
        self.write("commit batch", move |this, txn| {
            let mut table = txn
                .open_table(this.lanes_def())
                .map_err(this.backend("commit batch"))?;
            let mut state = this
                .read_lane(&table, &lane)?
                .ok_or_else(|| this.lane_err(&lane, "lane was never initialised".into()))?;
            let before = state.clone();
            state.commit(seq).map_err(|r| this.lane_err(&lane, r))?;
            let changed = state != before;
            if changed {
                this.put_lane(&mut table, &state)?;
            }
            Ok((state, changed))
        })
        .await
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        const OP: &str = "read run";
        let this = self.clone();
        let run_id = run_id.to_owned();
        self.blocking(OP, move || {
            let txn = this.read_txn(OP)?;
            let Some(table) = this.open_read(&txn, this.runs_def(), OP)? else {
                return Ok(None);
            };
            let guard = table.get(run_id.as_bytes()).map_err(this.backend(OP))?;
            guard
                .map(|v| this.decode_json(format!("run {run_id}"), v.value()))
                .transpose()
        })
        .await
    }

    async fn begin_run(
        &self,
        run_id: &str,
        plan: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError> {
        let (run_id, plan, token) = (run_id.to_owned(), plan.to_owned(), token.clone());
        self.write("begin run", move |this, txn| {
            let mut table = txn
                .open_table(this.runs_def())
                .map_err(this.backend("begin run"))?;
            if let Some(run) = this.read_run(&table, &run_id)? {
                return Ok((run, false));
            }
            let run = RunRecord::running(&run_id, &plan, &token, now_ms());
            this.put_run(&mut table, &run)?;
            Ok((run, true))
        })
        .await
    }

    async fn complete_run(
        &self,
        run_id: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError> {
        let (run_id, token) = (run_id.to_owned(), token.clone());
        self.write("complete run", move |this, txn| {
            let mut table = txn
                .open_table(this.runs_def())
                .map_err(this.backend("complete run"))?;
            let mut run = this
                .read_run(&table, &run_id)?
                .ok_or_else(|| this.run_err(&run_id, "run was never begun".into()))?;
            let before = run.clone();
            run.complete(&token, now_ms())
                .map_err(|r| this.run_err(&run_id, r))?;
            let changed = run != before;
            if changed {
                this.put_run(&mut table, &run)?;
            }
            Ok((run, changed))
        })
        .await
    }
}

/// The owner of an event claim, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ClaimOwner {
    lane: LaneId,
    seq: u64,
    /// Kept for a future sweep; like the memory store, ownership does not
    /// lapse.
    expires_at: Option<i64>,
}

#[async_trait::async_trait]
impl Deduper for EmbeddedStore {
    /// One write transaction per call (none if every id was already claimed).
    async fn claim(
        &self,
        lane: &LaneId,
        seq: u64,
        event_ids: &[&str],
        expires_at: Option<i64>,
    ) -> Result<Vec<Claim>, StoreError> {
        const OP: &str = "claim events";
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = event_ids.iter().map(|s| (*s).to_owned()).collect();
        let me = ClaimOwner {
            lane: lane.clone(),
            seq,
            expires_at,
        };
        self.write(OP, move |this, txn| {
            let mut table = txn
                .open_table(this.claims_def())
                .map_err(this.backend(OP))?;
            let mut seen = std::collections::HashSet::new();
            let mut changed = false;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if !seen.insert(id.as_str()) {
                    out.push(Claim::Duplicate);
                    continue;
                }
                let stored: Option<ClaimOwner> = table
                    .get(id.as_bytes())
                    .map_err(this.backend(OP))?
                    .map(|v| this.decode_json(format!("claim {id}"), v.value()))
                    .transpose()?;
                let owned = match stored {
                    Some(owner) => owner.lane == me.lane && owner.seq == me.seq,
                    None => {
                        let bytes = this.encode_json(&me)?;
                        table
                            .insert(id.as_bytes(), bytes.as_slice())
                            .map_err(this.backend(OP))?;
                        changed = true;
                        true
                    }
                };
                out.push(if owned {
                    Claim::Owned
                } else {
                    Claim::Duplicate
                });
            }
            Ok((out, changed))
        })
        .await
    }
}

#[async_trait::async_trait]
impl AliasStore for EmbeddedStore {
    async fn active(&self, alias: &str) -> Result<Option<u64>, StoreError> {
        const OP: &str = "read alias";
        let this = self.clone();
        let alias = alias.to_owned();
        self.blocking(OP, move || {
            let txn = this.read_txn(OP)?;
            let Some(table) = this.open_read(&txn, ALIASES, OP)? else {
                return Ok(None);
            };
            let version = table.get(alias.as_str()).map_err(this.backend(OP))?;
            Ok(version.map(|v| v.value()))
        })
        .await
    }

    async fn swap(&self, alias: &str, version: u64) -> Result<(), StoreError> {
        const OP: &str = "swap alias";
        let alias = alias.to_owned();
        self.write(OP, move |this, txn| {
            let mut table = txn.open_table(ALIASES).map_err(this.backend(OP))?;
            let active = table
                .get(alias.as_str())
                .map_err(this.backend(OP))?
                .map(|v| v.value());
            if let Some(active) = active
                && active >= version
            {
                return Err(StoreError::StaleSwap {
                    store: this.shared_name(),
                    alias,
                    active,
                    requested: version,
                });
            }
            table
                .insert(alias.as_str(), version)
                .map_err(this.backend(OP))?;
            Ok(((), true))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monoid::{Cell, Max, Sum};
    use crate::store::RowDelta;
    use crate::{RunStatus, StateStore};

    fn delta(entity: &str, bucket: i64, v: i64) -> RowDelta {
        RowDelta {
            key: RowKey::new(entity, BucketKey(bucket)),
            delta: Cell::Int(v),
            expires_at: Some(1_000 + bucket),
        }
    }

    fn batch(lane: &str, seq: u64, rows: Vec<RowDelta>) -> WriteBatch {
        WriteBatch {
            lane: LaneId::new(lane),
            seq,
            rows,
        }
    }

    fn off(offset: i64) -> Position {
        Position::Offset { offset }
    }

    #[tokio::test]
    async fn rows_lanes_and_runs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/state.redb");
        let lane = LaneId::new("kafka:events:0");
        let token = HandoffToken::Kinesis {
            stream: "events".into(),
            sequence_numbers: [(
                "shardId-000000000000".to_owned(),
                "4959033827149025660855".to_owned(),
            )]
            .into(),
        };
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert_eq!(
                StateStore::name(&store),
                format!("embedded:{}", path.display())
            );
            store.init_lane(&lane, &off(0)).await.unwrap();
            let intent = BatchIntent {
                lane: lane.clone(),
                seq: 1,
                start: off(0),
                end: off(10),
                bad_records: 0,
            };
            store.begin_batch(&intent).await.unwrap();
            let b = batch(
                "kafka:events:0",
                1,
                vec![delta("a", 2, 5), delta("a", 1, 3), delta("b", -4, 7)],
            );
            let r = store.apply(&Sum, &b).await.unwrap();
            assert_eq!((r.rows_written, r.rows_unchanged), (3, 0));
            store.commit_batch(&lane, 1).await.unwrap();
            let intent2 = BatchIntent {
                lane: lane.clone(),
                seq: 2,
                start: off(10),
                end: off(20),
                bad_records: 0,
            };
            store.begin_batch(&intent2).await.unwrap();
            store
                .apply(&Sum, &batch("kafka:events:0", 2, vec![delta("a", 2, 1)]))
                .await
                .unwrap();
            store
                .begin_run("bootstrap-1", "plan-1", &token)
                .await
                .unwrap();
            store.complete_run("bootstrap-1", &token).await.unwrap();
            // A clone keeps the database open until every handle is gone.
            let clone = store.clone();
            drop(store);
            assert_eq!(
                clone
                    .get(&RowKey::new("a", BucketKey(2)))
                    .await
                    .unwrap()
                    .unwrap()
                    .value,
                Cell::Int(6)
            );
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let got = store
            .get_many(&[
                RowKey::new("a", BucketKey(2)),
                RowKey::new("missing", BucketKey(1)),
                RowKey::new("b", BucketKey(-4)),
            ])
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                Some(StoredValue {
                    value: Cell::Int(6),
                    expires_at: Some(1_002)
                }),
                None,
                Some(StoredValue {
                    value: Cell::Int(7),
                    expires_at: Some(996)
                }),
            ]
        );
        // Fences survived: replaying both batches changes nothing.
        let r = store
            .apply(
                &Sum,
                &batch(
                    "kafka:events:0",
                    1,
                    vec![delta("a", 2, 5), delta("a", 1, 3), delta("b", -4, 7)],
                ),
            )
            .await
            .unwrap();
        assert_eq!((r.rows_written, r.rows_unchanged), (0, 3));
        store
            .apply(&Sum, &batch("kafka:events:0", 2, vec![delta("a", 2, 1)]))
            .await
            .unwrap();
        assert_eq!(
            store
                .get(&RowKey::new("a", BucketKey(2)))
                .await
                .unwrap()
                .unwrap()
                .value,
            Cell::Int(6)
        );

        let st = store.lane(&lane).await.unwrap().unwrap();
        assert_eq!((st.committed_seq, st.position.clone()), (1, off(10)));
        assert_eq!(st.pending.as_ref().map(|p| p.seq), Some(2));
        let st = store.commit_batch(&lane, 2).await.unwrap();
        assert_eq!(
            (st.committed_seq, st.position, st.pending),
            (2, off(20), None)
        );
        let run = store.run("bootstrap-1").await.unwrap().unwrap();
        assert_eq!(
            (run.status, run.token.clone()),
            (RunStatus::Completed, Some(token.clone()))
        );
        assert!(store.run("other").await.unwrap().is_none());
        assert_eq!(
            store.complete_run("bootstrap-1", &token).await.unwrap(),
            run
        );
        let other = HandoffToken::EventTimeCut { at_ms: 1 };
        assert!(matches!(
            store.complete_run("bootstrap-1", &other).await,
            Err(StoreError::Run { .. })
        ));
        assert_eq!(
            store
                .begin_run("bootstrap-1", "plan-1", &other)
                .await
                .unwrap(),
            run,
            "a completed run stays completed"
        );

        // Rows scan in (entity, bucket) order, buckets numerically.
        let keys: Vec<_> = store
            .rows()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec![
                RowKey::new("a", BucketKey(1)),
                RowKey::new("a", BucketKey(2)),
                RowKey::new("b", BucketKey(-4))
            ]
        );
    }

    #[tokio::test]
    async fn rows_come_in_key_order_and_namespaces_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        let other = store.with_namespace("maxes");
        assert_eq!(other.namespace(), "maxes");
        assert!(StateStore::name(&other).ends_with("#maxes"));
        let rows = vec![
            delta("e", 5, 1),
            delta("e", -3, 2),
            delta("e", 0, 3),
            delta("e2", 1, 4),
            delta("d", 9, 5),
        ];
        store
            .apply(&Sum, &batch("l", 1, rows.clone()))
            .await
            .unwrap();
        other
            .apply(&Max, &batch("l", 1, vec![delta("e", 5, 100)]))
            .await
            .unwrap();
        // Stored bucket first, listed by `RowKey` order (entity first).
        let keys: Vec<_> = store
            .rows()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| (k.entity.to_string(), k.bucket.0))
            .collect();
        let expected = [("d", 9), ("e", -3), ("e", 0), ("e", 5), ("e2", 1)];
        assert_eq!(keys, expected.map(|(e, b)| (e.to_owned(), b)));
        assert_eq!(other.rows().await.unwrap().len(), 1);
        assert_eq!(
            other
                .get(&RowKey::new("e", BucketKey(5)))
                .await
                .unwrap()
                .unwrap()
                .value,
            Cell::Int(100)
        );
        assert_eq!(
            store
                .get(&RowKey::new("e", BucketKey(5)))
                .await
                .unwrap()
                .unwrap()
                .value,
            Cell::Int(1)
        );
        // Lanes and runs are per namespace too.
        store.init_lane(&LaneId::new("l"), &off(0)).await.unwrap();
        assert!(other.lane(&LaneId::new("l")).await.unwrap().is_none());
        assert!(other.lanes("").await.unwrap().is_empty());
        assert_eq!(store.lanes("").await.unwrap().len(), 1);
    }

    /// A batch's deltas are applied in the table's order, not the batch's:
    /// a key repeated within the batch still sees its earlier write.
    #[tokio::test]
    async fn a_key_repeated_within_a_batch_sees_its_earlier_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        let rows = vec![
            delta("b", 1, 5),
            delta("a", 2, 1),
            delta("b", 1, 7),
            delta("c", 0, 2),
            delta("b", 1, 6),
        ];
        let report = store.apply(&Max, &batch("l", 1, rows)).await.unwrap();
        assert_eq!((report.requests, report.rows_written), (5, 4), "{report:?}");
        let got: Vec<_> = store
            .rows()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, r)| (k.entity.to_string(), k.bucket.0, r.value))
            .collect();
        assert_eq!(
            got,
            [("a", 2, 1), ("b", 1, 7), ("c", 0, 2)].map(|(e, b, v)| (
                e.to_owned(),
                b,
                Cell::Int(v)
            ))
        );
    }

    /// A file written before rows were keyed bucket first (`<ns>/rows`,
    /// entity first) has its rows moved on open, in every namespace, once.
    #[tokio::test]
    async fn opening_an_entity_first_file_moves_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        // The rows as this build would write them, then stored the old way.
        let written = {
            let store = EmbeddedStore::open(dir.path().join("new.redb")).unwrap();
            let rows = vec![delta("e", 5, 1), delta("e", -3, 2), delta("d", 9, 3)];
            store.apply(&Sum, &batch("l", 1, rows)).await.unwrap();
            store.rows().await.unwrap()
        };
        {
            let db = Database::create(&path).unwrap();
            let encoder = EmbeddedStore::open(dir.path().join("enc.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            for ns in ["default", "maxes"] {
                let name = format!("{ns}/rows");
                let mut t = txn.open_table(EntityFirstRowsDef::new(&name)).unwrap();
                for (key, row) in &written {
                    let bytes = encoder.encode_row(row).unwrap();
                    t.insert((key.entity.as_bytes(), key.bucket.0), bytes.as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.rows().await.unwrap(), written);
        assert_eq!(store.with_namespace("maxes").rows().await.unwrap(), written);
        assert_eq!(
            store
                .get(&RowKey::new("e", BucketKey(-3)))
                .await
                .unwrap()
                .unwrap()
                .value,
            Cell::Int(2)
        );
        // The old tables are gone; the rows keep folding where they are.
        {
            let txn = store.shared.db.begin_read().unwrap();
            let names: Vec<String> = txn
                .list_tables()
                .unwrap()
                .map(|t| t.name().to_owned())
                .collect();
            assert!(!names.iter().any(|n| n.ends_with("/rows")), "{names:?}");
        }
        store
            .apply(&Sum, &batch("l", 2, vec![delta("e", 5, 10)]))
            .await
            .unwrap();
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        let e5 = store.get(&RowKey::new("e", BucketKey(5))).await.unwrap();
        assert_eq!(e5.unwrap().value, Cell::Int(11));
        assert_eq!(store.rows().await.unwrap().len(), 3);

        // An earlier build writing to the moved file again: its rows are
        // not moved over the newer ones, and the file is not opened.
        drop(store);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn
                    .open_table(EntityFirstRowsDef::new("default/rows"))
                    .unwrap();
                t.insert((b"e".as_slice(), 5), [ROW_FORMAT].as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            err.to_string().contains("holds rows in both layouts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn lanes_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        for id in [
            "kafka:b:1",
            "kafka:a:0",
            "kafka:a:1",
            "kafka:a",
            "kafkb",
            "backfill:0",
        ] {
            store.init_lane(&LaneId::new(id), &off(0)).await.unwrap();
        }
        let ids = |v: Vec<LaneState>| {
            v.into_iter()
                .map(|s| s.lane.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(store.lanes("kafka:a").await.unwrap()),
            ["kafka:a", "kafka:a:0", "kafka:a:1"]
        );
        assert_eq!(
            ids(store.lanes("kafka:").await.unwrap()),
            ["kafka:a", "kafka:a:0", "kafka:a:1", "kafka:b:1"]
        );
        assert_eq!(store.lanes("").await.unwrap().len(), 6);
        assert!(store.lanes("zzz").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn protocol_errors_name_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        let lane = LaneId::new("l");
        let intent = BatchIntent {
            lane: lane.clone(),
            seq: 1,
            start: off(0),
            end: off(1),
            bad_records: 0,
        };
        let err = store.begin_batch(&intent).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LaneProtocol { ref store, .. } if store.starts_with("embedded:")),
            "{err}"
        );
        store.init_lane(&lane, &off(0)).await.unwrap();
        let err = store
            .begin_batch(&BatchIntent {
                seq: 2,
                ..intent.clone()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LaneProtocol { .. }), "{err}");
        store.begin_batch(&intent).await.unwrap();
        store.begin_batch(&intent).await.unwrap(); // same intent again: no-op
        assert!(matches!(
            store.commit_batch(&lane, 2).await,
            Err(StoreError::LaneProtocol { .. })
        ));
        assert_eq!(store.commit_batch(&lane, 1).await.unwrap().committed_seq, 1);
        assert_eq!(store.commit_batch(&lane, 1).await.unwrap().committed_seq, 1);
        assert!(matches!(
            store.complete_run("r", &HandoffToken::None).await,
            Err(StoreError::Run { .. })
        ));
        // A bad delta is a row error, and the batch does not land.
        let bad = RowDelta {
            key: RowKey::new("x", BucketKey(1)),
            delta: Cell::Bytes(vec![1]),
            expires_at: None,
        };
        let err = store
            .apply(&Sum, &batch("l", 1, vec![delta("y", 1, 1), bad]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Row { .. }), "{err}");
        assert!(
            store
                .get(&RowKey::new("y", BucketKey(1)))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn corrupt_values_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        {
            let txn = store.shared.db.begin_write().unwrap();
            {
                let mut rows = txn.open_table(store.rows_def()).unwrap();
                rows.insert((1, b"bad".as_slice()), [ROW_FORMAT, 0xff, 0xff].as_slice())
                    .unwrap();
                rows.insert((1, b"future".as_slice()), [9u8, 0].as_slice())
                    .unwrap();
                rows.insert((1, b"empty".as_slice()), [].as_slice())
                    .unwrap();
                let mut lanes = txn.open_table(store.lanes_def()).unwrap();
                lanes
                    .insert(b"l".as_slice(), b"{not json".as_slice())
                    .unwrap();
                lanes.insert(b"\xff".as_slice(), b"{}".as_slice()).unwrap();
                let mut runs = txn.open_table(store.runs_def()).unwrap();
                runs.insert(b"r".as_slice(), b"[]".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        for entity in ["bad", "future", "empty"] {
            let key = RowKey::new(entity, BucketKey(1));
            let err = store.get(&key).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            let err = store
                .apply(&Sum, &batch("l", 1, vec![delta(entity, 1, 1)]))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
        assert!(matches!(
            store.rows().await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.lane(&LaneId::new("l")).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.lanes("").await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store
                .begin_batch(&BatchIntent {
                    lane: LaneId::new("l"),
                    seq: 1,
                    start: off(0),
                    end: off(1),
                    bad_records: 0,
                })
                .await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.run("r").await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.complete_run("r", &HandoffToken::None).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _store = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Backend {
                    operation: "open",
                    ..
                }
            ),
            "{err}"
        );
        let not_a_db = dir.path().join("garbage");
        std::fs::write(&not_a_db, vec![0x5a; 10_000]).unwrap();
        assert!(matches!(
            EmbeddedStore::open(&not_a_db),
            Err(StoreError::Backend { .. })
        ));
    }

    /// Outside a Tokio runtime the transactions run inline.
    #[test]
    fn works_without_a_runtime() {
        fn block_on<F: std::future::Future>(f: F) -> F::Output {
            let mut f = std::pin::pin!(f);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            loop {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    return v;
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        block_on(store.apply(&Sum, &batch("l", 1, vec![delta("a", 1, 2)]))).unwrap();
        block_on(store.apply(&Sum, &batch("l", 1, vec![delta("a", 1, 2)]))).unwrap();
        let v = block_on(store.get(&RowKey::new("a", BucketKey(1)))).unwrap();
        assert_eq!(v.map(|v| v.value), Some(Cell::Int(2)));
        assert_eq!(
            block_on(store.init_lane(&LaneId::new("l"), &off(3)))
                .unwrap()
                .position,
            off(3)
        );
    }
}
