//! [`DynamoDbDeduper`]: per-event claims with conditional puts.

use crate::client::{CallStats, Ctx, Op};
use crate::config::StoreConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use murmur_core::{Claim, Deduper, LaneId, StoreError};
use std::collections::HashSet;
use std::sync::Arc;

/// Partition key (S): `[<namespace>#]<event id>`.
const PK: &str = "pk";
/// Owning lane (S).
const LANE: &str = "lane";
/// Owning batch sequence number (N).
const SEQ: &str = "seq";
/// Expiry, epoch seconds (N); the table's TTL attribute.
const TTL: &str = "ttl";

/// The DynamoDB [`Deduper`]: one item per claimed event id, owned by the
/// batch `(lane, seq)` that claimed it first.
///
/// Each claim is one `PutItem` with the condition
/// `attribute_not_exists(pk) OR (lane = :lane AND seq = :seq)`: the first
/// claim and a replay by the same batch succeed ([`Claim::Owned`]); a claim
/// by any other batch fails the condition ([`Claim::Duplicate`]). An id
/// repeated within one call is sent once and reported as a duplicate after
/// its first occurrence. Claims carry the `expires_at` of the call as `ttl`.
///
/// Event ids are only unique within a source; give each pipeline its own
/// [`namespace`](DynamoDbDeduper::with_namespace) when pipelines share the
/// table. Create the table with
/// [`ensure_dedup_table`](crate::ensure_dedup_table).
#[derive(Debug, Clone)]
pub struct DynamoDbDeduper {
    ctx: Ctx,
    namespace: Option<Arc<str>>,
}

/// DynamoDB's partition key limit, in bytes: a claim key that would be
/// longer is claimed by its id's SHA-256 instead.
const MAX_KEY_BYTES: usize = 2048;

/// `namespace` with `%` and `#` percent-escaped.
fn escape(namespace: &str) -> String {
    namespace.replace('%', "%25").replace('#', "%23")
}

/// The partition key of the claim of `id`: `[<namespace>#]<id>`, or
/// `[<namespace>#]sha256:<hex>` when that would not fit in
/// [`MAX_KEY_BYTES`] (such claims failed before, so no stored claim changes
/// key; a plain id meets a hashed one only by spelling out the digest of
/// another).
fn claim_key(namespace: Option<&str>, id: &str) -> String {
    use sha2::Digest as _;
    let prefix = namespace.map_or(0, |ns| ns.len() + 1);
    let id = if prefix + id.len() > MAX_KEY_BYTES {
        let digest = sha2::Sha256::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        std::borrow::Cow::Owned(format!("sha256:{hex}"))
    } else {
        std::borrow::Cow::Borrowed(id)
    };
    match namespace {
        Some(ns) => format!("{ns}#{id}"),
        None => id.into_owned(),
    }
}

impl DynamoDbDeduper {
    /// A deduper on `config.table` (see
    /// [`DynamoDbStore::new`](crate::DynamoDbStore::new) for what happens to
    /// `client`). No request is sent.
    pub fn new(client: &Client, config: StoreConfig) -> Self {
        DynamoDbDeduper {
            ctx: Ctx::new(client, &config),
            namespace: None,
        }
    }

    /// Prefixes every claimed id with `<namespace>#`, so pipelines sharing
    /// the table do not see each other's events as duplicates. A `#` or `%`
    /// in the namespace is percent-escaped, so the first `#` of a key always
    /// ends its namespace (namespace `a#b` with id `c` and namespace `a`
    /// with id `b#c` are different claims; a namespace with either
    /// character claimed under other keys before this was so).
    pub fn with_namespace(mut self, namespace: impl Into<Arc<str>>) -> Self {
        let namespace: Arc<str> = namespace.into();
        self.namespace = Some(if namespace.contains(['#', '%']) {
            escape(&namespace).into()
        } else {
            namespace
        });
        self
    }

