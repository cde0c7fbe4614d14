//! The murmur-core conformance suite, unchanged, against the DynamoDB
//! implementations.

use crate::common::{config, moto};
use murmur_core::AliasStore as _;
use murmur_state_ddb::{
    DynamoDbAliasStore, DynamoDbCheckpointStore, DynamoDbDeduper, DynamoDbStore,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_store_passes_core_conformance() {
    let Some(moto) = moto("state_store_passes_core_conformance").await else {
        return;
    };
    let table = moto.state_table("conf-state").await;
    let store = DynamoDbStore::new(&moto.client, config(&table));
    murmur_core::conformance::state_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_store_passes_core_conformance() {
    let Some(moto) = moto("checkpoint_store_passes_core_conformance").await else {
        return;
    };
    let table = moto.checkpoint_table("conf-cp").await;
    let cp = DynamoDbCheckpointStore::new(&moto.client, config(&table));
    murmur_core::conformance::checkpoint_store(&cp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduper_passes_core_conformance() {
    let Some(moto) = moto("deduper_passes_core_conformance").await else {
        return;
    };
    let table = moto.dedup_table("conf-dedup").await;
    let d = DynamoDbDeduper::new(&moto.client, config(&table));
    murmur_core::conformance::deduper(&d).await;
    // Namespaces keep pipelines apart in one table.
    let other = DynamoDbDeduper::new(&moto.client, config(&table)).with_namespace("other-pipeline");
    murmur_core::conformance::deduper(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_store_passes_core_conformance() {
    let Some(moto) = moto("alias_store_passes_core_conformance").await else {
        return;
    };
    // The alias table has the checkpoint table's schema.
    let table = moto.checkpoint_table("conf-alias").await;
    let aliases = DynamoDbAliasStore::new(&moto.client, config(&table));
    murmur_core::conformance::alias_store(&aliases).await;
    // Without the table nothing was swapped yet; a swap needs the table.
    let missing = DynamoDbAliasStore::new(&moto.client, config("no-such-alias-table"));
    assert_eq!(missing.active("p").await.unwrap(), None);
    assert!(missing.swap("p", 1).await.is_err());
}

/// Reopening a DynamoDB store is building a new one on the same tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_across_reopen() {
    let Some(moto) = moto("durability_across_reopen").await else {
        return;
    };
    let state = moto.state_table("conf-dur").await;
    let cps = moto.checkpoint_table("conf-dur-cp").await;
    let client = moto.client.clone();
    murmur_core::conformance::durability(|| {
        let (client, state, cps) = (client.clone(), state.clone(), cps.clone());
        async move {
            (
                DynamoDbStore::new(&client, config(&state)),
                DynamoDbCheckpointStore::new(&client, config(&cps)),
            )
        }
    })
    .await;
}
