//! JSON Lines snapshots over object_store.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use murmur_core::{HandoffToken, InstalledCheck, Position, Record, RecordCheck};
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::bad::{BadRecord, BadRecordPolicy, BadRecordSink, RecordLocation};
use crate::error::{Error, Result};
use crate::lines::{Line, LineReader};
use crate::listing::ObjectListing;
use crate::source::{Chunk, ChunkSender, ChunkStream, SnapshotSource, WorkUnit, spawn_reader};
use crate::spare::SpareRecords;
use crate::{object_start, unit_position};

/// Decodes one JSON Lines line into a record (value, event time, optional
/// event id). The source fills in the record's position (its line, [`Position::Row`]).
///
/// [`SerdeLines`] covers the usual case; implement this for anything else
/// (several event types per file, a custom parser).
pub trait LineDecoder: Send + Sync + 'static {
    /// The decoded event type.
    type Item: Send + 'static;

    /// Decodes a line (without its terminator). An `Err` is the reason the
    /// line is bad; it goes to the bad-record sink.
    fn decode(&self, line: &[u8]) -> Result<Record<Self::Item>, String>;
}

type EventTime<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;
type EventId<T> = Arc<dyn Fn(&T) -> Option<Arc<str>> + Send + Sync>;

/// A [`LineDecoder`] that deserializes each line into `T` with serde and
/// takes the event time (and optionally an event id) from the value.
///
/// Timestamps written as RFC 3339 strings can be parsed during
/// deserialization with [`rfc3339_ms`](crate::rfc3339_ms).
///
/// ```
/// use murmur_source_snapshot::{LineDecoder, SerdeLines};
/// #[derive(Debug, serde::Deserialize)]
/// struct Click { id: String, page: String, ts_ms: i64 }
///
/// let decoder = SerdeLines::new(|c: &Click| c.ts_ms).event_id(|c| Some(c.id.as_str().into()));
/// let record = decoder.decode(br#"{"id":"e1","page":"/","ts_ms":5}"#).unwrap();
/// assert_eq!(record.event_time_ms, 5);
/// assert_eq!(record.event_id.as_deref(), Some("e1"));
/// assert!(decoder.decode(br#"{"id":"e1"}"#).unwrap_err().contains("missing field `page`"));
/// ```
pub struct SerdeLines<T> {
    event_time: EventTime<T>,
    event_id: Option<EventId<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for SerdeLines<T> {
    fn clone(&self) -> Self {
        SerdeLines {
            event_time: Arc::clone(&self.event_time),
            event_id: self.event_id.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SerdeLines<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeLines")
            .field("type", &std::any::type_name::<T>())
            .field("event_id", &self.event_id.is_some())
            .finish()
    }
}

impl<T: DeserializeOwned + Send + 'static> SerdeLines<T> {
    /// Deserializes lines into `T`; `event_time` gives the event time in
    /// milliseconds since the Unix epoch.
    pub fn new(event_time: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        SerdeLines {
            event_time: Arc::new(event_time),
            event_id: None,
            _t: PhantomData,
        }
    }

    /// Sets the event-id extractor (for the per-event deduper).
    pub fn event_id(
        mut self,
        event_id: impl Fn(&T) -> Option<Arc<str>> + Send + Sync + 'static,
    ) -> Self {
        self.event_id = Some(Arc::new(event_id));
        self
    }
}

impl<T: DeserializeOwned + Send + 'static> LineDecoder for SerdeLines<T> {
    type Item = T;

    fn decode(&self, line: &[u8]) -> Result<Record<T>, String> {
        let value: T = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let time = (self.event_time)(&value);
        let id = self.event_id.as_ref().and_then(|f| f(&value));
        Ok(Record {
            value,
            event_time_ms: time,
            event_id: id,
            position: Position::Unknown,
        })
    }
}

/// Records a chunk has room for before it grows (the default chunk).
const PREALLOCATED_LINES: u64 = 8192;

/// Options of a [`JsonLinesSource`].
#[derive(Debug, Clone)]
pub struct JsonLinesOptions {
    /// Lines per chunk (default 8192). Chunk boundaries are the multiples of
    /// this; changing it between a run and its replay changes the chunks.
    pub chunk_lines: u64,
    /// Longer lines are bad records (default 1 MiB); they are skipped
    /// without being buffered.
    pub max_line_bytes: usize,
    /// Keeps only records with an event time in this half-open range.
    pub event_time_range: Option<Range<i64>>,
}

