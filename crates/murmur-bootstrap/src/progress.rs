//! [`Progress`]: live counters of a backfill or live run, for progress bars,
//! periodic log lines and metrics endpoints.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters a run updates as it goes; share one with whatever displays
/// them (the worker's progress bar, a metrics endpoint) and read them with
/// [`snapshot`](Progress::snapshot). All counters only grow, except
/// `lag_ms`.
#[derive(Debug, Default)]
pub struct Progress {
    units_total: AtomicU64,
    units_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    records: AtomicU64,
    skipped: AtomicU64,
    duplicates: AtomicU64,
    expired: AtomicU64,
    batches: AtomicU64,
    replayed: AtomicU64,
    rows: AtomicU64,
    lag_ms: AtomicI64,
    lane_lag_ms: Mutex<BTreeMap<String, i64>>,
}

/// A copy of a [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Work units (objects, scan segments) of this process's lanes.
    pub units_total: u64,
    /// Units read to their end.
    pub units_done: u64,
    /// Bytes of this process's units (objects; scan segments estimate).
    pub bytes_total: u64,
    /// Bytes of the units read to their end.
    pub bytes_done: u64,
    /// Records folded (events in).
    pub records: u64,
    /// Records dropped by the event-time cut (backfill: at or after it;
    /// live: before it).
    pub skipped: u64,
    /// Records skipped as duplicates by the deduper.
    pub duplicates: u64,
    /// Records dropped because their bucket was already past the window's
    /// retention when they were folded.
    pub expired: u64,
    /// Batches committed, replays included.
    pub batches: u64,
    /// Batches replayed from a pending intent after a crash or takeover.
    pub replayed: u64,
    /// Row deltas written (one per distinct entity and bucket per batch).
    pub rows: u64,
    /// Live only: wall-clock time minus the newest event time of the last
    /// chunk, in milliseconds (0 before the first chunk).
    pub lag_ms: i64,
}

impl Progress {
    /// New, all zero.
    pub fn new() -> Self {
        Progress::default()
    }

    /// The current values.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProgressSnapshot {
            units_total: get(&self.units_total),
            units_done: get(&self.units_done),
            bytes_total: get(&self.bytes_total),
            bytes_done: get(&self.bytes_done),
            records: get(&self.records),
            skipped: get(&self.skipped),
            duplicates: get(&self.duplicates),
            expired: get(&self.expired),
            batches: get(&self.batches),
            replayed: get(&self.replayed),
            rows: get(&self.rows),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn planned(&self, units: u64, bytes: u64) {
        self.units_total.fetch_add(units, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn unit_done(&self, bytes: u64) {
        self.units_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, kept: u64, skipped: u64) {
        self.records.fetch_add(kept, Ordering::Relaxed);
        self.skipped.fetch_add(skipped, Ordering::Relaxed);
    }

    pub(crate) fn batch(&self, report: &crate::BatchReport, replayed: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(report.rows, Ordering::Relaxed);
        self.duplicates
            .fetch_add(report.duplicates, Ordering::Relaxed);
        self.expired.fetch_add(report.expired, Ordering::Relaxed);
        if replayed {
            self.replayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Live only: the lag of each lane that has had a chunk (same measure
    /// as [`ProgressSnapshot::lag_ms`]), in lane order.
    pub fn lane_lags(&self) -> Vec<(String, i64)> {
        let lanes = self.lane_lag_ms.lock().unwrap_or_else(|e| e.into_inner());
        lanes
            .iter()
            .map(|(lane, lag)| (lane.clone(), *lag))
            .collect()
    }

    pub(crate) fn lag(&self, lane: &murmur_core::LaneId, lag_ms: i64) {
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
        let mut lanes = self.lane_lag_ms.lock().unwrap_or_else(|e| e.into_inner());
        match lanes.get_mut(lane.as_str()) {
            Some(lag) => *lag = lag_ms,
            None => {
                lanes.insert(lane.as_str().to_owned(), lag_ms);
            }
        }
    }

    /// Resolves once no record was read for `limit` (checked every 100 ms):
    /// the stop condition of a bounded live run (`stop_after_idle`).
    pub async fn idle(&self, limit: std::time::Duration) {
        let (mut last, mut since) = (self.snapshot().records, std::time::Instant::now());
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.snapshot().records;
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            } else if since.elapsed() >= limit {
                return;
            }
        }
    }

    /// Forgets a lane's lag (it was revoked from this worker).
    pub(crate) fn lane_gone(&self, lane: &murmur_core::LaneId) {
        let mut lanes = self.lane_lag_ms.lock().unwrap_or_else(|e| e.into_inner());
        lanes.remove(lane.as_str());
    }
}

/// A stage's side of an event-time cut: the backfill keeps the events
/// before it, live those at or after it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// `event_time < cut` (the backfill).
    Before,
    /// `event_time >= cut` (live).
    After,
}

impl Side {
    /// Whether the stage on this side of `cut` keeps an event at `t`;
    /// without a cut, every event.
    pub(crate) fn keeps(self, cut: Option<i64>, t: i64) -> bool {
        match (self, cut) {
            (_, None) => true,
            (Side::Before, Some(at)) => t < at,
            (Side::After, Some(at)) => t >= at,
        }
    }

    /// The pipeline's record check (see
    /// [`Pipeline::record_check`](murmur_core::Pipeline::record_check)) for
    /// the events this side of `cut` keeps: the others are the other
    /// stage's to judge.
    pub(crate) fn record_check<T: 'static, M: murmur_core::Monoid>(
        self,
        pipeline: &murmur_core::Pipeline<T, M>,
        cut: Option<i64>,
    ) -> murmur_core::RecordCheck<T> {
        let check = pipeline.record_check();
        if cut.is_none() {
            return check;
        }
        std::sync::Arc::new(move |r: &murmur_core::Record<T>| {
            if self.keeps(cut, r.event_time_ms) {
                check(r)
            } else {
                Ok(())
            }
        })
    }
}

/// Keeps the records `keep` accepts (one side of an event-time cut) and
/// counts both sides in `progress`; returns the kept records and how many
/// were dropped. Backfill keeps events before the cut, live after it.
pub(crate) fn keep_counted<T>(
    mut records: Vec<murmur_core::Record<T>>,
    keep: impl Fn(i64) -> bool,
    progress: &Progress,
) -> (Vec<murmur_core::Record<T>>, u64) {
    let before = records.len();
    // In place: a chunk whose records are all kept (every chunk but the one
    // at the cut) is only read, not moved.
    records.retain(|r| keep(r.event_time_ms));
    let dropped = (before - records.len()) as u64;
    progress.read(records.len() as u64, dropped);
    (records, dropped)
}
