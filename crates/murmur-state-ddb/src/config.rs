//! Typed configuration shared by the three DynamoDB components.

use std::time::Duration;

/// Configuration of a [`DynamoDbStore`](crate::DynamoDbStore),
/// [`DynamoDbCheckpointStore`](crate::DynamoDbCheckpointStore) or
/// [`DynamoDbDeduper`](crate::DynamoDbDeduper): the table plus how hard to
/// push it.
///
/// ```
/// use murmur_state_ddb::{RetryPolicy, StoreConfig};
/// use std::time::Duration;
///
/// let config = StoreConfig::new("murmur-counters")
///     .with_max_concurrency(64)
///     .with_retry(RetryPolicy::default().with_max_attempts(12));
/// assert_eq!(config.table, "murmur-counters");
/// assert_eq!(config.attempt_timeout, Some(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The table name.
    pub table: String,
    /// Most requests in flight at once for one call (`apply`, `get_many`,
    /// `claim`). Default 16.
    pub max_concurrency: usize,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Timeout of one request attempt (a timed-out attempt is retried like a
    /// 5xx). `None` keeps the SDK client's own setting. Default 10 s.
    pub attempt_timeout: Option<Duration>,
}

impl StoreConfig {
    /// Defaults for `table`.
    pub fn new(table: impl Into<String>) -> Self {
        StoreConfig {
            table: table.into(),
            max_concurrency: 16,
            retry: RetryPolicy::default(),
            attempt_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// Sets [`max_concurrency`](Self::max_concurrency) (at least 1).
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Sets the [`RetryPolicy`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`attempt_timeout`](Self::attempt_timeout).
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }
}

/// Retries with capped exponential backoff and full jitter.
///
/// Retried: throttling (`ProvisionedThroughputExceededException`,
/// `ThrottlingException`, `RequestLimitExceeded`), HTTP 5xx, attempt
/// timeouts, connection failures and unreadable responses, plus
/// `UnprocessedKeys` of `BatchGetItem`. The sleep before retry `n` (1-based)
/// is uniform in `[0, min(max_delay, base_delay * 2^(n-1))]`.
///
/// The SDK's own retries are switched off on the client this crate uses, so
/// every attempt is one counted request (see [`Metrics`](crate::Metrics)).
/// Retrying a write that did land is safe: row writes are fenced or
/// idempotent, checkpoint and claim writes are conditional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1). Default 10.
    pub max_attempts: u32,
    /// First backoff ceiling. Default 25 ms.
    pub base_delay: Duration,
    /// Backoff ceiling cap. Default 2 s.
    pub max_delay: Duration,
    /// Compare-and-set attempts per row before giving up with
    /// [`Error::Contention`](crate::Error::Contention). Default 100.
    pub max_conflicts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(2),
            max_conflicts: 100,
        }
    }
}

impl RetryPolicy {
    /// Sets [`max_attempts`](Self::max_attempts) (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets [`base_delay`](Self::base_delay) and [`max_delay`](Self::max_delay).
    pub fn with_delays(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max.max(base);
        self
    }

    /// Sets [`max_conflicts`](Self::max_conflicts) (at least 1).
    pub fn with_max_conflicts(mut self, n: u32) -> Self {
        self.max_conflicts = n.max(1);
        self
    }

    /// The full-jitter sleep before retry number `retry` (1-based).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = RetryPolicy::default()
            .with_delays(Duration::from_millis(10), Duration::from_millis(100));
        for retry in 1..40 {
            let ceiling = Duration::from_millis(10 * (1u64 << (retry - 1).min(20)))
                .min(Duration::from_millis(100));
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling, "retry {retry}");
            }
        }
        let zero = RetryPolicy::default().with_delays(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }
}
