//! Request, retry and capacity counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one or more DynamoDB components (share one with
/// `with_metrics`). Every counter only grows; read them with
/// [`snapshot`](Metrics::snapshot).
///
/// One *request* is one HTTP attempt: the SDK's own retries are off, so a
/// request retried three times counts four requests and three retries.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    read_requests: AtomicU64,
    write_requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    transient_errors: AtomicU64,
    unprocessed_keys: AtomicU64,
    cas_conflicts: AtomicU64,
    rows_written: AtomicU64,
    rows_unchanged: AtomicU64,
    read_capacity_milli: AtomicU64,
    write_capacity_milli: AtomicU64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Requests sent (every attempt counts), all operations.
    pub requests: u64,
    /// Item reads sent: `GetItem`, `BatchGetItem`, `Scan`.
    pub read_requests: u64,
    /// Item writes sent: `UpdateItem`, `PutItem`.
    pub write_requests: u64,
    /// Requests retried: throttled, transient failures, unprocessed keys and
    /// compare-and-set conflicts.
    pub retries: u64,
    /// Attempts answered with a throttling error.
    pub throttled: u64,
    /// Attempts that failed with a 5xx, a timeout or a connection error.
    pub transient_errors: u64,
    /// Keys `BatchGetItem` returned unprocessed (and that were re-requested).
    pub unprocessed_keys: u64,
    /// Compare-and-set writes that lost to a concurrent writer.
    pub cas_conflicts: u64,
    /// Rows whose stored value changed.
    pub rows_written: u64,
    /// Rows left as they were (fence shows the batch landed, or an idempotent
    /// merge changed nothing).
    pub rows_unchanged: u64,
    /// Read capacity units the service reported as consumed.
    pub read_capacity_units: f64,
    /// Write capacity units the service reported as consumed.
    pub write_capacity_units: f64,
}

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            requests: self.requests.load(Relaxed),
            read_requests: self.read_requests.load(Relaxed),
            write_requests: self.write_requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            transient_errors: self.transient_errors.load(Relaxed),
            unprocessed_keys: self.unprocessed_keys.load(Relaxed),
            cas_conflicts: self.cas_conflicts.load(Relaxed),
            rows_written: self.rows_written.load(Relaxed),
            rows_unchanged: self.rows_unchanged.load(Relaxed),
            read_capacity_units: self.read_capacity_milli.load(Relaxed) as f64 / 1000.0,
            write_capacity_units: self.write_capacity_milli.load(Relaxed) as f64 / 1000.0,
        }
    }

    pub(crate) fn request(&self, kind: OpKind) {
        self.requests.fetch_add(1, Relaxed);
        match kind {
            OpKind::Read => self.read_requests.fetch_add(1, Relaxed),
            OpKind::Write => self.write_requests.fetch_add(1, Relaxed),
        };
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    pub(crate) fn transient(&self) {
        self.transient_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn unprocessed(&self, n: u64) {
        self.unprocessed_keys.fetch_add(n, Relaxed);
    }

    pub(crate) fn conflict(&self) {
        self.cas_conflicts.fetch_add(1, Relaxed);
    }

    pub(crate) fn rows(&self, written: u64, unchanged: u64) {
        self.rows_written.fetch_add(written, Relaxed);
        self.rows_unchanged.fetch_add(unchanged, Relaxed);
    }

    pub(crate) fn capacity(&self, kind: OpKind, units: f64) {
        if !(units.is_finite() && units > 0.0) {
            return;
        }
        let milli = (units * 1000.0).round() as u64;
        match kind {
            OpKind::Write => self.write_capacity_milli.fetch_add(milli, Relaxed),
            OpKind::Read => self.read_capacity_milli.fetch_add(milli, Relaxed),
        };
    }
}

/// What an operation does, for the per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Read,
    Write,
}
