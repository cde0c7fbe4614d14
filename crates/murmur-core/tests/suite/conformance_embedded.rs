//! The store conformance suite against [`EmbeddedStore`] on a temporary file.

use murmur_core::{AliasStore as _, EmbeddedStore, conformance};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join("conformance.redb")).expect("open embedded store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_state_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::state_store(&open(&dir)).await;
}

#[tokio::test]
async fn embedded_state_store_current_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::state_store(&open(&dir)).await;
}

#[tokio::test]
async fn embedded_checkpoint_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    conformance::lane_protocol(&store).await;
    conformance::lanes_by_prefix(&store).await;
}

#[tokio::test]
async fn embedded_run_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::run_records(&open(&dir)).await;
}

#[tokio::test]
async fn embedded_deduper() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::deduper(&open(&dir)).await;
}

/// Both traits on one namespace of a shared file, and the suite again on a
/// second namespace of the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_namespaces_share_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = open(&dir);
    let (a, b) = (
        root.with_namespace("pipeline-a"),
        root.with_namespace("pipeline-b"),
    );
    let (sa, sb) = (a.clone(), b.clone());
    let (ra, rb) = tokio::join!(
        async move {
            conformance::state_store(&sa).await;
            conformance::lane_protocol(&sa).await;
            conformance::lanes_by_prefix(&sa).await;
        },
        async move {
            conformance::state_store(&sb).await;
            conformance::lane_protocol(&sb).await;
            conformance::lanes_by_prefix(&sb).await;
        }
    );
    let ((), ()) = (ra, rb);
    assert!(
        root.rows().await.expect("rows").is_empty(),
        "the default namespace stays empty"
    );
}

/// Rows, intents, runs and fences survive dropping every handle and
/// reopening the file.
#[tokio::test]
async fn embedded_durability_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("durable.redb");
    conformance::durability(|| {
        let path = path.clone();
        async move {
            let s = EmbeddedStore::open(&path).expect("open (the previous handles must be closed)");
            (s.clone(), s)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_alias_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    conformance::alias_store(&store).await;
    // One alias table per file, whatever the namespace.
    let alias = conformance::unique("ns");
    store
        .with_namespace("a")
        .swap(&alias, 2)
        .await
        .expect("swap");
    assert_eq!(
        store
            .with_namespace("b")
            .active(&alias)
            .await
            .expect("active"),
        Some(2)
    );
}
