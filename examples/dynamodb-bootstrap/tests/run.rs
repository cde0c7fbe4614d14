//! The example against moto (DynamoDB) and kinesalite (Kinesis): the table
//! holds events 0..300, the stream carries events 0..400 (the table's
//! writer consumes it), the cut is the time of event 250. After the run
//! every hourly sum equals the fold of all 400 events exactly once: 250
//! from the scan, 150 from live (the 250 before the cut dropped there).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use murmur_core::store::RowKey;
use murmur_core::{StateStore as _, Window};
use murmur_state_ddb::{DynamoDbStore, StoreConfig};
use std::collections::BTreeMap;

fn services() -> bool {
    let ok = std::env::var("AWS_ENDPOINT_URL").is_ok()
        && std::env::var("AWS_ENDPOINT_URL_KINESIS").is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs this through `cargo xtask test` (moto, kinesalite)"
        );
        eprintln!("skipped: no moto/kinesalite (run through `cargo xtask test`)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_then_kinesis_through_an_event_time_cut_is_exact() {
    if !services() {
        return;
    }
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let (dynamodb, kinesis) = (
        aws_sdk_dynamodb::Client::new(&aws),
        aws_sdk_kinesis::Client::new(&aws),
    );
    let name = format!("dynamodb-bootstrap-{}", std::process::id());
    let base = murmur_core::store::now_ms() - 3_600_000;
    let event = |i: i64| (format!("e{}", i % 6), 1 + i % 4, base + i * 10_000);

    dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("event_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("event_id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    for i in 0..300 {
        let (e, c, t) = event(i);
        dynamodb
            .put_item()
            .table_name(&name)
            .item("event_id", AttributeValue::S(format!("ev-{i}")))
            .item("entity_id", AttributeValue::S(e))
            .item("count", AttributeValue::N(c.to_string()))
            .item("occurred_at_unix_ms", AttributeValue::N(t.to_string()))
            .send()
            .await
            .unwrap();
    }
    kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for i in 0..400 {
        let (e, c, t) = event(i);
        kinesis
            .put_record()
            .stream_name(&name)
            .partition_key(&e)
            .data(Blob::new(format!(
                r#"{{"entity_id":"{e}","count":{c},"occurred_at_unix_ms":{t}}}"#
            )))
            .send()
            .await
            .unwrap();
    }

    let cut = event(250).2;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamodb-bootstrap"))
        .args([&name, &name, &cut.to_string(), "3"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("records: 250"), "scan kept 250: {stdout}");
    assert!(
        stdout.contains("live: 150 records, 250 before the cut dropped"),
        "{stdout}"
    );

    let mut truth: BTreeMap<RowKey, i64> = BTreeMap::new();
    for i in 0..400 {
        let (e, c, t) = event(i);
        *truth
            .entry(RowKey::new(
                e.as_str(),
                Window::hour().bucket_of(t).unwrap(),
            ))
            .or_default() += c;
    }
    let store = DynamoDbStore::new(&dynamodb, StoreConfig::new(format!("{name}-murmur")));
    let keys: Vec<RowKey> = truth.keys().cloned().collect();
    let got: Vec<i64> = store
        .get_many(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.map_or(0, |v| v.value.as_int().unwrap()))
        .collect();
    assert_eq!(got, truth.values().copied().collect::<Vec<_>>());
}
