//! The state table's item layout: attribute names, conversions between
//! DynamoDB items and [`StoredRow`]s, and item size estimates.

use crate::error::Error;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use murmur_core::store::{Fences, StoredRow};
use murmur_core::{BucketKey, Cell, LaneId, RowKey, StoredValue};
use std::collections::HashMap;

/// Partition key: the entity (S).
pub(crate) const PK: &str = "pk";
/// Sort key: the bucket key (N).
pub(crate) const SK: &str = "sk";
/// The value: N for integer cells, B for byte cells.
pub(crate) const VALUE: &str = "v";
/// Expiry, epoch seconds (N); the table's TTL attribute.
pub(crate) const TTL: &str = "ttl";
/// Write counter for compare-and-set (N).
pub(crate) const VERSION: &str = "ver";
/// Prefix of the per-lane fence attributes: `f:<lane>` (N).
pub(crate) const FENCE_PREFIX: &str = "f:";

/// DynamoDB's item size limit.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The fence attribute of `lane`.
pub(crate) fn fence_attr(lane: &LaneId) -> String {
    format!("{FENCE_PREFIX}{lane}")
}

/// `pk=.., sk=..` for messages.
pub(crate) fn describe_key(key: &RowKey) -> String {
    format!("pk={:?}, sk={}", &*key.entity, key.bucket.0)
}

/// The primary key attributes of `key`.
pub(crate) fn key_attrs(key: &RowKey) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(key.entity.to_string())),
        (SK.to_owned(), AttributeValue::N(key.bucket.0.to_string())),
    ])
}

/// The attribute value of a cell.
pub(crate) fn cell_attr(cell: &Cell) -> AttributeValue {
    match cell {
        Cell::Int(v) => AttributeValue::N(v.to_string()),
        Cell::Bytes(b) => AttributeValue::B(Blob::new(b.clone())),
    }
}

fn bad(table: &str, key: &str, reason: impl Into<String>) -> Error {
    Error::BadItem {
        table: table.to_owned(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::N(_) => "N",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::S(_) => "S",
        AttributeValue::Ss(_) => "SS",
        _ => "an unknown type",
    }
}

fn int_attr(table: &str, key: &str, item: &Item, name: &str) -> Result<Option<i64>, Error> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => n.parse::<i64>().map(Some).map_err(|_| {
            bad(
                table,
                key,
                format!("attribute {name} = {n} is not a 64-bit integer"),
            )
        }),
        Some(other) => Err(bad(
            table,
            key,
            format!("attribute {name} has type {}, expected N", type_name(other)),
        )),
    }
}

fn value_cell(table: &str, key: &str, item: &Item) -> Result<Cell, Error> {
    match item.get(VALUE) {
        Some(AttributeValue::N(n)) => n.parse::<i64>().map(Cell::Int).map_err(|_| {
            bad(
                table,
                key,
                format!("attribute {VALUE} = {n} is not a 64-bit integer"),
            )
        }),
        Some(AttributeValue::B(b)) => Ok(Cell::Bytes(b.as_ref().to_vec())),
        Some(other) => Err(bad(
            table,
            key,
            format!(
                "attribute {VALUE} has type {}, expected N (integer monoids) or B (encoded monoids)",
                type_name(other)
            ),
        )),
        None => Err(bad(
            table,
            key,
            format!("item has no value attribute {VALUE}"),
        )),
    }
}

/// The row key of an item returned by a read.
pub(crate) fn row_key(table: &str, item: &Item) -> Result<RowKey, Error> {
    let entity = match item.get(PK) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => {
            return Err(bad(
                table,
                "(unknown)",
                format!("item has no string key attribute {PK}"),
            ));
        }
    };
    let bucket = int_attr(table, &format!("pk={entity:?}"), item, SK)?.ok_or_else(|| {
        bad(
            table,
            &format!("pk={entity:?}"),
            format!("item has no number key attribute {SK}"),
        )
    })?;
    Ok(RowKey::new(entity, BucketKey(bucket)))
}

/// The value part of an item.
pub(crate) fn stored_value(table: &str, key: &RowKey, item: &Item) -> Result<StoredValue, Error> {
    let k = describe_key(key);
    Ok(StoredValue {
        value: value_cell(table, &k, item)?,
        expires_at: int_attr(table, &k, item, TTL)?,
    })
}