impl Default for JsonLinesOptions {
    fn default() -> Self {
        JsonLinesOptions {
            chunk_lines: 8192,
            max_line_bytes: 1 << 20,
            event_time_range: None,
        }
    }
}

/// A snapshot of JSON Lines objects (plain, gzip or zstd) under a prefix.
///
/// Each object is one [`WorkUnit`]; it is streamed through decompression and
/// cut into chunks of [`JsonLinesOptions::chunk_lines`] lines. Positions are
/// 0-based line indexes ([`Position::Object`] `unit`); resuming from line `n`
/// decompresses and skips the first `n` lines without decoding them. Blank
/// lines count as lines but yield no record.
///
/// ```
/// use std::sync::Arc;
/// use futures::TryStreamExt as _;
/// use murmur_core::Position;
/// use object_store::{memory::InMemory, path::Path, ObjectStoreExt as _};
/// use murmur_source_snapshot::{CountEventLines, JsonLinesSource, ObjectListing, SnapshotSource};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Arc::new(InMemory::new());
/// let line = r#"{"entity_id":"a","count":2,"occurred_at":"2026-05-08T14:00:00Z"}"#;
/// store.put(&Path::from("events/day=08/part-0.json"), format!("{line}\n{line}\n").into()).await.unwrap();
///
/// let source = JsonLinesSource::new(ObjectListing::new(store, Path::from("events")), CountEventLines);
/// let units = source.list_units().await.unwrap();
/// let chunks: Vec<_> = source.read(&units[0], &Position::Beginning).try_collect().await.unwrap();
/// assert_eq!(chunks.len(), 1);
/// assert!(chunks[0].last);
/// assert_eq!(chunks[0].records.len(), 2);
/// assert_eq!(chunks[0].records[1].value.count, 2);
/// assert_eq!(chunks[0].records[1].event_time_ms, 1_778_248_800_000);
/// # });
/// ```
pub struct JsonLinesSource<D: LineDecoder> {
    inner: Arc<Inner<D>>,
}

struct Inner<D: LineDecoder> {
    listing: ObjectListing,
    decoder: D,
    options: JsonLinesOptions,
    sink: Arc<BadRecordSink>,
    spare: SpareRecords<D::Item>,
    check: InstalledCheck<D::Item>,
}

