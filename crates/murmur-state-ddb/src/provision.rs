//! Table provisioning: create if missing (on-demand billing), wait until
//! ACTIVE, enable TTL on `ttl`; idempotent, and a clear error when an
//! existing table has the wrong key schema.

use crate::error::{Error, Result};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use std::time::{Duration, Instant};

/// How long to wait for a table to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(300);

/// The attribute DynamoDB's TTL is enabled on.
const TTL_ATTRIBUTE: &str = "ttl";

/// A table's key schema and whether it expires items.
struct Spec {
    hash: (&'static str, ScalarAttributeType),
    range: Option<(&'static str, ScalarAttributeType)>,
    ttl: bool,
}

impl Spec {
    fn describe(&self) -> String {
        describe_schema(
            Some((self.hash.0, self.hash.1.as_str())),
            self.range.as_ref().map(|(n, t)| (*n, t.as_str())),
        )
    }
}

fn describe_schema(hash: Option<(&str, &str)>, range: Option<(&str, &str)>) -> String {
    let mut parts = Vec::new();
    if let Some((name, ty)) = hash {
        parts.push(format!("{name} ({ty}, HASH)"));
    }
    if let Some((name, ty)) = range {
        parts.push(format!("{name} ({ty}, RANGE)"));
    }
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(", ")
    }
}

/// Creates the state table of [`DynamoDbStore`](crate::DynamoDbStore) unless
/// it exists: `pk` (S, HASH), `sk` (N, RANGE), on-demand billing, TTL on
/// `ttl`. Waits until the table is ACTIVE. An existing table is checked, not
/// changed (its billing mode is kept), except that TTL is enabled when it is
/// off. Fails with [`Error::KeySchemaMismatch`] when the table exists with
/// another key schema.
pub async fn ensure_state_table(client: &Client, table: &str) -> Result<()> {
    ensure(
        client,
        table,
        &Spec {
            hash: ("pk", ScalarAttributeType::S),
            range: Some(("sk", ScalarAttributeType::N)),
            ttl: true,
        },
    )
    .await
}

/// Creates the table of
/// [`DynamoDbCheckpointStore`](crate::DynamoDbCheckpointStore) unless it
/// exists: `pk` (S, HASH), on-demand billing, no TTL. See
/// [`ensure_state_table`] for what is checked.
pub async fn ensure_checkpoint_table(client: &Client, table: &str) -> Result<()> {
    ensure(
        client,
        table,
        &Spec {
            hash: ("pk", ScalarAttributeType::S),
            range: None,
            ttl: false,
        },
    )
    .await
}

/// Creates the table of [`DynamoDbAliasStore`](crate::DynamoDbAliasStore)
/// unless it exists: `pk` (S, HASH), on-demand billing, no TTL (the
/// checkpoint table's schema). See [`ensure_state_table`] for what is
/// checked.
pub async fn ensure_alias_table(client: &Client, table: &str) -> Result<()> {
    ensure_checkpoint_table(client, table).await
}

/// Creates the table of [`DynamoDbDeduper`](crate::DynamoDbDeduper) unless it
/// exists: `pk` (S, HASH), on-demand billing, TTL on `ttl`. See
/// [`ensure_state_table`] for what is checked.
pub async fn ensure_dedup_table(client: &Client, table: &str) -> Result<()> {
    ensure(
        client,
        table,
        &Spec {
            hash: ("pk", ScalarAttributeType::S),
            range: None,
            ttl: true,
        },
    )
    .await
}

fn admin_error<E>(table: &str, operation: &'static str, err: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = match err.as_service_error() {
        Some(e) => format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or_default()
        ),
        None => DisplayErrorContext(&err).to_string(),
    };
    Error::Request {
        table: table.to_owned(),
        operation,
        key: None,
        attempts: 1,
        message,
        source: Box::new(err),
    }
}

async fn describe(client: &Client, table: &str) -> Result<Option<TableDescription>> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(admin_error(table, "DescribeTable", e)),
    }
}