/// An item as a [`StoredRow`]; also whether it carries a version attribute.
/// The fence of `lane` in `item`, if it holds a readable one.
pub(crate) fn fence_of(item: &Item, lane: &LaneId) -> Option<u64> {
    match item.get(&fence_attr(lane))? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

pub(crate) fn stored_row(
    table: &str,
    key: &RowKey,
    item: &Item,
) -> Result<(StoredRow, bool), Error> {
    let k = describe_key(key);
    let mut fences = Fences::default();
    for (name, value) in item {
        if let Some(lane) = name.strip_prefix(FENCE_PREFIX) {
            let seq = match value {
                AttributeValue::N(n) => n.parse::<u64>().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                bad(
                    table,
                    &k,
                    format!("fence attribute {name} is not a non-negative integer"),
                )
            })?;
            fences.set(&LaneId::new(lane), seq);
        }
    }
    let version = int_attr(table, &k, item, VERSION)?;
    let version_u64 = match version {
        None => 0,
        Some(v) => u64::try_from(v)
            .map_err(|_| bad(table, &k, format!("attribute {VERSION} = {v} is negative")))?,
    };
    Ok((
        StoredRow {
            value: value_cell(table, &k, item)?,
            expires_at: int_attr(table, &k, item, TTL)?,
            fences,
            version: version_u64,
        },
        version.is_some(),
    ))
}

/// An upper bound of a number attribute's stored size (DynamoDB: about one
/// byte per two significant digits plus one).
const NUMBER_BYTES: usize = 21;

/// Estimated size of the item holding `row` under `key`, by DynamoDB's rule
/// (attribute name lengths plus value sizes), numbers counted at their upper
/// bound.
pub(crate) fn estimated_size(key: &RowKey, row: &StoredRow) -> usize {
    let value = match &row.value {
        Cell::Int(_) => NUMBER_BYTES,
        Cell::Bytes(b) => b.len(),
    };
    let mut size = PK.len() + key.entity.len() + SK.len() + NUMBER_BYTES + VALUE.len() + value;
    size += VERSION.len() + NUMBER_BYTES;
    if row.expires_at.is_some() {
        size += TTL.len() + NUMBER_BYTES;
    }
    size += row
        .fences
        .iter()
        .map(|(lane, _)| FENCE_PREFIX.len() + lane.as_str().len() + NUMBER_BYTES)
        .sum::<usize>();
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RowKey {
        RowKey::new("e", BucketKey(5))
    }

    #[test]
    fn round_trips_a_row() {
        let mut item = key_attrs(&key());
        item.insert(VALUE.into(), cell_attr(&Cell::Bytes(vec![1, 2, 3])));
        item.insert(TTL.into(), AttributeValue::N("99".into()));
        item.insert(VERSION.into(), AttributeValue::N("4".into()));
        item.insert(
            fence_attr(&LaneId::new("kafka:t:0")),
            AttributeValue::N("7".into()),
        );
        assert_eq!(row_key("t", &item).unwrap(), key());
        let (row, has_version) = stored_row("t", &key(), &item).unwrap();
        assert!(has_version);
        assert_eq!(row.value, Cell::Bytes(vec![1, 2, 3]));
        assert_eq!(row.expires_at, Some(99));
        assert_eq!(row.version, 4);
        assert_eq!(row.fences.get(&LaneId::new("kafka:t:0")), Some(7));
        assert!(estimated_size(&key(), &row) > 3);
    }

    #[test]
    fn bad_values_name_table_key_and_reason() {
        let mut item = key_attrs(&key());
        item.insert(VALUE.into(), AttributeValue::S("oops".into()));
        let err = stored_value("counters", &key(), &item)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("counters") && err.contains("pk=\"e\", sk=5") && err.contains("type S"),
            "{err}"
        );
        item.insert(VALUE.into(), AttributeValue::N("1.5".into()));
        let err = stored_value("counters", &key(), &item)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a 64-bit integer"), "{err}");
        item.remove(VALUE);
        let err = stored_value("counters", &key(), &item)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no value attribute"), "{err}");
    }
}
