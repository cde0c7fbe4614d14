//! DynamoDB (moto) -> export to S3 (moto) as gzipped JSON Lines and
//! Parquet; the files are counted by DuckDB and pyarrow, not by Murmur.

use crate::common::*;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, Select, StreamSpecification, StreamViewType, WriteRequest,
};
use futures::StreamExt as _;
use murmur_archive::{Encoder, ExportFormat, ExportOptions, MANIFEST, export_dynamodb};
use murmur_core::CountEvent;
use murmur_source_snapshot::dynamodb::DynamoDbScanOptions;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use std::collections::HashMap;

const ITEMS: usize = 10_000;

async fn create_table(client: &Client, table: &str) {
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("entity_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("entity_id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

fn item(i: usize) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "entity_id".into(),
            AttributeValue::S(format!("entity-{i:05}")),
        ),
        ("count".into(), AttributeValue::N(((i % 7) + 1).to_string())),
        (
            "occurred_at_unix_ms".into(),
            AttributeValue::N((T0 + i as i64 * 1000).to_string()),
        ),
        (
            "tags".into(),
            AttributeValue::Ss(vec![format!("t{}", i % 3)]),
        ),
    ])
}

async fn write_items(client: &Client, table: &str) {
    let batches: Vec<Vec<usize>> = (0..ITEMS)
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[usize]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|batch| async move {
            let mut requests: Vec<WriteRequest> = batch
                .iter()
                .map(|&i| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item(i)))
                                .build()
                                .unwrap(),
                        )
                        .build()
                })
                .collect();
            while !requests.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await
                    .unwrap();
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// The table's item count, by a `Select=COUNT` scan.
async fn table_count(client: &Client, table: &str) -> u64 {
    let pages: Vec<_> = client
        .scan()
        .table_name(table)
        .select(Select::Count)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap();
    pages.iter().map(|p| p.count() as u64).sum()
}

/// Downloads the bucket's `prefix` and counts rows and sums `count` with
/// DuckDB (JSON Lines) or pyarrow (Parquet).
const COUNT_FILES: &str = r#"
import sys, os, tempfile, boto3
endpoint, bucket, prefix, kind = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
d = tempfile.mkdtemp()
for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
    name = o["Key"].rsplit("/", 1)[1]
    if name.startswith("part-"):
        s3.download_file(bucket, o["Key"], os.path.join(d, name))
if kind == "jsonl":
    import duckdb
    rows, total = duckdb.connect().execute(
        f"SELECT count(*), sum(count) FROM read_json_auto('{d}/*.jsonl.gz')").fetchone()
else:
    import pyarrow.parquet as pq, pyarrow.compute as pc
    t = pq.read_table(d)
    rows, total = t.num_rows, pc.sum(t.column("count")).as_py()
print(rows, total)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_item_table_exports_in_4_segments_to_files_other_tools_read() {
    let Some((store, bucket)) = s3_store("the DynamoDB export test") else {
        return;
    };
    let config = aws_config::load_from_env().await;
    let client = Client::new(&config);
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let table = unique("export");
    create_table(&client, &table).await;
    write_items(&client, &table).await;
    let want_total: i64 = (0..ITEMS).map(|i| (i % 7) as i64 + 1).sum();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();

    let mut scan = DynamoDbScanOptions::new(&table);
    scan.segments = 4;
    scan.page_size = Some(500);
    let prefix = Path::from("exports/jsonl");
    let manifest = export_dynamodb::<serde_json::Value>(
        client.clone(),
        Some(&streams),
        store.clone(),
        &prefix,
        ExportOptions::new(scan.clone(), ExportFormat::JsonLinesGzip),
    )
    .await
    .unwrap();
    assert_eq!(manifest.items, table_count(&client, &table).await);
    assert_eq!(manifest.items, ITEMS as u64);
    assert_eq!(manifest.segments, 4);
    let segments: std::collections::BTreeSet<u32> =
        manifest.files.iter().map(|f| f.segment).collect();
    assert_eq!(segments.len(), 4, "every segment wrote its file");
    assert_eq!(
        manifest.files.iter().map(|f| f.items).sum::<u64>(),
        ITEMS as u64
    );
    let handoff = manifest
        .streams_handoff
        .as_ref()
        .expect("the table has a stream");
    assert!(!handoff.shards.is_empty());
    assert!(manifest.consumed_read_capacity > 0.0);
    // The manifest and _SUCCESS are beside the files.
    let written: serde_json::Value = serde_json::from_slice(
        &store
            .get(&prefix.clone().join(MANIFEST))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(written["items"], ITEMS);
    store.head(&prefix.clone().join("_SUCCESS")).await.unwrap();
    let counted = python(COUNT_FILES, &[&endpoint, &bucket, "exports/jsonl", "jsonl"]);
    assert_eq!(
        counted.trim(),
        format!("{ITEMS} {want_total}"),
        "DuckDB's count of the files"
    );

    // Parquet, items typed as CountEvent.
    let prefix = Path::from("exports/parquet");
    let manifest = export_dynamodb::<CountEvent>(
        client.clone(),
        None,
        store.clone(),
        &prefix,
        ExportOptions::new(scan.clone(), ExportFormat::Parquet(Encoder::count_events())),
    )
    .await
    .unwrap();
    assert_eq!(manifest.items, ITEMS as u64);
    assert!(
        manifest.streams_handoff.is_none(),
        "no streams client, no capture"
    );
    let counted = python(
        COUNT_FILES,
        &[&endpoint, &bucket, "exports/parquet", "parquet"],
    );
    assert_eq!(
        counted.trim(),
        format!("{ITEMS} {want_total}"),
        "pyarrow's count of the files"
    );

    // An export never mixes with older files.
    let err = export_dynamodb::<serde_json::Value>(
        client.clone(),
        None,
        store.clone(),
        &prefix,
        ExportOptions::new(scan, ExportFormat::JsonLinesGzip),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the export prefix `exports/parquet` is not empty"),
        "{err}"
    );
}
