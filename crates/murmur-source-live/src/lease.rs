//! The Kinesis shard lease table in DynamoDB.
//!
//! One item per shard, keyed by its lane id (`kinesis:<stream>:<shardId>`):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `lease` | S | the lane id (partition key) |
//! | `owner` | S | the worker holding the lease; absent when released or finished |
//! | `counter` | N | heartbeat: incremented by every take, renew and release |
//! | `expires_at_ms` | N | owner's clock + lease duration at the last renew (for people and tools) |
//! | `checkpoint` | S | last acknowledged position, JSON (informational: the checkpoint store is the truth) |
//! | `finished` | BOOL | the shard is closed and fully written; never taken again; lets children start |
//!
//! Every write is conditional. A worker *takes* a lease that does not exist
//! (`attribute_not_exists`), or one whose `counter` it has watched stand
//! still for a whole lease duration on its own clock (so clock skew between
//! workers does not matter), conditioned on that counter; it *renews* on
//! `owner = me AND counter = mine`. A failed renew means the lease was
//! stolen: the lane's [`LeaseGuard`](crate::LeaseGuard) fails from then on,
//! and already before that once the lease is older than its trusted
//! lifetime.

use crate::error::{Error, Result};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use murmur_core::Position;
use std::collections::HashMap;
use std::time::Duration;

/// Creates the lease table (on-demand billing) unless it exists, and waits
/// until it is active.
pub async fn ensure_lease_table(client: &Client, table: &str) -> Result<()> {
    let err = |operation: &'static str| {
        move |e: String| Error::LeaseTable {
            table: table.to_owned(),
            operation,
            message: e,
        }
    };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("lease")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| err("CreateTable")(e.to_string()))?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("lease")
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| err("CreateTable")(e.to_string()))?,
        )
        .send()
        .await;
    if let Err(e) = created {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        if !exists {
            return Err(err("CreateTable")(DisplayErrorContext(&e).to_string()));
        }
    }
    for _ in 0..120 {
        let d = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| err("DescribeTable")(DisplayErrorContext(&e).to_string()))?;
        if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(err("DescribeTable")(
        "the table did not become active within 60 s".into(),
    ))
}

/// One lease item as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub key: String,
    pub owner: Option<String>,
    pub counter: i64,
    pub finished: bool,
}

/// The lease table, as one worker uses it.
#[derive(Debug, Clone)]
pub(crate) struct LeaseTable {
    pub client: Client,
    pub table: String,
    pub worker: String,
    pub duration: Duration,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn now_ms() -> i64 {
    murmur_core::store::now_ms()
}

/// `Ok(false)` for a failed condition, `Err` for anything else.
fn conditional<E, R>(
    table: &str,
    operation: &'static str,
    r: Result<impl Sized, SdkError<E, R>>,
    is_condition: impl Fn(&E) -> bool,
) -> Result<bool>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(&is_condition) => Ok(false),
        Err(e) => Err(Error::LeaseTable {
            table: table.to_owned(),
            operation,
            message: DisplayErrorContext(&e).to_string(),
        }),
    }
}

