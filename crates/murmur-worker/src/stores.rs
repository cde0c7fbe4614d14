//! Opening the state, checkpoint and dedup stores of the flags.

use crate::cli::{StoreArgs, StoreKind};
use anyhow::Context as _;
use murmur_core::{CheckpointStore, Deduper, EmbeddedStore, StateStore};
use murmur_state_ddb::{
    DynamoDbCheckpointStore, DynamoDbDeduper, DynamoDbStore, Metrics, StoreConfig,
    ensure_checkpoint_table, ensure_dedup_table, ensure_state_table,
};
use std::sync::Arc;

/// The stores of one pipeline.
pub struct Stores {
    /// Row values.
    pub state: Arc<dyn StateStore>,
    /// Lanes, intents, runs and tokens.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Per-event claims.
    pub deduper: Arc<dyn Deduper>,
    /// DynamoDB request counters (requests, retries, consumed capacity).
    pub metrics: Option<Arc<Metrics>>,
    /// What the stores are, for the logs.
    pub description: String,
}

/// The shared AWS configuration (standard chain; `AWS_ENDPOINT_URL` for a
/// local stand-in).
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Opens the stores of pipeline `pipeline`.
pub async fn open(args: &StoreArgs, pipeline: &str) -> anyhow::Result<Stores> {
    match args.store {
        StoreKind::Embedded => {
            std::fs::create_dir_all(&args.data_dir).with_context(|| {
                format!("cannot create data directory {}", args.data_dir.display())
            })?;
            let path = args.data_dir.join("murmur.redb");
            let store = EmbeddedStore::open(&path)
                .with_context(|| format!("cannot open the embedded store {}", path.display()))?
                .with_namespace(pipeline);
            Ok(Stores {
                state: Arc::new(store.clone()),
                checkpoints: Arc::new(store.clone()),
                deduper: Arc::new(store),
                metrics: None,
                description: format!("embedded store {} (namespace {pipeline})", path.display()),
            })
        }
        StoreKind::Dynamodb => {
            let client = aws_sdk_dynamodb::Client::new(&aws().await);
            let table = args
                .table
                .clone()
                .unwrap_or_else(|| format!("murmur-{pipeline}"));
            let checkpoint_table = args
                .checkpoint_table
                .clone()
                .unwrap_or_else(|| format!("murmur-{pipeline}-checkpoints"));
            let dedup_table = args
                .dedup_table
                .clone()
                .unwrap_or_else(|| format!("murmur-{pipeline}-dedup"));
            if args.create_tables {
                ensure_state_table(&client, &table).await?;
                ensure_checkpoint_table(&client, &checkpoint_table).await?;
                ensure_dedup_table(&client, &dedup_table).await?;
            }
            let metrics = Arc::new(Metrics::new());
            let config =
                |t: &str| StoreConfig::new(t).with_max_concurrency(args.store_concurrency.max(1));
            Ok(Stores {
                state: Arc::new(
                    DynamoDbStore::new(&client, config(&table)).with_metrics(metrics.clone()),
                ),
                checkpoints: Arc::new(
                    DynamoDbCheckpointStore::new(&client, config(&checkpoint_table))
                        .with_metrics(metrics.clone()),
                ),
                deduper: Arc::new(
                    DynamoDbDeduper::new(&client, config(&dedup_table))
                        .with_metrics(metrics.clone()),
                ),
                metrics: Some(metrics),
                description: format!("DynamoDB tables {table}, {checkpoint_table}, {dedup_table}"),
            })
        }
    }
}
