//! Bad records: counted, logged, optionally dead-lettered, and a threshold
//! that decides whether the scan fails.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use crate::error::{Error, Result};

/// Where in its unit a bad record was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordLocation {
    /// A JSON Lines line, 1-based (as editors and `sed -n 3p` count).
    Line(u64),
    /// A Parquet row, 1-based within the object (row index + 1).
    Row(u64),
    /// A DynamoDB item: the segment and the item's key (DynamoDB JSON).
    Item {
        /// Scan segment.
        segment: u32,
        /// The item's key attributes, when they could be read.
        key: String,
    },
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordLocation::Line(n) => write!(f, "line {n}"),
            RecordLocation::Row(n) => write!(f, "row {n}"),
            RecordLocation::Item { segment, key } => write!(f, "segment {segment} item {key}"),
        }
    }
}

/// A record that could not be decoded (or a line that was too long).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// The object key (or `<table>#segment-<s>-of-<n>`).
    pub object: String,
    /// Where in the object.
    pub location: RecordLocation,
    /// Why it was rejected.
    pub reason: String,
    /// The raw line, when there is one and it is not too long (JSON Lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}: {}", self.object, self.location, self.reason)
    }
}

/// A JSON Lines object that receives one line per bad record.
///
/// Each line is a JSON object with `object`, `location` (`{"line": 3}`,
/// `{"row": 17}` or `{"item": {...}}`), `reason` and, for JSON Lines input,
/// `raw`. The object is created on the first bad record (streamed as a
/// multipart upload) and completed by [`BadRecordSink::finish`].
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The store to write to.
    pub store: Arc<dyn ObjectStore>,
    /// The object to write.
    pub path: Path,
}

/// What to do with bad records.
#[derive(Debug, Clone)]
pub struct BadRecordPolicy {
    /// How many bad records a scan tolerates; one more fails it with
    /// [`Error::TooManyBadRecords`]. Default 0: the first bad record fails.
    pub max_bad_records: u64,
    /// Optional dead-letter object.
    pub dead_letter: Option<DeadLetter>,
    /// How many bad records to keep in memory for
    /// [`BadRecordSink::samples`]. Default 100.
    pub samples: usize,
}

impl Default for BadRecordPolicy {
    fn default() -> Self {
        BadRecordPolicy {
            max_bad_records: 0,
            dead_letter: None,
            samples: 100,
        }
    }
}

impl BadRecordPolicy {
    /// Tolerates up to `max` bad records.
    pub fn max_bad_records(max: u64) -> Self {
        BadRecordPolicy {
            max_bad_records: max,
            ..Self::default()
        }
    }

    /// Also writes every bad record to a dead-letter JSON Lines object.
    pub fn with_dead_letter(mut self, store: Arc<dyn ObjectStore>, path: Path) -> Self {
        self.dead_letter = Some(DeadLetter { store, path });
        self
    }
}

/// The error sink every read of a source reports bad records to: logs them
/// (`tracing` warn), counts them, keeps the first few, writes them to the
/// dead-letter object, and fails the scan past `max_bad_records`.
///
/// A replayed chunk reports its bad records again.
pub struct BadRecordSink {
    policy: BadRecordPolicy,
    count: AtomicU64,
    samples: Mutex<Vec<BadRecord>>,
    exceeded: Mutex<Option<String>>,
    writer: tokio::sync::Mutex<Option<BufWriter>>,
}

impl fmt::Debug for BadRecordSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BadRecordSink")
            .field("max_bad_records", &self.policy.max_bad_records)
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Default for BadRecordSink {
    fn default() -> Self {
        Self::new(BadRecordPolicy::default())
    }
}

impl BadRecordSink {
    /// A sink with `policy`.
    pub fn new(policy: BadRecordPolicy) -> Self {
        BadRecordSink {
            policy,
            count: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            exceeded: Mutex::new(None),
            writer: tokio::sync::Mutex::new(None),
        }
    }

    /// Bad records reported so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The first bad records (up to [`BadRecordPolicy::samples`]).
    pub fn samples(&self) -> Vec<BadRecord> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reports a bad record. Fails with [`Error::TooManyBadRecords`] once the
    /// count passes the threshold, and from then on for every reader (see
    /// [`check`](Self::check)).
    pub async fn report(&self, bad: BadRecord) -> Result<()> {
        tracing::warn!(object = %bad.object, location = %bad.location, reason = %bad.reason, "bad record");
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() < self.policy.samples {
                samples.push(bad.clone());
            }
        }
        if let Some(dl) = &self.policy.dead_letter {
            let mut line = serde_json::to_vec(&bad).expect("bad records serialize");
            line.push(b'\n');
            let mut writer = self.writer.lock().await;
            let w = writer
                .get_or_insert_with(|| BufWriter::new(Arc::clone(&dl.store), dl.path.clone()));
            w.write_all(&line)
                .await
                .map_err(|source| Error::DeadLetter {
                    object: dl.path.to_string(),
                    source,
                })?;
        }
        if count > self.policy.max_bad_records {
            let mut exceeded = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
            exceeded.get_or_insert_with(|| bad.to_string());
            return Err(Error::TooManyBadRecords {
                max: self.policy.max_bad_records,
                count,
                last: bad.to_string(),
            });
        }
        Ok(())
    }

    /// Fails if any reader has already pushed the count past the threshold,
    /// so every read of the source stops.
    pub fn check(&self) -> Result<()> {
        let exceeded = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
        match &*exceeded {
            None => Ok(()),
            Some(first) => Err(Error::TooManyBadRecords {
                max: self.policy.max_bad_records,
                count: self.count(),
                last: first.clone(),
            }),
        }
    }

    /// Completes the dead-letter object (if any bad record was written) and
    /// returns the number of bad records. Call once, at the end of the scan.
    pub async fn finish(&self) -> Result<u64> {
        if let Some(mut w) = self.writer.lock().await.take() {
            let object = self
                .policy
                .dead_letter
                .as_ref()
                .map(|d| d.path.to_string())
                .unwrap_or_default();
            w.shutdown()
                .await
                .map_err(|source| Error::DeadLetter { object, source })?;
        }
        Ok(self.count())
    }
}