    /// Built from shared AWS configuration (credentials, region, endpoint),
    /// e.g. from `aws_config::load_from_env()` in a binary.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, config: StoreConfig) -> Self {
        Self::new(&Client::new(sdk), config)
    }

    /// Counts into `metrics` instead of this deduper's own counters.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.ctx.metrics = metrics;
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.ctx.table
    }

    /// Claims ids (see [`Deduper::claim`]); the typed-error version.
    pub async fn claim_ids(
        &self,
        lane: &LaneId,
        seq: u64,
        event_ids: &[&str],
        expires_at: Option<i64>,
    ) -> Result<Vec<Claim>> {
        let stats = CallStats::default();
        let mut seen = HashSet::with_capacity(event_ids.len());
        let first: Vec<bool> = event_ids.iter().map(|id| seen.insert(*id)).collect();
        // Boxed up front: keeps the stream's type free of closures, which
        // `async_trait`'s `Send` check cannot see through.
        let claims: Vec<BoxFuture<'_, Result<(usize, bool)>>> = event_ids
            .iter()
            .enumerate()
            .filter(|(i, _)| first[*i])
            .map(|(i, id)| {
                let stats = &stats;
                async move {
                    self.claim_one(lane, seq, id, expires_at, stats)
                        .await
                        .map(|o| (i, o))
                }
                .boxed()
            })
            .collect();
        let owned: Vec<(usize, bool)> = stream::iter(claims)
            .buffer_unordered(self.ctx.max_concurrency)
            .try_collect()
            .await?;
        let mut out = vec![Claim::Duplicate; event_ids.len()];
        for (i, is_owned) in owned {
            if is_owned {
                out[i] = Claim::Owned;
            }
        }
        Ok(out)
    }

    async fn claim_one(
        &self,
        lane: &LaneId,
        seq: u64,
        id: &str,
        expires_at: Option<i64>,
        stats: &CallStats,
    ) -> Result<bool> {
        let pk = claim_key(self.namespace.as_deref(), id);
        let mut request = self
            .ctx
            .client
            .put_item()
            .table_name(&*self.ctx.table)
            .item(PK, AttributeValue::S(pk.clone()))
            .item(LANE, AttributeValue::S(lane.to_string()))
            .item(SEQ, AttributeValue::N(seq.to_string()))
            .condition_expression("attribute_not_exists(#pk) OR (#lane = :lane AND #seq = :seq)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#lane", LANE)
            .expression_attribute_names("#seq", SEQ)
            .expression_attribute_values(":lane", AttributeValue::S(lane.to_string()))
            .expression_attribute_values(":seq", AttributeValue::N(seq.to_string()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if let Some(ttl) = expires_at {
            request = request.item(TTL, AttributeValue::N(ttl.to_string()));
        }
        match self
            .ctx
            .send(Op::PutItem, stats, || request.clone().send())
            .await
        {
            Ok(out) => {
                self.ctx.capacity(Op::PutItem, out.consumed_capacity());
                Ok(true)
            }
            Err(f)
                if matches!(
                    f.service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(f) => Err(f.into_error(&self.ctx.table, Op::PutItem, Some(format!("pk={pk:?}")))),
        }
    }
}

#[async_trait::async_trait]
impl Deduper for DynamoDbDeduper {
    async fn claim(
        &self,
        lane: &LaneId,
        seq: u64,
        event_ids: &[&str],
        expires_at: Option<i64>,
    ) -> Result<Vec<Claim>, StoreError> {
        self.claim_ids(lane, seq, event_ids, expires_at)
            .await
            .map_err(|e| e.into_store_error("claim"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_are_unambiguous_and_fit_a_partition_key() {
        assert_eq!(claim_key(None, "e1"), "e1");
        assert_eq!(claim_key(Some("p"), "e1"), "p#e1");
        let a = escape("a#b");
        assert_eq!(claim_key(Some(&a), "c"), "a%23b#c");
        assert_ne!(claim_key(Some(&a), "c"), claim_key(Some("a"), "b#c"));
        assert_eq!(escape("50%"), "50%25");
        let long = "x".repeat(5000);
        let key = claim_key(Some("p"), &long);
        assert_eq!(key.len(), "p#sha256:".len() + 64);
        assert_ne!(key, claim_key(Some("p"), &"x".repeat(5001)));
        assert_eq!(claim_key(None, &"y".repeat(2048)), "y".repeat(2048));
        assert_eq!(claim_key(Some("p"), &"y".repeat(2046)).len(), 2048);
        assert!(claim_key(Some("p"), &"y".repeat(2047)).starts_with("p#sha256:"));
    }
}