impl<D: LineDecoder> Clone for JsonLinesSource<D> {
    fn clone(&self) -> Self {
        JsonLinesSource {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<D: LineDecoder> fmt::Debug for JsonLinesSource<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesSource")
            .field("listing", &self.inner.listing)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl<D: LineDecoder> JsonLinesSource<D> {
    /// A source reading the objects of `listing` with `decoder`, default
    /// options and the default [`BadRecordPolicy`] (no bad record allowed).
    pub fn new(listing: ObjectListing, decoder: D) -> Self {
        Self::with_options(
            listing,
            decoder,
            JsonLinesOptions::default(),
            BadRecordPolicy::default(),
        )
        .expect("default options are valid")
    }

    /// A source with explicit options and bad-record policy.
    pub fn with_options(
        listing: ObjectListing,
        decoder: D,
        options: JsonLinesOptions,
        bad_records: BadRecordPolicy,
    ) -> Result<Self> {
        if options.chunk_lines == 0 || options.max_line_bytes == 0 {
            return Err(Error::Config {
                reason: "chunk_lines and max_line_bytes must be positive".into(),
            });
        }
        Ok(JsonLinesSource {
            inner: Arc::new(Inner {
                listing,
                decoder,
                options,
                sink: Arc::new(BadRecordSink::new(bad_records)),
                spare: SpareRecords::default(),
                check: InstalledCheck::default(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl<D: LineDecoder> SnapshotSource for JsonLinesSource<D> {
    type Item = D::Item;

    async fn list_units(&self) -> Result<Vec<WorkUnit>> {
        self.inner.listing.list().await
    }

    fn read(&self, unit: &WorkUnit, from: &Position) -> ChunkStream<D::Item> {
        let inner = Arc::clone(&self.inner);
        let unit = unit.clone();
        let from = from.clone();
        let span = tracing::debug_span!("jsonl_object", object = %unit.key, from = %from);
        spawn_reader(Arc::clone(&unit.key), move |tx| {
            async move { inner.produce(unit, from, tx).await }.instrument(span)
        })
    }

    async fn handoff(&self) -> Result<Option<HandoffToken>> {
        self.inner.listing.handoff().await
    }

    fn plan_settings(&self) -> String {
        let o = &self.inner.options;
        crate::object_settings("chunk_lines", o.chunk_lines, o.event_time_range.as_ref())
    }

    fn bad_records(&self) -> &Arc<BadRecordSink> {
        &self.inner.sink
    }

    fn recycle(&self, records: Vec<Record<D::Item>>) {
        self.inner.spare.give(records);
    }

    fn check_records(&self, check: RecordCheck<D::Item>) {
        self.inner.check.set(check);
    }
}

impl<D: LineDecoder> Inner<D> {
    async fn produce(
        &self,
        unit: WorkUnit,
        from: Position,
        tx: ChunkSender<D::Item>,
    ) -> Result<()> {
        let Some(start) = object_start(&unit, &from)? else {
            tx.send(Chunk {
                start: Position::End,
                end: Position::End,
                last: true,
                records: Vec::new(),
                bad: 0,
            })
            .await;
            return Ok(());
        };
        let object = Arc::clone(&unit.key);
        let mut lines =
            LineReader::open(self.listing.store(), &unit, self.options.max_line_bytes).await?;
        let mut line_no: u64 = 0;
        while line_no < start {
            if lines.next_line(false).await?.is_none() {
                return Err(Error::Position {
                    unit: object.to_string(),
                    position: from.to_string(),
                    reason: format!("the object has only {line_no} lines"),
                });
            }
            line_no += 1;
        }
        let n = self.options.chunk_lines;
        let check = self.check.get();
        loop {
            self.sink.check()?;
            let chunk_start = line_no;
            // Saturating: a `chunk_lines` near `u64::MAX` means one chunk
            // per object.
            let boundary = (line_no / n + 1).saturating_mul(n);
            let mut records = self.spare.take();
            records.reserve((boundary - line_no).min(n).min(PREALLOCATED_LINES) as usize);
            let mut at_end = false;
            let mut bad = Vec::new();
            let mut letters = self
                .sink
                .chunk(&unit.key, format!("lines-{}", chunk_start + 1));
            while line_no < boundary {
                let passed = lines
                    .for_lines(boundary - line_no, |line| {
                        let at = line_no;
                        line_no += 1;
                        match line {
                            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => {}
                            Line::Text(text) => match self.decode(text, check.as_ref()) {
                                Ok(Some(mut record)) => {
                                    record.position = Position::Row { row: at };
                                    records.push(record);
                                }
                                Ok(None) => {}
                                Err(reason) => bad.push(BadRecord {
                                    object: object.to_string(),
                                    location: RecordLocation::Line(line_no),
                                    reason,
                                    raw: Some(String::from_utf8_lossy(text).into_owned()),
                                }),
                            },
                            Line::TooLong(len) => bad.push(BadRecord {
                                object: object.to_string(),
                                location: RecordLocation::Line(line_no),
                                reason: format!(
                                    "line of {len} bytes exceeds max_line_bytes ({})",
                                    self.options.max_line_bytes
                                ),
                                raw: None,
                            }),
                        }
                    })
                    .await?;
                // In line order, before the chunk: a threshold crossed here
                // fails the scan before the chunk is delivered.
                for b in bad.drain(..) {
                    letters.report(b).await?;
                }
                if passed == 0 {
                    at_end = true;
                    break;
                }
            }
            let last = at_end || lines.at_end().await?;
            let bad = letters.seal().await?;
            let chunk = Chunk {
                start: unit_position(&unit, chunk_start),
                end: unit_position(&unit, line_no),
                last,
                records,
                bad,
            };
            if !tx.send(chunk).await || last {
                return Ok(());
            }
        }
    }

    /// A line's record, `None` when its event time is outside the range;
    /// `Err` when it does not decode or `check` refuses it.
    #[inline]
    fn decode(
        &self,
        line: &[u8],
        check: Option<&RecordCheck<D::Item>>,
    ) -> Result<Option<Record<D::Item>>, String> {
        let record = self.decoder.decode(line)?;
        if !self.in_range(record.event_time_ms) {
            return Ok(None);
        }
        record.checked(check).map(Some)
    }

    fn in_range(&self, t: i64) -> bool {
        self.options
            .event_time_range
            .as_ref()
            .is_none_or(|r| r.contains(&t))
    }
}
