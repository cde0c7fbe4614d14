//! Query folds: each query is one batched read followed by a monoid fold.

use crate::error::{MonoidError, PipelineError, StoreError};
use crate::monoid::Monoid;
use crate::store::{RowKey, StateStore};
use crate::window::{BucketKey, Window};

/// Most rows one query may read (a year of minute buckets is 525,600).
pub const MAX_QUERY_ROWS: usize = 1_000_000;

/// An error answering a query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The time arguments do not map to buckets.
    #[error(transparent)]
    Window(#[from] PipelineError),
    /// A stored value does not decode as this monoid.
    #[error("row {entity}/{bucket}: {source}")]
    Decode {
        /// Entity of the row.
        entity: String,
        /// Bucket key of the row.
        bucket: i64,
        /// Why.
        #[source]
        source: MonoidError,
    },
    /// The query spans more rows than [`MAX_QUERY_ROWS`].
    #[error("query spans {rows} rows, more than the limit of {limit}")]
    TooLarge {
        /// Rows the query would read.
        rows: usize,
        /// The limit.
        limit: usize,
    },
}

/// Reads `keys` in one batched read and folds consecutive groups of
/// `group` rows into one value each.
async fn fold_groups<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    keys: &[RowKey],
    group: usize,
) -> Result<Vec<M::Value>, QueryError> {
    if keys.len() > MAX_QUERY_ROWS {
        return Err(QueryError::TooLarge {
            rows: keys.len(),
            limit: MAX_QUERY_ROWS,
        });
    }
    let rows = store.get_many(keys).await?;
    let mut out = Vec::with_capacity(keys.len() / group.max(1));
    if group == 0 {
        return Ok(out);
    }
    for (chunk_keys, chunk_rows) in keys.chunks(group).zip(rows.chunks(group)) {
        let mut acc = monoid.identity();
        for (key, row) in chunk_keys.iter().zip(chunk_rows) {
            if let Some(row) = row {
                let decode_err = |source| QueryError::Decode {
                    entity: key.entity.to_string(),
                    bucket: key.bucket.0,
                    source,
                };
                let v = monoid.decode(&row.value).map_err(decode_err)?;
                monoid.combine_into(&mut acc, &v).map_err(decode_err)?;
            }
        }
        out.push(acc);
    }
    Ok(out)
}

fn cross(entities: &[&str], buckets: &[BucketKey]) -> Vec<RowKey> {
    entities
        .iter()
        .flat_map(|e| buckets.iter().map(move |b| RowKey::new(*e, *b)))
        .collect()
}

/// The value of one row (identity when absent).
pub async fn get<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    key: &RowKey,
) -> Result<M::Value, QueryError> {
    Ok(fold_groups(store, monoid, std::slice::from_ref(key), 1)
        .await?
        .remove(0))
}

/// The values of many rows, aligned with `keys`, in one batched read.
pub async fn get_many<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    keys: &[RowKey],
) -> Result<Vec<M::Value>, QueryError> {
    fold_groups(store, monoid, keys, 1).await
}

/// The fold of the last `n` buckets of `entity`, including the bucket that
/// holds `now_ms`.
pub async fn window<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    window: &Window,
    entity: &str,
    now_ms: i64,
    n: usize,
) -> Result<M::Value, QueryError> {
    Ok(window_many(store, monoid, window, &[entity], now_ms, n)
        .await?
        .remove(0))
}

/// [`window`] for many entities, in one batched read; aligned with
/// `entities`.
pub async fn window_many<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    window: &Window,
    entities: &[&str],
    now_ms: i64,
    n: usize,
) -> Result<Vec<M::Value>, QueryError> {
    let buckets = window.last_n(now_ms, n)?;
    if buckets.is_empty() {
        return Ok(entities.iter().map(|_| monoid.identity()).collect());
    }
    fold_groups(store, monoid, &cross(entities, &buckets), buckets.len()).await
}

/// The fold of the buckets of `entity` overlapping the inclusive time range
/// `[from_ms, to_ms]`.
pub async fn range<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    window: &Window,
    entity: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<M::Value, QueryError> {
    Ok(range_many(store, monoid, window, &[entity], from_ms, to_ms)
        .await?
        .remove(0))
}

/// [`range`] for many entities, in one batched read; aligned with
/// `entities`.
pub async fn range_many<M: Monoid>(
    store: &dyn StateStore,
    monoid: &M,
    window: &Window,
    entities: &[&str],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<M::Value>, QueryError> {
    let buckets = window.range(from_ms, to_ms)?;
    if buckets.is_empty() {
        return Ok(entities.iter().map(|_| monoid.identity()).collect());
    }
    let rows = entities.len().saturating_mul(buckets.len());
    if rows > MAX_QUERY_ROWS {
        return Err(QueryError::TooLarge {
            rows,
            limit: MAX_QUERY_ROWS,
        });
    }
    fold_groups(store, monoid, &cross(entities, &buckets), buckets.len()).await
}
