//! Shared request machinery: the client with SDK retries off, one retry loop
//! with capped exponential backoff and full jitter, error classification and
//! request accounting. Every component sends through [`Ctx::send`].

use crate::config::{RetryPolicy, StoreConfig};
use crate::error::Error;
use crate::metrics::{Metrics, OpKind};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::ConsumedCapacity;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A DynamoDB operation, for counters and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    GetItem,
    BatchGetItem,
    UpdateItem,
    PutItem,
    Scan,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::GetItem => "GetItem",
            Op::BatchGetItem => "BatchGetItem",
            Op::UpdateItem => "UpdateItem",
            Op::PutItem => "PutItem",
            Op::Scan => "Scan",
        }
    }

    pub(crate) fn kind(self) -> OpKind {
        match self {
            Op::GetItem | Op::BatchGetItem | Op::Scan => OpKind::Read,
            Op::UpdateItem | Op::PutItem => OpKind::Write,
        }
    }
}

/// Counters of one trait call (for [`murmur_core::ApplyReport`]).
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
}

/// How a failed attempt is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Throttled,
    Transient,
    Fatal,
}

const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
    "TooManyRequestsException",
];

const TRANSIENT_CODES: &[&str] = &[
    "InternalServerError",
    "ServiceUnavailable",
    "InternalFailure",
];

fn classify<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Class {
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Class::Transient,
        SdkError::DispatchFailure(d) => {
            if d.is_user() {
                Class::Fatal
            } else {
                Class::Transient
            }
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            if THROTTLING_CODES.contains(&code) {
                Class::Throttled
            } else if TRANSIENT_CODES.contains(&code) || s.raw().status().as_u16() >= 500 {
                Class::Transient
            } else {
                Class::Fatal
            }
        }
        _ => Class::Fatal,
    }
}

/// A request that failed for good, with the attempts it took.
#[derive(Debug)]
pub(crate) struct Failed<E> {
    pub(crate) err: SdkError<E>,
    pub(crate) attempts: u32,
}

impl<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static> Failed<E> {
    /// The service error code, if the service answered.
    pub(crate) fn code(&self) -> Option<&str> {
        self.err.as_service_error().and_then(|e| e.code())
    }

    /// The service error message, if the service answered.
    pub(crate) fn service_message(&self) -> Option<&str> {
        self.err.as_service_error().and_then(|e| e.message())
    }

    /// The service error, if the service answered.
    pub(crate) fn service_error(&self) -> Option<&E> {
        self.err.as_service_error()
    }

    /// Converts into this crate's error.
    pub(crate) fn into_error(self, table: &str, op: Op, key: Option<String>) -> Error {
        let message = match (self.code(), self.service_message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_owned(),
            _ => DisplayErrorContext(&self.err).to_string(),
        };
        Error::Request {
            table: table.to_owned(),
            operation: op.name(),
            key,
            attempts: self.attempts,
            message,
            source: Box::new(self.err),
        }
    }
}

/// A table plus the client, retry policy and counters used to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) table: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_concurrency: usize,
    pub(crate) metrics: Arc<Metrics>,
}

impl Ctx {
    /// Wraps `client` for `config`: the SDK's retries are switched off (this
    /// crate retries and counts every attempt itself) and the attempt timeout
    /// is applied.
    pub(crate) fn new(client: &Client, config: &StoreConfig) -> Self {
        let conf = client.config();
        let mut builder = conf.to_builder().retry_config(RetryConfig::disabled());
        if let Some(timeout) = config.attempt_timeout {
            let mut timeouts = conf
                .timeout_config()
                .cloned()
                .unwrap_or_else(TimeoutConfig::disabled)
                .to_builder();
            timeouts = timeouts.operation_attempt_timeout(timeout);
            builder = builder.timeout_config(timeouts.build());
        }
        Ctx {
            client: Client::from_conf(builder.build()),
            table: config.table.as_str().into(),
            name: format!("dynamodb:{}", config.table).into(),
            retry: config.retry,
            max_concurrency: config.max_concurrency.max(1),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Sends one request through the retry loop. `attempt` builds and sends
    /// the request; it is called once per attempt. Retryable failures
    /// (throttling, 5xx, timeouts, connection errors) are retried with
    /// backoff until the policy's attempts are used up; every other failure
    /// is returned at once (a `ConditionalCheckFailedException` is for the
    /// caller to interpret).
    pub(crate) async fn send<T, E, F, Fut>(
        &self,
        op: Op,
        stats: &CallStats,
        mut attempt: F,
    ) -> Result<T, Failed<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.metrics.request(op.kind());
            stats.requests.fetch_add(1, Relaxed);
            let err = match attempt().await {
                Ok(out) => return Ok(out),
                Err(err) => err,
            };
            let class = classify(&err);
            match class {
                Class::Throttled => self.metrics.throttled(),
                Class::Transient => self.metrics.transient(),
                Class::Fatal => {}
            }
            if class == Class::Fatal || attempts >= self.retry.max_attempts {
                return Err(Failed { err, attempts });
            }
            let delay = self.retry.backoff(attempts);
            tracing::debug!(
                table = %self.table,
                operation = op.name(),
                attempt = attempts,
                ?class,
                error = %DisplayErrorContext(&err),
                ?delay,
                "retrying DynamoDB request"
            );
            self.count_retry(stats);
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts one retry (of any cause) in both counters.
    pub(crate) fn count_retry(&self, stats: &CallStats) {
        self.metrics.retry();
        stats.retries.fetch_add(1, Relaxed);
    }

    /// Records consumed capacity reported by the service.
    pub(crate) fn capacity(&self, op: Op, consumed: Option<&ConsumedCapacity>) {
        if let Some(units) = consumed.and_then(|c| c.capacity_units()) {
            self.metrics.capacity(op.kind(), units);
        }
    }
}
