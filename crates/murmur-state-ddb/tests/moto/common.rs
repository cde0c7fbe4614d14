//! Shared test setup: the moto endpoint (or a skip), clients, unique tables.

use crate::proxy::{FaultProxy, Faults};
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::Client;
use murmur_state_ddb::{
    RetryPolicy, StoreConfig, ensure_checkpoint_table, ensure_dedup_table, ensure_state_table,
};
use std::time::Duration;

/// The DynamoDB endpoint the tests talk to, from `AWS_ENDPOINT_URL`.
///
/// When it is unset, the test fails if `CI=true` and otherwise prints a skip
/// notice and the caller returns: this is the one place that decides.
pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
                panic!(
                    "{test}: AWS_ENDPOINT_URL is not set but CI=true: the DynamoDB tests need moto \
                     (run them with `cargo xtask test`, or start `cargo xtask services` and export its lines)"
                );
            }
            eprintln!(
                "SKIPPED {test}: AWS_ENDPOINT_URL is not set (run `cargo xtask test`, or `cargo xtask services` \
                 and export its lines)"
            );
            None
        }
    }
}

/// A connection to moto, through a fault-free [`FaultProxy`] that makes
/// moto atomic per item (see the proxy module).
pub struct Moto {
    pub sdk: SdkConfig,
    /// A client through the atomic gateway.
    pub client: Client,
    /// moto itself.
    pub endpoint: String,
    _gateway: FaultProxy,
}

/// Connects to moto, or `None` (after the skip notice) when there is none.
pub async fn moto(test: &str) -> Option<Moto> {
    let endpoint = endpoint(test)?;
    // Test binaries, like the worker binary, read the environment.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let gateway = FaultProxy::start(&endpoint, Faults::default(), 0).await;
    let client = client_via(&sdk, &gateway.url);
    Some(Moto {
        sdk,
        client,
        endpoint,
        _gateway: gateway,
    })
}

fn client_via(sdk: &SdkConfig, endpoint: &str) -> Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(conf)
}

impl Moto {
    /// A proxy in front of moto injecting `faults` (deterministic for `seed`).
    pub async fn fault_proxy(&self, faults: Faults, seed: u64) -> FaultProxy {
        FaultProxy::start(&self.endpoint, faults, seed).await
    }

    /// A client that talks to `endpoint` (the fault proxy) instead.
    pub fn client_via(&self, endpoint: &str) -> Client {
        client_via(&self.sdk, endpoint)
    }

    /// A fresh state table.
    pub async fn state_table(&self, prefix: &str) -> String {
        let table = unique(prefix);
        ensure_state_table(&self.client, &table)
            .await
            .expect("create state table");
        table
    }

    /// A fresh checkpoint table.
    pub async fn checkpoint_table(&self, prefix: &str) -> String {
        let table = unique(prefix);
        ensure_checkpoint_table(&self.client, &table)
            .await
            .expect("create checkpoint table");
        table
    }

    /// A fresh dedup table.
    pub async fn dedup_table(&self, prefix: &str) -> String {
        let table = unique(prefix);
        ensure_dedup_table(&self.client, &table)
            .await
            .expect("create dedup table");
        table
    }
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Store settings for tests: short backoff so fault tests stay fast.
pub fn config(table: &str) -> StoreConfig {
    StoreConfig::new(table).with_retry(
        RetryPolicy::default()
            .with_max_attempts(12)
            .with_delays(Duration::from_millis(2), Duration::from_millis(100)),
    )
}
