//! Bad records: counted, logged, optionally dead-lettered, and a threshold
//! that decides whether the scan fails.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde::Serialize;

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

/// Where dead letters go: one JSON Lines object per chunk that had bad
/// records, under a prefix.
///
/// Each line is a JSON object with `object`, `location` (`{"line": 3}`,
/// `{"row": 17}` or `{"item": {...}}`), `reason` and, for JSON Lines input,
/// `raw`. A chunk's object is
/// `<prefix>/<unit key>/<first line or row of the chunk>.jsonl`
/// (`dlq/events/day=02/part-0.json.gz/lines-8193.jsonl`;
/// `dlq/<table>#segment-0-of-4/page-after-<hash>.jsonl` for a DynamoDB
/// page) and is written with one PUT before the chunk is handed on, so it is
/// durable before anything that chunk holds can be committed: a worker
/// killed at any point loses no dead letter, and a chunk read again (a
/// resume, a replay) writes the same object with the same lines, so no bad
/// record of an unchanged export is in two objects. (A DynamoDB table
/// written during the scan can move its page boundaries: a resumed scan
/// may then write a bad item again under another page's label; its
/// `location` — segment and item key — tells the copies apart.) A chunk
/// with more than 8 MiB of dead letters continues in `<...>.2.jsonl`,
/// `<...>.3.jsonl`. A scan failed by the threshold writes the dead letters
/// of the chunks it delivered and of the chunk that failed it; other
/// chunks in flight are read again by the next run.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The store to write to.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix the objects are written under.
    pub prefix: Path,
}

/// The most dead-letter bytes one object holds before a chunk's bad records
/// continue in its next part object; bounds what a chunk of long bad lines
/// keeps in memory.
const PART_BYTES: usize = 8 << 20;

/// What to do with bad records.
#[derive(Debug, Clone)]
pub struct BadRecordPolicy {
    /// How many bad records a scan tolerates (a backfill: over its whole
    /// run, see [`BadRecordSink::carry_over`]); one more fails it with
    /// [`Error::TooManyBadRecords`]. Default 0: the first bad record fails.
    pub max_bad_records: u64,
    /// Optional dead-letter objects.
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

    /// Also writes every bad record to dead-letter JSON Lines objects under
    /// `prefix` (see [`DeadLetter`]).
    pub fn with_dead_letter(mut self, store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        self.dead_letter = Some(DeadLetter { store, prefix });
        self
    }
}

/// The error sink every read of a source reports bad records to: logs them
/// (`tracing` warn), counts them, keeps the first few, writes them to the
/// dead-letter objects, and fails the scan past `max_bad_records`.
///
/// A read reports a chunk's bad records through [`chunk`](Self::chunk) and
/// [seals](ChunkBadRecords::seal) it before delivering the chunk. A chunk
/// read again — a pending batch re-read, chunks decoded ahead and read
/// again — reports its bad records again: they are not counted, logged or
/// sampled twice (a chunk is known by its unit and label), and its
/// dead-letter object is rewritten, not added to.
pub struct BadRecordSink {
    policy: BadRecordPolicy,
    tally: Mutex<Tally>,
    samples: Mutex<Vec<BadRecord>>,
    exceeded: Mutex<Option<String>>,
}

/// What [`Error::TooManyBadRecords`] names as the last bad record when the
/// committed ones alone are too many.
const COMMITTED: &str = "among those the run's lanes committed (see their dead letters)";

/// What a [`BadRecordSink`] has counted.
#[derive(Debug, Default)]
struct Tally {
    /// Distinct bad records reported since the last carry-over.
    counted: u64,
    /// Bad records of earlier runs (see [`BadRecordSink::carry_over`]).
    carried: u64,
    /// The recent chunks (`unit`, `label`) with bad records, oldest first,
    /// at most [`RECENT_CHUNKS`]: how many of each one's are counted. A
    /// chunk's bad records come in the same order on every read, so its
    /// `n`-th one is new only when fewer than `n` are counted.
    chunks: VecDeque<((String, String), u64)>,
}