fn check_schema(table: &str, desc: &TableDescription, spec: &Spec) -> Result<()> {
    let type_of = |name: &str| {
        desc.attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().as_str().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let element = |kind: KeyType| {
        desc.key_schema()
            .iter()
            .find(|k| *k.key_type() == kind)
            .map(|k| (k.attribute_name().to_owned(), type_of(k.attribute_name())))
    };
    let (hash, range) = (element(KeyType::Hash), element(KeyType::Range));
    let matches = hash.as_ref().map(|(n, t)| (n.as_str(), t.as_str()))
        == Some((spec.hash.0, spec.hash.1.as_str()))
        && range.as_ref().map(|(n, t)| (n.as_str(), t.as_str()))
            == spec.range.as_ref().map(|(n, t)| (*n, t.as_str()));
    if matches {
        return Ok(());
    }
    Err(Error::KeySchemaMismatch {
        table: table.to_owned(),
        expected: spec.describe(),
        found: describe_schema(
            hash.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            range.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        ),
    })
}

async fn create(client: &Client, table: &str, spec: &Spec) -> Result<()> {
    let mut request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key_element(table, spec.hash.0, KeyType::Hash)?)
        .attribute_definitions(attr_def(table, spec.hash.0, spec.hash.1.clone())?);
    if let Some((name, ty)) = &spec.range {
        request = request
            .key_schema(key_element(table, name, KeyType::Range)?)
            .attribute_definitions(attr_def(table, name, ty.clone())?);
    }
    match request.send().await {
        Ok(_) => {
            tracing::info!(table, "created DynamoDB table");
            Ok(())
        }
        // Created concurrently by someone else: checked by the caller.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(admin_error(table, "CreateTable", e)),
    }
}

fn key_element(table: &str, name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| Error::TableSetup {
            table: table.to_owned(),
            reason: e.to_string(),
        })
}

fn attr_def(table: &str, name: &str, ty: ScalarAttributeType) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ty)
        .build()
        .map_err(|e| Error::TableSetup {
            table: table.to_owned(),
            reason: e.to_string(),
        })
}

async fn wait_active(client: &Client, table: &str) -> Result<TableDescription> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let desc = describe(client, table).await?;
        let status = desc.as_ref().and_then(|d| d.table_status().cloned());
        match (desc, status) {
            (Some(d), Some(TableStatus::Active)) => return Ok(d),
            (_, status) => {
                let status = status.map_or_else(|| "missing".to_owned(), |s| s.as_str().to_owned());
                if matches!(
                    status.as_str(),
                    "DELETING" | "INACCESSIBLE_ENCRYPTION_CREDENTIALS" | "ARCHIVED"
                ) {
                    return Err(Error::TableSetup {
                        table: table.to_owned(),
                        reason: format!("table is {status}"),
                    });
                }
                if started.elapsed() >= ACTIVE_WAIT {
                    return Err(Error::TableSetup {
                        table: table.to_owned(),
                        reason: format!("still {status} after waiting {ACTIVE_WAIT:?}"),
                    });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn ensure_ttl(client: &Client, table: &str) -> Result<()> {
    let out = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| admin_error(table, "DescribeTimeToLive", e))?;
    let desc = out.time_to_live_description();
    let status = desc.and_then(|d| d.time_to_live_status().cloned());
    let attribute = desc.and_then(|d| d.attribute_name());
    match status {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
            if attribute.is_some_and(|a| a != TTL_ATTRIBUTE) {
                return Err(Error::TableSetup {
                    table: table.to_owned(),
                    reason: format!(
                        "TTL is enabled on attribute {:?}, but Murmur writes expiries to {TTL_ATTRIBUTE:?}",
                        attribute.unwrap_or_default()
                    ),
                });
            }
            Ok(())
        }
        _ => {
            let spec = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL_ATTRIBUTE)
                .build()
                .map_err(|e| Error::TableSetup {
                    table: table.to_owned(),
                    reason: e.to_string(),
                })?;
            client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| admin_error(table, "UpdateTimeToLive", e))?;
            tracing::info!(table, attribute = TTL_ATTRIBUTE, "enabled TTL");
            Ok(())
        }
    }
}

async fn ensure(client: &Client, table: &str, spec: &Spec) -> Result<()> {
    match describe(client, table).await? {
        Some(desc) => check_schema(table, &desc, spec)?,
        None => create(client, table, spec).await?,
    }
    let desc = wait_active(client, table).await?;
    check_schema(table, &desc, spec)?;
    if spec.ttl {
        ensure_ttl(client, table).await?;
    }
    Ok(())
}
