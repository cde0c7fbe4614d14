//! The DynamoDB Streams source against moto (DynamoDB with Streams).

use crate::common::{Runner, drive, moto_dynamodb, stream_json, unique};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use murmur_core::{CheckpointStore, HandoffToken, MemoryStore, Position};
use murmur_source_live::{
    CountEvent, Decoder, DynamoDbStreamsConfig, DynamoDbStreamsSource, LiveSource, Start,
    dynamodb_streams_lane,
};
use std::collections::BTreeMap;
use std::sync::Arc;

async fn streams_client() -> aws_sdk_dynamodbstreams::Client {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("checked by moto_dynamodb");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_dynamodbstreams::Client::new(&config)
}

async fn connect(
    ddb: &aws_sdk_dynamodb::Client,
    streams: &aws_sdk_dynamodbstreams::Client,
    table: &str,
) -> DynamoDbStreamsSource<CountEvent> {
    DynamoDbStreamsSource::connect(
        DynamoDbStreamsConfig::new(table),
        ddb,
        streams.clone(),
        Decoder::count_events(),
    )
    .await
    .unwrap()
}

async fn create_table(ddb: &aws_sdk_dynamodb::Client, view: StreamViewType) -> String {
    let table = unique("streams");
    ddb.create_table()
        .table_name(&table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("event_id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("event_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(view)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    table
}

async fn put(ddb: &aws_sdk_dynamodb::Client, table: &str, i: i64, count: i64) {
    ddb.put_item()
        .table_name(table)
        .item("event_id", AttributeValue::S(format!("e{i}")))
        .item("entity_id", AttributeValue::S(format!("page-{}", i % 3)))
        .item("count", AttributeValue::N(count.to_string()))
        .item(
            "occurred_at_unix_ms",
            AttributeValue::N((1_778_198_400_000 + i).to_string()),
        )
        .send()
        .await
        .unwrap();
}

/// The stream's one shard (moto has one per table) and its records'
/// sequence numbers, in order.
async fn shard_and_sequences(
    streams: &aws_sdk_dynamodbstreams::Client,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> (String, Vec<String>) {
    let arn = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap()
        .latest_stream_arn
        .unwrap();
    let shard = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap()
        .stream_description
        .unwrap()
        .shards
        .unwrap()
        .remove(0)
        .shard_id
        .unwrap();
    let it = streams
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let records = streams
        .get_records()
        .shard_iterator(it)
        .send()
        .await
        .unwrap()
        .records
        .unwrap_or_default();
    let seqs = records
        .into_iter()
        .map(|r| r.dynamodb.unwrap().sequence_number.unwrap())
        .collect();
    (shard, seqs)
}

#[tokio::test]
async fn dynamodb_streams_delivers_new_images_once_and_resumes_from_a_token() {
    let Some(ddb) =
        moto_dynamodb("dynamodb_streams_delivers_new_images_once_and_resumes_from_a_token").await
    else {
        return;
    };
    let streams = streams_client().await;
    let table = create_table(&ddb, StreamViewType::NewAndOldImages).await;
    for i in 0..20 {
        put(&ddb, &table, i, i + 1).await;
    }
    // A REMOVE (no new image: passed over) and a MODIFY (the new image again).
    ddb.delete_item()
        .table_name(&table)
        .key("event_id", AttributeValue::S("e0".into()))
        .send()
        .await
        .unwrap();
    put(&ddb, &table, 1, 100).await;
    let (shard, seqs) = shard_and_sequences(&streams, &ddb, &table).await;
    assert_eq!(seqs.len(), 22, "20 inserts, a remove and a modify");
    let lane = dynamodb_streams_lane(&table, &shard);

    // From the beginning: 20 inserts + the modify, decoded from the images.
    let source = connect(&ddb, &streams, &table).await;
    let checkpoints = Arc::new(MemoryStore::new());
    let mut runner = Runner::new("streams", source, checkpoints.clone(), Start::Earliest);
    drive(&mut runner, 30, |r| r.acked.lock().unwrap().len() == 21).await;
    let acked = runner.acked.lock().unwrap().clone();
    assert!(acked.iter().all(|(l, _)| *l == lane));
    let events: Vec<_> = acked.iter().map(|(_, r)| r.value.clone()).collect();
    assert_eq!(events[0].event_id.as_deref(), Some("e0"));
    assert_eq!(
        (
            events[7].entity_id.as_str(),
            events[7].count,
            events[7].occurred_at_ms
        ),
        ("page-1", 8, 1_778_198_400_007)
    );
    assert_eq!(events.iter().take(20).map(|e| e.count).sum::<i64>(), 210);
    assert_eq!(
        (events[20].event_id.as_deref(), events[20].count),
        (Some("e1"), 100),
        "the MODIFY's new image (the REMOVE before it is passed over)"
    );
    assert_eq!(
        acked[20].1.position,
        Position::Sequence {
            sequence: seqs[21].as_str().into()
        }
    );
    let stored = runner.checkpoints.lane(&lane).await.unwrap().unwrap();
    assert_eq!(
        stored.position,
        Position::Sequence {
            sequence: seqs[21].as_str().into()
        }
    );

    // A token captured after the 10th insert: exactly the changes after it.
    let token = HandoffToken::DynamoDbStreams {
        table: table.clone(),
        shards: BTreeMap::from([(shard.clone(), Some(seqs[9].clone()))]),
    };
    let source = connect(&ddb, &streams, &table).await;
    let mut runner = Runner::new(
        "streams-token",
        source,
        Arc::new(MemoryStore::new()),
        Start::Token(token),
    );
    drive(&mut runner, 30, |r| r.acked.lock().unwrap().len() == 11).await;
    let ids: Vec<String> = runner
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.value.event_id.clone().unwrap())
        .collect();
    let mut want: Vec<String> = (10..20).map(|i| format!("e{i}")).collect();
    want.push("e1".into());
    assert_eq!(ids, want);

    // A token for another table is refused, naming both.
    let source = connect(&ddb, &streams, &table).await;
    let wrong = HandoffToken::DynamoDbStreams {
        table: "other".into(),
        shards: BTreeMap::new(),
    };
    let err = source
        .resolve_start(&lane, &Start::Token(wrong))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("stream other") && err.to_string().contains(&table),
        "{err}"
    );
}

#[tokio::test]
async fn dynamodb_streams_needs_a_stream_with_new_images() {
    let Some(ddb) = moto_dynamodb("dynamodb_streams_needs_a_stream_with_new_images").await else {
        return;
    };
    let streams = streams_client().await;
    let table = create_table(&ddb, StreamViewType::KeysOnly).await;
    let err = DynamoDbStreamsSource::connect(
        DynamoDbStreamsConfig::new(&table),
        &ddb,
        streams,
        Decoder::count_events(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("KEYS_ONLY") && err.to_string().contains("NEW_IMAGE"),
        "{err}"
    );
}

#[tokio::test]
async fn dynamodb_streams_undecodable_images_go_to_the_dead_letter_stream() {
    let Some(ddb) =
        moto_dynamodb("dynamodb_streams_undecodable_images_go_to_the_dead_letter_stream").await
    else {
        return;
    };
    let streams = streams_client().await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("checked by moto_dynamodb");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let dlq = unique("streams-dlq");
    kinesis
        .create_stream()
        .stream_name(&dlq)
        .shard_count(1)
        .send()
        .await
        .unwrap();

    let table = create_table(&ddb, StreamViewType::NewImage).await;
    put(&ddb, &table, 0, 5).await;
    // `count` is a string: the image does not decode as a CountEvent.
    ddb.put_item()
        .table_name(&table)
        .item("event_id", AttributeValue::S("e1".into()))
        .item("entity_id", AttributeValue::S("page-1".into()))
        .item("count", AttributeValue::S("many".into()))
        .item(
            "occurred_at_unix_ms",
            AttributeValue::N("1778198400001".into()),
        )
        .send()
        .await
        .unwrap();
    put(&ddb, &table, 2, 7).await;
    let (shard, seqs) = shard_and_sequences(&streams, &ddb, &table).await;

    let source = DynamoDbStreamsSource::connect(
        DynamoDbStreamsConfig::new(&table).dead_letter_stream(kinesis.clone(), &dlq),
        &ddb,
        streams.clone(),
        Decoder::count_events(),
    )
    .await
    .unwrap();
    let mut runner = Runner::new(
        "streams-dlq",
        source,
        Arc::new(MemoryStore::new()),
        Start::Earliest,
    );
    drive(&mut runner, 30, |r| r.acked.lock().unwrap().len() == 2).await;
    let counts: Vec<i64> = runner
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.value.count)
        .collect();
    assert_eq!(counts, [5, 7], "the two good images, in order");
    assert_eq!(runner.source.metrics().dead_letters, 1);

    let letters = stream_json(&kinesis, &dlq).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["source_stream"], table.as_str());
    assert_eq!(letter["shard_id"], shard.as_str());
    assert_eq!(letter["sequence_number"], seqs[1].as_str());
    let error = letter["error"].as_str().unwrap();
    assert!(error.starts_with("invalid CountEvent JSON"), "{error}");
    assert!(error.contains("many"), "{error}");
    let payload =
        aws_smithy_types::base64::decode(letter["payload_base64"].as_str().unwrap()).unwrap();
    let image: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(image["event_id"], "e1");
    assert_eq!(image["count"], "many");
}
