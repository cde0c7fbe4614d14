//! [`DynamoDbAliasStore`]: the active version of each pipeline's state, one
//! item per alias, swapped by a conditional write that only moves forward.

use crate::client::{CallStats, Ctx, Op};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use murmur_core::{AliasStore, StoreError};
use std::sync::Arc;

/// Partition key (S): `alias#<alias>`.
const PK: &str = "pk";
/// The active version (N).
const VERSION: &str = "version";
/// When it was swapped, epoch milliseconds (N).
const SWAPPED_AT: &str = "swapped_at_ms";

/// The DynamoDB [`AliasStore`]: item `pk = "alias#<alias>"` with the active
/// `version` (N) and `swapped_at_ms` (N).
///
/// A swap is one `UpdateItem` with the condition
/// `attribute_not_exists(version) OR version < :v`, so it is atomic and never
/// goes back; a refused swap reads the active version (strongly consistent)
/// for its [`StoreError::StaleSwap`]. Reads are strongly consistent; a
/// missing table reads as no swap yet (only a swap needs the table). The
/// table has the checkpoint table's key schema (create it with
/// [`ensure_alias_table`](crate::ensure_alias_table)); one table serves
/// every pipeline.
#[derive(Debug, Clone)]
pub struct DynamoDbAliasStore {
    ctx: Ctx,
}

impl DynamoDbAliasStore {
    /// An alias store on `config.table`. No request is sent.
    pub fn new(client: &Client, config: StoreConfig) -> Self {
        DynamoDbAliasStore {
            ctx: Ctx::new(client, &config),
        }
    }

    /// Counts into `metrics` instead of this store's own counters.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.ctx.metrics = metrics;
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.ctx.table
    }

    fn key(alias: &str) -> String {
        format!("alias#{alias}")
    }

    /// The active version of `alias` (see [`AliasStore::active`]).
    pub async fn active_version(&self, alias: &str) -> Result<Option<u64>> {
        let key = Self::key(alias);
        let stats = CallStats::default();
        let request = self
            .ctx
            .client
            .get_item()
            .table_name(&*self.ctx.table)
            .key(PK, AttributeValue::S(key.clone()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let out = match self
            .ctx
            .send(Op::GetItem, &stats, || request.clone().send())
            .await
        {
            Ok(out) => out,
            // No alias table: nothing was ever swapped (deployments from
            // before versions, readers without --create-tables).
            Err(f)
                if matches!(
                    f.service_error(),
                    Some(GetItemError::ResourceNotFoundException(_))
                ) =>
            {
                return Ok(None);
            }
            Err(f) => return Err(f.into_error(&self.ctx.table, Op::GetItem, Some(key.clone()))),
        };
        self.ctx.capacity(Op::GetItem, out.consumed_capacity());
        let Some(item) = out.item else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadItem {
            table: self.ctx.table.to_string(),
            key: key.clone(),
            reason,
        };
        match item.get(VERSION) {
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{VERSION} {n:?} is not a version number"))),
            Some(other) => Err(bad(format!("{VERSION} is not a number: {other:?}"))),
            None => Err(bad(format!("no {VERSION} attribute"))),
        }
    }

    /// Swaps `alias` to `version` (see [`AliasStore::swap`]); `Ok(false)`
    /// when the active version is not older.
    pub async fn swap_version(&self, alias: &str, version: u64) -> Result<bool> {
        let key = Self::key(alias);
        let stats = CallStats::default();
        let request = self
            .ctx
            .client
            .update_item()
            .table_name(&*self.ctx.table)
            .key(PK, AttributeValue::S(key.clone()))
            .update_expression("SET #v = :v, #at = :at")
            .condition_expression("attribute_not_exists(#v) OR #v < :v")
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#at", SWAPPED_AT)
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            .expression_attribute_values(
                ":at",
                AttributeValue::N(murmur_core::store::now_ms().to_string()),
            )
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        match self
            .ctx
            .send(Op::UpdateItem, &stats, || request.clone().send())
            .await
        {
            Ok(out) => {
                self.ctx.capacity(Op::UpdateItem, out.consumed_capacity());
                Ok(true)
            }
            Err(f)
                if matches!(
                    f.service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                // Refused on a retry with `version` now active: an earlier
                // attempt of this call landed and its answer was lost.
                if f.attempts > 1 && self.active_version(alias).await? == Some(version) {
                    return Ok(true);
                }
                Ok(false)
            }
            Err(f) => Err(f.into_error(&self.ctx.table, Op::UpdateItem, Some(key))),
        }
    }
}

#[async_trait::async_trait]
impl AliasStore for DynamoDbAliasStore {
    async fn active(&self, alias: &str) -> std::result::Result<Option<u64>, StoreError> {
        self.active_version(alias)
            .await
            .map_err(|e| e.into_store_error("active"))
    }

    async fn swap(&self, alias: &str, version: u64) -> std::result::Result<(), StoreError> {
        let swapped = self
            .swap_version(alias, version)
            .await
            .map_err(|e| e.into_store_error("swap"))?;
        if swapped {
            return Ok(());
        }
        let active = self.active(alias).await?.unwrap_or_default();
        Err(StoreError::StaleSwap {
            store: format!("dynamodb:{}", self.ctx.table),
            alias: alias.to_owned(),
            active,
            requested: version,
        })
    }
}
