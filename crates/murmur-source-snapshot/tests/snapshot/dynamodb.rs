//! DynamoDB parallel scan against moto: totals, the read-capacity rate
//! limit, resume from (segment, last evaluated key), bad items, and the
//! DynamoDB Streams handoff capture.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::common::*;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, StreamSpecification, StreamViewType, WriteRequest,
};
use futures::{StreamExt as _, TryStreamExt as _};
use murmur_core::Position;
use murmur_source_snapshot::dynamodb::{
    CapacityAccounting, DynamoDbScanOptions, DynamoDbScanSource, ShardStart, StreamsHandoff,
};
use murmur_source_snapshot::{BadRecordPolicy, Error, SnapshotSource};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Item {
    pk: String,
    count: i64,
    occurred_at_ms: i64,
}

const ITEMS: usize = 10_000;

/// moto is single-process and slow (a few hundred scanned items per
/// second): the timing-sensitive rate test must not share it with the
/// 10 000-item test running beside it.
static MOTO_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn clients(needed_for: &str) -> Option<(Client, aws_sdk_dynamodbstreams::Client)> {
    require_env("AWS_ENDPOINT_URL", needed_for)?;
    let config = aws_config::load_from_env().await;
    Some((
        Client::new(&config),
        aws_sdk_dynamodbstreams::Client::new(&config),
    ))
}

async fn create_table(client: &Client, table: &str, stream: bool) {
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        );
    if stream {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .unwrap(),
        );
    }
    req.send().await.unwrap();
}

fn item(i: usize, payload: usize) -> HashMap<String, AttributeValue> {
    let mut m = HashMap::from([
        (
            "pk".to_string(),
            AttributeValue::S(format!("entity-{i:05}")),
        ),
        (
            "count".to_string(),
            AttributeValue::N(((i % 7) + 1).to_string()),
        ),
        (
            "occurred_at_ms".to_string(),
            AttributeValue::N((MAY_1_2026_MS + i as i64 * 1000).to_string()),
        ),
    ]);
    if payload > 0 {
        m.insert(
            "payload".to_string(),
            AttributeValue::S("x".repeat(payload)),
        );
    }
    m
}