/// How many chunks with bad records a sink remembers. A chunk is read
/// twice in one process only where a pending batch's re-read ran ahead of
/// its end (a few chunks per lane, read again right after), so a bounded
/// memory is enough; a chunk forgotten and read again is counted again
/// (the limit errs on the strict side). Looked up by a scan from the
/// newest end: a chunk's bad records arrive together, so the chunk asked
/// for is almost always the last one, and only bad records get here.
const RECENT_CHUNKS: usize = 4096;

impl Tally {
    /// Counts the `nth` (1-based) bad record of chunk `(unit, label)`;
    /// whether it was new.
    fn count(&mut self, unit: &str, label: &str, nth: u64) -> bool {
        let known = self
            .chunks
            .iter()
            .rposition(|((u, l), _)| u == unit && l == label);
        let i = match known {
            Some(i) => i,
            None => {
                if self.chunks.len() == RECENT_CHUNKS {
                    self.chunks.pop_front();
                }
                self.chunks
                    .push_back(((unit.to_owned(), label.to_owned()), 0));
                self.chunks.len() - 1
            }
        };
        let counted = &mut self.chunks[i].1;
        if nth <= *counted {
            return false;
        }
        *counted = nth;
        self.counted += 1;
        true
    }

    /// What the threshold is compared with.
    fn total(&self) -> u64 {
        self.carried.saturating_add(self.counted)
    }
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
            tally: Mutex::new(Tally::default()),
            samples: Mutex::new(Vec::new()),
            exceeded: Mutex::new(None),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Distinct bad records reported (since the last
    /// [`carry_over`](Self::carry_over)); a chunk read again adds none.
    pub fn count(&self) -> u64 {
        self.tally().counted
    }

    /// Starts counting toward `max_bad_records` afresh from `committed` bad
    /// records — those earlier runs of the same scan read and committed
    /// with their lanes' checkpoints — forgetting what was reported before
    /// (whose chunks may be read again). A backfill calls this when a run
    /// begins or resumes, so the limit holds over the whole run however
    /// often it restarts. Fails with [`Error::TooManyBadRecords`] (and so
    /// does every read from then on) when `committed` alone is past the
    /// threshold: a resume with a lower limit than the run already passed.
    pub fn carry_over(&self, committed: u64) -> Result<()> {
        *self.tally() = Tally {
            carried: committed,
            ..Tally::default()
        };
        self.check_committed(committed)
    }

    /// Fails with [`Error::TooManyBadRecords`] (and so does every read from
    /// then on) if `committed` bad records — a run's committed total, over
    /// every worker — are more than `max_bad_records`. Workers reading a
    /// run at once each count only what they read (and what was committed
    /// when they started); a backfill checks the whole run's total with
    /// this before it completes the run.
    pub fn check_committed(&self, committed: u64) -> Result<()> {
        if committed > self.policy.max_bad_records {
            self.exceeded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| COMMITTED.to_owned());
            return Err(Error::TooManyBadRecords {
                max: self.policy.max_bad_records,
                count: committed,
                earlier: committed,
                last: COMMITTED.to_owned(),
            });
        }
        self.check()
    }

    /// The first bad records (up to [`BadRecordPolicy::samples`]).
    pub fn samples(&self) -> Vec<BadRecord> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Collects the bad records of one chunk of `unit` (a unit key);
    /// `label` names where the chunk starts (`lines-8193`, `rows-1`) and is
    /// the name of its dead-letter object. The same chunk must get the same
    /// label on every read, which holds for reads that start at chunk
    /// boundaries (a backfill's do): a read from inside a chunk starts a
    /// chunk of its own, whose bad records are counted again.
    pub fn chunk<'a>(&'a self, unit: &'a str, label: String) -> ChunkBadRecords<'a> {
        ChunkBadRecords {
            sink: self,
            unit,
            label,
            lines: Vec::new(),
            parts: 0,
            reported: 0,
        }
    }

