//! Live page-view counters from Kafka: views per page per UTC day, folded
//! exactly once into the embedded store, then read back with `get` (one
//! day), `window` (the last 7 days) and `range` (a date range).
//!
//! ```sh
//! cargo run -p page-view-counters                      # in-process broker, generated views
//! cargo run -p page-view-counters -- broker:9092 page_views
//! ```
//!
//! With no broker given it starts an in-process Kafka (librdkafka's mock
//! cluster), produces 30,000 page views over ten days, consumes them and
//! compares every answer with a count of what it produced. Against a real
//! broker it consumes from the earliest offset until Ctrl-C, then answers.

use anyhow::Context as _;
use murmur_bootstrap::{LiveOptions, live};
use murmur_core::monoid::Count;
use murmur_core::{
    CheckpointStore, EmbeddedStore, HandoffToken, Pipeline, StateStore, Window, query,
};
use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, Start};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DAY: i64 = 86_400_000;
const PAGES: [&str; 5] = ["/", "/pricing", "/docs", "/blog", "/signup"];

/// The message on the topic, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct PageView {
    page: String,
    user: String,
    /// Milliseconds since the Unix epoch.
    at: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();

    // One pipeline value: views per page per UTC day.
    let pipeline = Pipeline::builder("page_views_daily", Count)
        .key_by_str(|v: &PageView| &v.page)
        .value(|_| ())
        .window(Window::day())
        .build()?;

    let dir = std::env::temp_dir().join(format!("page-view-counters-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = EmbeddedStore::open(dir.join("murmur.redb"))?.with_namespace(pipeline.name());
    let (state, checkpoints): (Arc<dyn StateStore>, Arc<dyn CheckpointStore>) =
        (Arc::new(store.clone()), Arc::new(store));

    // The broker: yours, or an in-process one with generated views.
    let (cluster, brokers, topic, produced) = match args.as_slice() {
        [brokers, topic, ..] => (None, brokers.clone(), topic.clone(), None),
        _ => {
            let cluster = MockCluster::new(1).context("cannot start the in-process broker")?;
            cluster.create_topic("page_views", 3, 1)?;
            let brokers = cluster.bootstrap_servers();
            let views = produce(&brokers, "page_views", 30_000).await?;
            (Some(cluster), brokers, "page_views".to_owned(), Some(views))
        }
    };

    // Live from the earliest offset; with a backfill first, this would be
    // `Start::Token(token)` from the backfill's outcome.
    let mut source = KafkaSource::connect(
        KafkaConfig::assign(&brokers, &topic),
        Decoder::<PageView>::json().event_time(|v| Some(v.at)),
    )
    .await?;
    let options = LiveOptions {
        start: Start::Earliest,
        ..LiveOptions::from_token(HandoffToken::None)
    };
    let progress = options.progress.clone();
    let expected = produced.as_ref().map(|v: &Vec<PageView>| v.len() as u64);
    let stop = async move {
        match expected {
            // Generated views: stop once all were folded and committed.
            Some(n) => {
                // (`live` commits every open batch when this resolves.)
                while progress.snapshot().records < n {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            None => {
                println!("consuming {topic} from the earliest offset; Ctrl-C to stop and query");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let stats = live(
        &pipeline,
        &mut source,
        state.clone(),
        checkpoints,
        &options,
        stop,
    )
    .await?;
    println!(
        "folded {} views in {} batches ({} row writes)\n",
        stats.records, stats.batches, stats.rows
    );

    // Queries, each one batched read + fold.
    let window = Window::day();
    let now = produced
        .as_ref()
        .and_then(|v| v.iter().map(|v| v.at).max())
        .unwrap_or_else(murmur_core::store::now_ms);
    let today = window.bucket_of(now)?;
    let keys: Vec<_> = PAGES
        .iter()
        .map(|p| murmur_core::store::RowKey::new(*p, today))
        .collect();
    let day = query::get_many(&*state, &Count, &keys).await?;
    let week = query::window_many(&*state, &Count, &window, &PAGES, now, 7).await?;
    let (from, to) = (now - 9 * DAY, now - 5 * DAY);
    let span = query::range_many(&*state, &Count, &window, &PAGES, from, to).await?;

    println!(
        "{:<10} {:>8} {:>12} {:>14}",
        "page", "today", "last 7 days", "days -9 to -5"
    );
    let mut ok = true;
    for (i, page) in PAGES.iter().enumerate() {
        print!("{page:<10} {:>8} {:>12} {:>14}", day[i], week[i], span[i]);
        if let Some(views) = &produced {
            // The same answers, counted directly from what was produced.
            let count = |keep: &dyn Fn(i64) -> bool| {
                views
                    .iter()
                    .filter(|v| v.page == *page && keep(v.at))
                    .count() as i64
            };
            let day_start = now.div_euclid(DAY) * DAY;
            let want = [
                count(&|t| t >= day_start),
                count(&|t| t >= day_start - 6 * DAY),
                count(&|t| t >= from.div_euclid(DAY) * DAY && t < (to.div_euclid(DAY) + 1) * DAY),
            ];
            let got = [day[i], week[i], span[i]];
            ok &= got == want;
            print!("   expected {} {} {}", want[0], want[1], want[2]);
        }
        println!();
    }
    if produced.is_some() {
        anyhow::ensure!(ok, "a stored count differs from the produced views");
        println!("\nOK: every answer equals the count of the produced views");
    }
    std::fs::remove_dir_all(&dir).ok();
    drop(source);
    // The in-process broker lives until the process exits: shutting it down
    // under librdkafka's background threads only produces connection noise.
    std::mem::forget(cluster);
    Ok(())
}

/// Produces `n` generated views over the ten days before now; returns them.
async fn produce(brokers: &str, topic: &str, n: u64) -> anyhow::Result<Vec<PageView>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let now = murmur_core::store::now_ms();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut views = Vec::new();
    let mut by_page: BTreeMap<&str, u64> = BTreeMap::new();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed: "/" gets the most views.
        let page = PAGES[4 - ((x % 31) + 1).ilog2() as usize];
        *by_page.entry(page).or_default() += 1;
        views.push(PageView {
            page: page.to_owned(),
            user: format!("u{}", (x >> 20) % 2_000),
            at: now - ((x >> 32) % (10 * DAY as u64)) as i64,
        });
    }
    let sends: Vec<_> = views
        .iter()
        .map(|v| {
            let payload = serde_json::to_vec(v).expect("serializable");
            let key = v.user.clone();
            let producer = producer.clone();
            let topic = topic.to_owned();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    println!("produced {n} page views to {topic}: {by_page:?}");
    Ok(views)
}