/// Writes items `range` with BatchWriteItem (25 per request, 8 in flight).
async fn write_items(client: &Client, table: &str, range: std::ops::Range<usize>, payload: usize) {
    let batches: Vec<Vec<usize>> = range
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
                                .set_item(Some(item(i, payload)))
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

fn expected_total(n: usize) -> i64 {
    (0..n).map(|i| (i % 7) as i64 + 1).sum()
}

fn source(
    client: &Client,
    table: &str,
    options: impl FnOnce(&mut DynamoDbScanOptions),
) -> DynamoDbScanSource<Item> {
    let mut o = DynamoDbScanOptions::new(table);
    options(&mut o);
    DynamoDbScanSource::new(client.clone(), o, |i: &Item| i.occurred_at_ms)
        .unwrap()
        .event_id(|i| Some(i.pk.as_str().into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_scan_of_10000_items_is_exact() {
    let Some((client, _)) = clients("the DynamoDB scan test").await else {
        return;
    };
    let _serial = MOTO_HEAVY.lock().await;
    let table = unique("scan");
    create_table(&client, &table, false).await;
    write_items(&client, &table, 0..ITEMS, 0).await;

    let source = source(&client, &table, |o| {
        o.segments = 4;
        o.page_size = Some(700);
    });
    let units = source.list_units().await.unwrap();
    assert_eq!(units.len(), 4);
    assert_eq!(&*units[3].key, format!("{table}#segment-3-of-4"));
    // No estimated size: a listing hours later (the table's size estimate
    // refreshed) is the same plan.
    assert!(units.iter().all(|u| u.size == 0), "{units:?}");
    let records = read_all(&source, &units, 4).await;
    assert_eq!(records.len(), ITEMS);
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r.event_id.as_deref().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ITEMS, "every item exactly once");
    assert_eq!(
        records.iter().map(|r| r.value.count).sum::<i64>(),
        expected_total(ITEMS)
    );
    assert!(
        records
            .iter()
            .all(|r| r.event_time_ms == r.value.occurred_at_ms)
    );
    // Each segment has its share (moto hashes keys into segments).
    let mut per_segment = BTreeMap::new();
    for r in &records {
        let Position::Scan { segment, .. } = r.position else {
            panic!()
        };
        *per_segment.entry(segment).or_insert(0) += 1;
    }
    assert_eq!(per_segment.len(), 4);
}

/// Runs a rate-limited scan and returns (consumed RCU, seconds).
async fn timed_scan(source: &DynamoDbScanSource<Item>) -> (f64, f64, usize) {
    let units = source.list_units().await.unwrap();
    let started = Instant::now();
    let records = read_all(source, &units, 4).await;
    (
        source.consumed_read_capacity(),
        started.elapsed().as_secs_f64(),
        records.len(),
    )
}

/// moto serves scans at only a few hundred items per second, so the rate
/// test uses 200 items of ~4 KB: the limiter, not moto, must set the pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_consumed_read_capacity_to_the_setting() {
    let Some((client, _)) = clients("the DynamoDB rate-limit test").await else {
        return;
    };
    let _serial = MOTO_HEAVY.lock().await;
    let table = unique("rate");
    create_table(&client, &table, false).await;
    write_items(&client, &table, 0..200, 3900).await;

    // moto reports ConsumedCapacity, but as a constant 1.0 per Scan call
    // whatever the page holds: ~24 pages of up to 10 items = ~24 RCU, at
    // 4 RCU/s ~6 s.
    let reported = source(&client, &table, |o| {
        o.page_size = Some(10);
        o.read_capacity_per_sec = Some(4.0);
    });
    let (rcu, secs, n) = timed_scan(&reported).await;
    assert_eq!(n, 200);
    assert!(
        (20.0..=25.0).contains(&rcu),
        "moto: 1.0 per page, got {rcu}"
    );
    let rate = rcu / secs;
    eprintln!("reported accounting: {rcu} RCU in {secs:.2} s = {rate:.2} RCU/s (setting 4)");
    assert!(
        (rate - 4.0).abs() <= 0.4,
        "reported: {rcu} RCU in {secs:.2} s = {rate:.2} RCU/s, want 4 ± 10%"
    );

    // DynamoDB's formula on the item sizes: a 10-item page of ~39.5 KB is
    // 10 units of 4 KB, half each (eventually consistent) = 5 RCU; ~100 RCU
    // in all, at 20 RCU/s ~5 s.
    let by_size = source(&client, &table, |o| {
        o.page_size = Some(10);
        o.read_capacity_per_sec = Some(20.0);
        o.capacity_accounting = CapacityAccounting::ItemSizes;
    });
    let (rcu, secs, n) = timed_scan(&by_size).await;
    assert_eq!(n, 200);
    assert!(
        (100.0..=103.0).contains(&rcu),
        "5 RCU per full page, got {rcu}"
    );
    let rate = rcu / secs;
    eprintln!("item-size accounting: {rcu} RCU in {secs:.2} s = {rate:.2} RCU/s (setting 20)");
    assert!(
        (rate - 20.0).abs() <= 2.0,
        "item sizes: {rcu} RCU in {secs:.2} s = {rate:.2} RCU/s, want 20 ± 10%"
    );

    // Without a limit the same scan is much faster (the limiter is what waits).
    let free = source(&client, &table, |o| o.page_size = Some(10));
    let (_, free_secs, _) = timed_scan(&free).await;
    assert!(
        free_secs * 2.0 < secs,
        "unlimited {free_secs:.2} s vs limited {secs:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_segment_and_last_key_delivers_each_item_once() {
    let Some((client, _)) = clients("the DynamoDB resume test").await else {
        return;
    };
    let table = unique("resume");
    create_table(&client, &table, false).await;
    write_items(&client, &table, 0..3000, 0).await;
    let source = source(&client, &table, |o| {
        o.segments = 3;
        o.page_size = Some(150);
    });
    let units = source.list_units().await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (i, unit) in units.iter().enumerate() {
        // Run 1 stops after i + 2 chunks; run 2 resumes from the last end.
        let mut chunks = source.read(unit, &Position::Beginning);
        let mut checkpoint = Position::Beginning;
        for _ in 0..i + 2 {
            let chunk = chunks.next().await.unwrap().unwrap();
            assert!(!chunk.last);
            for r in chunk.records {
                *seen.entry(r.value.pk).or_default() += 1;
            }
            checkpoint = chunk.end;
        }
        drop(chunks);
        let Position::Scan {
            segment,
            last_key: Some(key),
        } = &checkpoint
        else {
            panic!("{checkpoint}")
        };
        assert_eq!(*segment as usize, i);
        assert!(key.starts_with(r#"{"pk":{"S":"entity-"#), "{key}");
        let rest: Vec<_> = source.read(unit, &checkpoint).try_collect().await.unwrap();
        assert_eq!(rest[0].start, checkpoint);
        let done = Position::Scan {
            segment: *segment,
            last_key: Some("{}".into()),
        };
        assert_eq!(rest.last().unwrap().end, done);
        // Reading a finished segment yields one empty last chunk.
        let after: Vec<_> = source.read(unit, &done).try_collect().await.unwrap();
        assert_eq!(after.len(), 1);
        assert!(after[0].last && after[0].records.is_empty());
        // Replaying a page from its start key gives the same page.
        let again: Vec<_> = source
            .read(unit, &rest[0].start)
            .take(1)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(again[0], rest[0]);
        for r in rest.into_iter().flat_map(|c| c.records) {
            *seen.entry(r.value.pk).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 3000);
    assert!(seen.values().all(|&n| n == 1));
    // A position of another segment is refused.
    let err = source
        .read(
            &units[0],
            &Position::Scan {
                segment: 1,
                last_key: None,
            },
        )
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Position { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_items_are_bad_records_with_their_key() {
    let Some((client, _)) = clients("the DynamoDB bad item test").await else {
        return;
    };
    let table = unique("bad");
    create_table(&client, &table, false).await;
    write_items(&client, &table, 0..50, 0).await;
    let mut broken = item(7, 0);
    broken.insert("count".into(), AttributeValue::S("seven".into()));
    client
        .put_item()
        .table_name(&table)
        .set_item(Some(broken))
        .send()
        .await
        .unwrap();

    let source = source(&client, &table, |o| o.segments = 1)
        .with_bad_records(BadRecordPolicy::max_bad_records(2));
    // An item the installed check (a pipeline's) refuses is a bad record
    // too, named by its key.
    source.check_records(std::sync::Arc::new(|r: &murmur_core::Record<Item>| match r
        .value
        .pk
        .as_str()
    {
        "entity-00011" => Err("pipeline p: entity key \"\": is empty".to_owned()),
        _ => Ok(()),
    }));
    let units = source.list_units().await.unwrap();
    let records = read_all(&source, &units, 1).await;
    assert_eq!(records.len(), 48);
    let mut bad: Vec<String> = source
        .bad_records()
        .samples()
        .iter()
        .map(ToString::to_string)
        .collect();
    bad.sort();
    assert_eq!(
        bad,
        [
            format!(
                r#"`{table}#segment-0-of-1`: segment 0 item {{"pk":{{"S":"entity-00007"}}}}: count: Expected num"#
            ),
            format!(
                r#"`{table}#segment-0-of-1`: segment 0 item {{"pk":{{"S":"entity-00011"}}}}: pipeline p: entity key "": is empty"#
            )
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_and_projection_are_applied_by_the_scan() {
    let Some((client, _)) = clients("the DynamoDB filter test").await else {
        return;
    };
    let table = unique("filter");
    create_table(&client, &table, false).await;
    write_items(&client, &table, 0..70, 40).await;
    #[derive(Debug, Deserialize)]
    struct Projected {
        pk: String,
        count: i64,
        occurred_at_ms: i64,
        payload: Option<String>,
    }
    let options = DynamoDbScanOptions {
        segments: 2,
        page_size: Some(8),
        filter_expression: Some("#c >= :min".into()),
        projection_expression: Some("pk, #c, occurred_at_ms".into()),
        expression_attribute_names: [("#c".to_string(), "count".to_string())].into(),
        expression_attribute_values: [(":min".to_string(), AttributeValue::N("5".into()))].into(),
        ..DynamoDbScanOptions::new(&table)
    };
    let source =
        DynamoDbScanSource::new(client.clone(), options, |p: &Projected| p.occurred_at_ms).unwrap();
    let units = source.list_units().await.unwrap();
    let records = read_all(&source, &units, 2).await;
    // count = i % 7 + 1 >= 5 for i % 7 in {4, 5, 6}: 30 of 70 items.
    assert_eq!(records.len(), 30);
    assert!(
        records
            .iter()
            .all(|r| r.value.count >= 5 && r.value.payload.is_none())
    );
    assert!(records.iter().all(|r| r.value.pk.starts_with("entity-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_handoff_is_captured_before_the_scan_and_replays_later_changes() {
    let Some((client, streams)) = clients("the DynamoDB Streams handoff test").await else {
        return;
    };
    let table = unique("streams");
    create_table(&client, &table, true).await;
    let source = source(&client, &table, |o| o.segments = 2);

    // An empty stream: start its shard from the beginning.
    let empty: StreamsHandoff = source.capture_streams_handoff(&streams).await.unwrap();
    assert_eq!(empty.shards.len(), 1);
    assert!(empty.shards.values().all(|s| *s == ShardStart::TrimHorizon));

    write_items(&client, &table, 0..40, 0).await;
    // Records created in the capture's second or the one before count as
    // after it (creation times are whole seconds): let these age first.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let handoff = source.capture_streams_handoff(&streams).await.unwrap();
    assert_eq!(handoff.table, table);
    let (shard, start) = handoff.shards.iter().next().unwrap();
    let ShardStart::AfterSequenceNumber { sequence_number } = start else {
        panic!("{start:?}")
    };
    // The token round-trips as JSON.
    let json = serde_json::to_string(&handoff).unwrap();
    assert!(json.contains(r#""type":"after_sequence_number""#), "{json}");
    assert_eq!(
        serde_json::from_str::<StreamsHandoff>(&json).unwrap(),
        handoff
    );

    // Changes after the capture (during the "scan"): exactly these are
    // replayed from the captured position.
    write_items(&client, &table, 40..55, 0).await;
    // A capture now stops before the changes of the last second or two
    // instead of chasing the tip: never later than the changes are.
    let recent = source.capture_streams_handoff(&streams).await.unwrap();
    assert_eq!(recent.shards[shard], *start);
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&handoff.stream_arn)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::AfterSequenceNumber)
        .sequence_number(sequence_number)
        .send()
        .await
        .unwrap();
    let out = streams
        .get_records()
        .shard_iterator(iterator.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let mut replayed: Vec<String> = out
        .records()
        .iter()
        .filter_map(|r| r.dynamodb()?.keys()?.get("pk")?.as_s().ok().cloned())
        .collect();
    replayed.sort();
    let expected: Vec<String> = (40..55).map(|i| format!("entity-{i:05}")).collect();
    assert_eq!(replayed, expected);

    // A table without a stream cannot give a handoff.
    let plain = unique("nostream");
    create_table(&client, &plain, false).await;
    let err = self::source(&client, &plain, |_| {})
        .capture_streams_handoff(&streams)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid configuration: table `{plain}` has no DynamoDB stream to capture a handoff from"
        )
    );
}