    /// Fails if any reader has already pushed the count past the threshold,
    /// so every read of the source stops.
    pub fn check(&self) -> Result<()> {
        let exceeded = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
        match &*exceeded {
            None => Ok(()),
            Some(first) => {
                let tally = self.tally();
                Err(Error::TooManyBadRecords {
                    max: self.policy.max_bad_records,
                    count: tally.total(),
                    earlier: tally.carried,
                    last: first.clone(),
                })
            }
        }
    }
}

/// The bad records of one chunk, from [`BadRecordSink::chunk`]: counted and
/// logged as they are reported, written to their dead-letter object when
/// the chunk is [sealed](Self::seal). Dropped unsealed (the chunk was not
/// delivered), its dead letters are not written: the chunk will be read
/// again.
#[must_use = "a chunk's dead letters are written when it is sealed"]
pub struct ChunkBadRecords<'a> {
    sink: &'a BadRecordSink,
    unit: &'a str,
    label: String,
    lines: Vec<u8>,
    parts: u32,
    reported: u64,
}

impl fmt::Debug for ChunkBadRecords<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkBadRecords")
            .field("unit", &self.unit)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl ChunkBadRecords<'_> {
    /// Reports a bad record of the chunk. Fails with
    /// [`Error::TooManyBadRecords`] once the count passes the threshold (the
    /// chunk's dead letters so far are written first, so they show what
    /// failed the scan), and from then on for every reader (see
    /// [`BadRecordSink::check`]).
    pub async fn report(&mut self, bad: BadRecord) -> Result<()> {
        let sink = self.sink;
        self.reported += 1;
        let (new, total, carried) = {
            let mut tally = sink.tally();
            let new = tally.count(self.unit, &self.label, self.reported);
            (new, tally.total(), tally.carried)
        };
        if new {
            tracing::warn!(object = %bad.object, location = %bad.location, reason = %bad.reason, "bad record");
            let mut samples = sink.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() < sink.policy.samples {
                samples.push(bad.clone());
            }
        }
        if sink.policy.dead_letter.is_some() {
            serde_json::to_writer(&mut self.lines, &bad).expect("bad records serialize");
            self.lines.push(b'\n');
            if self.lines.len() >= PART_BYTES {
                self.write().await?;
            }
        }
        if total > sink.policy.max_bad_records {
            // The dead letters first, then every reader stops at its next
            // check: stopped first, another lane could end the run (and the
            // process) while this PUT was still on its way.
            self.write().await?;
            sink.exceeded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| bad.to_string());
            return Err(Error::TooManyBadRecords {
                max: sink.policy.max_bad_records,
                count: total,
                earlier: carried,
                last: bad.to_string(),
            });
        }
        Ok(())
    }

    /// Writes the chunk's remaining dead letters (nothing when it had no
    /// bad record or there is no dead-letter prefix) and returns how many
    /// bad records the chunk had ([`Chunk::bad`](crate::Chunk::bad)). Call
    /// before handing the chunk on.
    pub async fn seal(mut self) -> Result<u64> {
        self.write().await?;
        Ok(self.reported)
    }

    /// PUTs the collected lines as the chunk's next part object.
    async fn write(&mut self) -> Result<()> {
        let Some(dl) = &self.sink.policy.dead_letter else {
            return Ok(());
        };
        if self.lines.is_empty() {
            return Ok(());
        }
        self.parts += 1;
        let name = match self.parts {
            1 => format!("{}.jsonl", self.label),
            n => format!("{}.{n}.jsonl", self.label),
        };
        let mut path = dl.prefix.clone();
        match Path::parse(self.unit) {
            Ok(unit) => path.extend(unit.parts()),
            Err(_) => path.extend(self.unit.split('/').filter(|p| !p.is_empty())),
        }
        let path = path.join(name);
        let bytes = std::mem::take(&mut self.lines);
        dl.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| Error::DeadLetter {
                object: path.to_string(),
                source,
            })?;
        Ok(())
    }
}