impl LeaseTable {
    fn expiry(&self) -> AttributeValue {
        n(now_ms() + i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX / 2))
    }

    /// Every lease whose key starts with `prefix`.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<LeaseRow>> {
        let mut rows = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(#l, :p)")
                .expression_attribute_names("#l", "lease")
                .expression_attribute_values(":p", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| Error::LeaseTable {
                    table: self.table.clone(),
                    operation: "Scan",
                    message: DisplayErrorContext(&e).to_string(),
                })?;
            for item in out.items() {
                let key = match item.get("lease") {
                    Some(AttributeValue::S(k)) => k.clone(),
                    _ => continue,
                };
                rows.push(LeaseRow {
                    key,
                    owner: match item.get("owner") {
                        Some(AttributeValue::S(o)) => Some(o.clone()),
                        _ => None,
                    },
                    counter: match item.get("counter") {
                        Some(AttributeValue::N(c)) => c.parse().unwrap_or(0),
                        _ => 0,
                    },
                    finished: matches!(item.get("finished"), Some(AttributeValue::Bool(true))),
                });
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(rows),
            }
        }
    }

    /// Takes a lease nobody ever held (`seen: None`) or one whose counter
    /// stood at `seen`. Returns the new counter, `None` if someone was faster.
    pub async fn take(&self, key: &str, seen: Option<i64>) -> Result<Option<i64>> {
        let next = seen.unwrap_or(0) + 1;
        let taken = match seen {
            None => conditional(
                &self.table,
                "PutItem (take new lease)",
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .item("lease", s(key))
                    .item("owner", s(&self.worker))
                    .item("counter", n(next))
                    .item("expires_at_ms", self.expiry())
                    .condition_expression("attribute_not_exists(#l)")
                    .expression_attribute_names("#l", "lease")
                    .send()
                    .await,
                |e| e.is_conditional_check_failed_exception(),
            )?,
            Some(seen) => conditional(
                &self.table,
                "UpdateItem (take lease)",
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("lease", s(key))
                    .update_expression("SET #o = :me, #c = :next, #e = :exp")
                    .condition_expression("#c = :seen AND (attribute_not_exists(#f) OR #f = :no)")
                    .expression_attribute_names("#o", "owner")
                    .expression_attribute_names("#c", "counter")
                    .expression_attribute_names("#e", "expires_at_ms")
                    .expression_attribute_names("#f", "finished")
                    .expression_attribute_values(":me", s(&self.worker))
                    .expression_attribute_values(":next", n(next))
                    .expression_attribute_values(":exp", self.expiry())
                    .expression_attribute_values(":seen", n(seen))
                    .expression_attribute_values(":no", AttributeValue::Bool(false))
                    .send()
                    .await,
                |e| e.is_conditional_check_failed_exception(),
            )?,
        };
        Ok(taken.then_some(next))
    }

    /// Renews a lease held at `counter`; `None` if it was lost.
    pub async fn renew(&self, key: &str, counter: i64) -> Result<Option<i64>> {
        let next = counter + 1;
        let ok = conditional(
            &self.table,
            "UpdateItem (renew lease)",
            self.client
                .update_item()
                .table_name(&self.table)
                .key("lease", s(key))
                .update_expression("SET #c = :next, #e = :exp")
                .condition_expression("#o = :me AND #c = :c")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_names("#c", "counter")
                .expression_attribute_names("#e", "expires_at_ms")
                .expression_attribute_values(":me", s(&self.worker))
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":c", n(counter))
                .expression_attribute_values(":exp", self.expiry())
                .send()
                .await,
            |e| e.is_conditional_check_failed_exception(),
        )?;
        Ok(ok.then_some(next))
    }

    /// Records an acknowledged position while we own the lease; `finished`
    /// also marks the shard done and gives the lease up. `false` if the
    /// lease is no longer ours.
    pub async fn checkpoint(&self, key: &str, position: &Position, finished: bool) -> Result<bool> {
        let json = serde_json::to_string(position).expect("position serializes");
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("lease", s(key))
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#p", "checkpoint")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":p", s(&json));
        update = if finished {
            update
                .update_expression("SET #p = :p, #f = :yes REMOVE #o")
                .expression_attribute_names("#f", "finished")
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
        } else {
            update.update_expression("SET #p = :p")
        };
        conditional(
            &self.table,
            "UpdateItem (checkpoint lease)",
            update.send().await,
            |e| e.is_conditional_check_failed_exception(),
        )
    }

    /// Gives a lease up (graceful shutdown).
    pub async fn release(&self, key: &str, counter: i64) -> Result<bool> {
        conditional(
            &self.table,
            "UpdateItem (release lease)",
            self.client
                .update_item()
                .table_name(&self.table)
                .key("lease", s(key))
                .update_expression("SET #c = :next REMOVE #o")
                .condition_expression("#o = :me AND #c = :c")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_names("#c", "counter")
                .expression_attribute_values(":me", s(&self.worker))
                .expression_attribute_values(":c", n(counter))
                .expression_attribute_values(":next", n(counter + 1))
                .send()
                .await,
            |e| e.is_conditional_check_failed_exception(),
        )
    }
}
