//! Bad input gives clear errors naming table, key and reason: a table with
//! the wrong key schema, items whose value does not decode, an item that
//! would exceed DynamoDB's 400 KB limit.

use crate::common::{config, moto, unique};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use murmur_core::monoid::{HyperLogLog, Set, Sum};
use murmur_core::{
    BucketKey, LaneId, Monoid, RowDelta, RowKey, StateStore, StoreError, WriteBatch,
};
use murmur_state_ddb::{DynamoDbStore, Error, ensure_checkpoint_table, ensure_state_table};
use std::collections::BTreeSet;

fn one_row<M: Monoid>(m: &M, key: &RowKey, value: &M::Value, seq: u64) -> WriteBatch {
    WriteBatch {
        lane: LaneId::new("bad-input"),
        seq,
        rows: vec![RowDelta {
            key: key.clone(),
            delta: m.encode(value),
            expires_at: None,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_schema_is_refused_clearly() {
    let Some(moto) = moto("wrong_key_schema_is_refused_clearly").await else {
        return;
    };
    let table = unique("wrong-schema");
    // A table keyed by a numeric `id` only.
    moto.client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = ensure_state_table(&moto.client, &table).await.unwrap_err();
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!("table {table} has key schema id (N, HASH), expected pk (S, HASH), sk (N, RANGE)")
    );
    // Same for the checkpoint table spec; and a state table is not a valid
    // checkpoint table either.
    assert!(matches!(
        ensure_checkpoint_table(&moto.client, &table).await,
        Err(Error::KeySchemaMismatch { .. })
    ));
    let state = moto.state_table("right-schema").await;
    let err = ensure_checkpoint_table(&moto.client, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sk (N, RANGE)") && err.contains("expected pk (S, HASH)"),
        "{err}"
    );
    // Provisioning is idempotent on a correct table.
    ensure_state_table(&moto.client, &state).await.unwrap();

    // Writing to the wrong table anyway fails with the table, the item and
    // the service's reason.
    let store = DynamoDbStore::new(&moto.client, config(&table));
    let key = RowKey::new("e1", BucketKey(3));
    let err = store
        .apply(&Sum, &one_row(&Sum, &key, &5, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("dynamodb:{table}"))
            && err.contains("UpdateItem")
            && err.contains("pk=\"e1\", sk=3"),
        "{err}"
    );
    assert!(err.contains("ValidationException"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_name_table_key_and_reason() {
    let Some(moto) = moto("undecodable_values_name_table_key_and_reason").await else {
        return;
    };
    let table = moto.state_table("bad-v").await;
    let store = DynamoDbStore::new(&moto.client, config(&table));
    let put = |pk: &str, v: AttributeValue| {
        moto.client
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(pk.to_owned()))
            .item("sk", AttributeValue::N("7".into()))
            .item("v", v)
            .send()
    };
    // Bytes where Sum expects a number (the ADD condition fails, the merge
    // rule reports the decode error).
    put("bytes-for-sum", AttributeValue::B(Blob::new(vec![1, 2, 3])))
        .await
        .unwrap();
    let key = RowKey::new("bytes-for-sum", BucketKey(7));
    let err = store
        .apply(&Sum, &one_row(&Sum, &key, &5, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Row { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "dynamodb:{table}: row bytes-for-sum/7: cannot decode Sum value: expected an integer, found bytes"
        )
    );
    // A Sum past i64 (DynamoDB numbers go further) under a fence: replaying
    // a batch that landed changes nothing and is no error (the fence is
    // read before the value); reading it says why it cannot be used.
    moto.client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("past-i64".into()))
        .item("sk", AttributeValue::N("7".into()))
        .item("v", AttributeValue::N("9223372036854775808".into()))
        .item("ver", AttributeValue::N("3".into()))
        .item("f:bad-input", AttributeValue::N("4".into()))
        .send()
        .await
        .unwrap();
    let key = RowKey::new("past-i64", BucketKey(7));
    let replayed = store
        .apply(&Sum, &one_row(&Sum, &key, &5, 4))
        .await
        .unwrap();
    assert_eq!((replayed.rows_written, replayed.rows_unchanged), (0, 1));
    let added = store
        .apply(&Sum, &one_row(&Sum, &key, &5, 5))
        .await
        .unwrap();
    assert_eq!(added.rows_written, 1, "DynamoDB adds past i64");
    let replayed = store
        .apply(&Sum, &one_row(&Sum, &key, &5, 5))
        .await
        .unwrap();
    assert_eq!((replayed.rows_written, replayed.rows_unchanged), (0, 1));
    let err = store.get(&key).await.unwrap_err().to_string();
    assert!(
        err.contains("pk=\"past-i64\", sk=7") && err.contains("is not a 64-bit integer"),
        "{err}"
    );
    // Garbage bytes where an HLL sketch is expected.
    put(
        "garbage-hll",
        AttributeValue::B(Blob::new(vec![1, 8, 0xff])),
    )
    .await
    .unwrap();
    let hll = HyperLogLog::new(10, 0).unwrap();
    let mut sketch = hll.identity();
    hll.insert(&mut sketch, "x".into());
    let key = RowKey::new("garbage-hll", BucketKey(7));
    let err = store
        .apply(&hll, &one_row(&hll, &key, &sketch, 1))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Row { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!(
            "dynamodb:{table}: row garbage-hll/7: cannot decode HyperLogLog value"
        )),
        "{msg}"
    );
    // A string value, and a non-integer number: reads fail naming the item.
    put("string-v", AttributeValue::S("twelve".into()))
        .await
        .unwrap();
    let err = store
        .get(&RowKey::new("string-v", BucketKey(7)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&table) && err.contains("pk=\"string-v\", sk=7"),
        "{err}"
    );
    assert!(
        err.contains("attribute v has type S, expected N (integer monoids) or B (encoded monoids)"),
        "{err}"
    );
    put("fraction", AttributeValue::N("1.5".into()))
        .await
        .unwrap();
    let err = store
        .get(&RowKey::new("fraction", BucketKey(7)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pk=\"fraction\", sk=7") && err.contains("v = 1.5 is not a 64-bit integer"),
        "{err}"
    );
    // Nothing was written over the bad items.
    let item = moto
        .client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("bytes-for-sum".into()))
        .key("sk", AttributeValue::N("7".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        item.get("v"),
        Some(&AttributeValue::B(Blob::new(vec![1, 2, 3])))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_item_is_refused_clearly() {
    let Some(moto) = moto("oversized_item_is_refused_clearly").await else {
        return;
    };
    let table = moto.state_table("big").await;
    let store = DynamoDbStore::new(&moto.client, config(&table));
    let members = |from: usize, n: usize| -> BTreeSet<String> {
        (from..from + n)
            .map(|i| format!("member-{i:0>40}"))
            .collect()
    };
    // ~500 KB of members in one delta.
    let key = RowKey::new("huge-set", BucketKey(1));
    let big = members(0, 10_000);
    let err = store
        .apply(&Set, &one_row(&Set, &key, &big, 1))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("dynamodb:{table}: apply failed: table {table}: item pk=\"huge-set\", sk=1: item would be about")),
        "{msg}"
    );
    assert!(
        msg.contains("above DynamoDB's limit of 409600 bytes"),
        "{msg}"
    );
    assert!(store.get(&key).await.unwrap().is_none(), "nothing written");

    // 300 KB fits; adding another 150 KB would not: refused, the stored
    // value is kept.
    let key = RowKey::new("growing-set", BucketKey(1));
    let first = members(0, 6_000);
    store
        .apply(&Set, &one_row(&Set, &key, &first, 1))
        .await
        .unwrap();
    let err = store
        .apply(&Set, &one_row(&Set, &key, &members(6_000, 3_000), 2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pk=\"growing-set\", sk=1") && err.contains("above DynamoDB's limit"),
        "{err}"
    );
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(Set.decode(&stored.value).unwrap(), first);
}
