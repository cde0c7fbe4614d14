//! Opening the state, checkpoint and dedup stores of the flags, per
//! version of a pipeline's state, and the alias store that says which
//! version is active.
//!
//! Version 0 is the unversioned state (`<pipeline>` namespace, tables
//! `murmur-<pipeline>...`); version N > 0 (built by `replay`) appends
//! `_vN` to the namespace and to each table name. Every version has its
//! own checkpoints and dedup claims, so a replay shares nothing with the
//! state it replaces.

use crate::cli::{StoreArgs, StoreKind};
use anyhow::Context as _;
use murmur_core::{AliasStore, CheckpointStore, Deduper, EmbeddedStore, StateStore};
use murmur_state_ddb::{
    DynamoDbAliasStore, DynamoDbCheckpointStore, DynamoDbDeduper, DynamoDbStore, Metrics,
    StoreConfig, ensure_alias_table, ensure_checkpoint_table, ensure_dedup_table,
    ensure_state_table,
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
    /// The version of the pipeline's state these stores hold.
    pub version: u64,
    /// What the stores are, for the logs.
    pub description: String,
}

/// The shared AWS configuration (standard chain; `AWS_ENDPOINT_URL` for a
/// local stand-in).
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// `name` for version `version` of the state (version 0 is `name` itself).
pub fn versioned(name: &str, version: u64) -> String {
    match version {
        0 => name.to_owned(),
        v => format!("{name}_v{v}"),
    }
}

/// The store backend of the flags: opens any version of a pipeline's
/// stores and the alias store. One per process (the embedded database file
/// is opened once and shared by every version's namespace).
#[derive(Clone)]
pub enum Backend {
    /// The embedded database.
    Embedded {
        /// The file, default namespace.
        db: EmbeddedStore,
        /// Its path, for the logs.
        path: std::path::PathBuf,
    },
    /// DynamoDB.
    Dynamodb {
        /// The client.
        client: aws_sdk_dynamodb::Client,
        /// The flags (table names, concurrency, provisioning).
        args: StoreArgs,
        /// Request counters shared by every version's stores.
        metrics: Arc<Metrics>,
        /// The alias store (`--alias-table`).
        aliases: Arc<DynamoDbAliasStore>,
    },
}

impl Backend {
    /// Connects (opens the database file, or builds the DynamoDB client).
    pub async fn connect(args: &StoreArgs) -> anyhow::Result<Backend> {
        match args.store {
            StoreKind::Embedded => {
                std::fs::create_dir_all(&args.data_dir).with_context(|| {
                    format!("cannot create data directory {}", args.data_dir.display())
                })?;
                let path = args.data_dir.join("murmur.redb");
                let db = EmbeddedStore::open(&path).with_context(|| {
                    format!("cannot open the embedded store {}", path.display())
                })?;
                Ok(Backend::Embedded { db, path })
            }
            StoreKind::Dynamodb => {
                let client = aws_sdk_dynamodb::Client::new(&aws().await);
                if args.create_tables {
                    ensure_alias_table(&client, &args.alias_table).await?;
                }
                // Alias lookups (one a second at most per reader) keep their
                // own counters: `metrics` counts the state's requests.
                let aliases = DynamoDbAliasStore::new(&client, StoreConfig::new(&args.alias_table));
                Ok(Backend::Dynamodb {
                    client,
                    args: args.clone(),
                    metrics: Arc::new(Metrics::new()),
                    aliases: Arc::new(aliases),
                })
            }
        }
    }

    /// The alias store (the database file, or the `--alias-table`).
    pub fn aliases(&self) -> Arc<dyn AliasStore> {
        match self {
            Backend::Embedded { db, .. } => Arc::new(db.clone()),
            Backend::Dynamodb { aliases, .. } => aliases.clone(),
        }
    }

    /// The active version of `pipeline` (0 before any swap).
    pub async fn active(&self, pipeline: &str) -> anyhow::Result<u64> {
        let active = self
            .aliases()
            .active(pipeline)
            .await
            .with_context(|| format!("cannot read the active version of {pipeline}"))?;
        Ok(active.unwrap_or(0))
    }

    /// The stores of version `version` of `pipeline`.
    pub async fn open(&self, pipeline: &str, version: u64) -> anyhow::Result<Stores> {
        match self {
            Backend::Embedded { db, path } => {
                let namespace = versioned(pipeline, version);
                let store = db.with_namespace(&namespace);
                Ok(Stores {
                    state: Arc::new(store.clone()),
                    checkpoints: Arc::new(store.clone()),
                    deduper: Arc::new(store),
                    metrics: None,
                    version,
                    description: format!(
                        "embedded store {} (namespace {namespace})",
                        path.display()
                    ),
                })
            }
            Backend::Dynamodb {
                client,
                args,
                metrics,
                ..
            } => {
                let name = |flag: &Option<String>, default: String| {
                    versioned(flag.as_deref().unwrap_or(&default), version)
                };
                let table = name(&args.table, format!("murmur-{pipeline}"));
                let checkpoint_table = name(
                    &args.checkpoint_table,
                    format!("murmur-{pipeline}-checkpoints"),
                );
                let dedup_table = name(&args.dedup_table, format!("murmur-{pipeline}-dedup"));
                if args.create_tables {
                    ensure_state_table(client, &table).await?;
                    ensure_checkpoint_table(client, &checkpoint_table).await?;
                    ensure_dedup_table(client, &dedup_table).await?;
                }
                let config = |t: &str| {
                    StoreConfig::new(t).with_max_concurrency(args.store_concurrency.max(1))
                };
                Ok(Stores {
                    state: Arc::new(
                        DynamoDbStore::new(client, config(&table)).with_metrics(metrics.clone()),
                    ),
                    checkpoints: Arc::new(
                        DynamoDbCheckpointStore::new(client, config(&checkpoint_table))
                            .with_metrics(metrics.clone()),
                    ),
                    deduper: Arc::new(
                        DynamoDbDeduper::new(client, config(&dedup_table))
                            .with_metrics(metrics.clone()),
                    ),
                    metrics: Some(metrics.clone()),
                    version,
                    description: format!(
                        "DynamoDB tables {table}, {checkpoint_table}, {dedup_table}"
                    ),
                })
            }
        }
    }
}

/// Opens the stores of the active version of `pipeline`.
pub async fn open(args: &StoreArgs, pipeline: &str) -> anyhow::Result<Stores> {
    let backend = Backend::connect(args).await?;
    let version = backend.active(pipeline).await?;
    backend.open(pipeline, version).await
}
