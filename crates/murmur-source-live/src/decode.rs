//! Turning message payloads into [`Record`]s: the user's decoder, event-time
//! and event-id extractors, and the ready decoder of the canonical
//! [`CountEvent`].

use crate::error::{Error, Result};
use crate::source::Counters;
use murmur_core::{CountEvent, InstalledCheck, Position, Record, RecordCheck};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

type DecodeFn<T> = dyn Fn(&[u8]) -> Result<T, String> + Send + Sync;
type TimeFn<T> = dyn Fn(&T) -> Option<i64> + Send + Sync;
type IdFn<T> = dyn Fn(&T) -> Option<Arc<str>> + Send + Sync;

/// How a source turns a message payload into a [`Record`].
///
/// * the decode function, `bytes -> Result<T, String>` (the error text goes
///   into the dead letter);
/// * an event-time extractor (milliseconds since the epoch); without one, or
///   when it returns `None`, the broker's timestamp is used (Kafka message
///   timestamp, Kinesis approximate arrival time);
/// * an optional event-id extractor, for the deduper;
/// * a payload size limit: larger payloads are dead letters (default 1 MiB);
/// * an optional event-time floor: records with an earlier event time are
///   skipped and counted, which is how the live stage honours an
///   [event-time cut](murmur_core::HandoffToken::EventTimeCut).
///
/// Empty payloads (and Kafka tombstones), oversized payloads, decode errors
/// and records without any event time are dead letters: sent to the
/// source's dead-letter topic or stream, counted, never silently dropped.
///
/// ```
/// use murmur_source_live::{CountEvent, Decoder};
/// let d = Decoder::count_events();
/// let r = d.try_decode(br#"{"entity_id":"a","count":2,"occurred_at":"2026-05-08T14:00:00Z"}"#, None).unwrap();
/// assert_eq!((r.value.count, r.event_time_ms), (2, 1_778_248_800_000));
/// let r = d.try_decode(br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":5,"event_id":"e1"}"#, None).unwrap();
/// assert_eq!((r.event_time_ms, r.event_id.as_deref()), (5, Some("e1")));
/// assert!(d.try_decode(b"{not json", None).unwrap_err().contains("key must be a string"));
/// assert_eq!(d.try_decode(b"", None).unwrap_err(), "empty payload");
/// ```
pub struct Decoder<T> {
    decode: Box<DecodeFn<T>>,
    event_time: Option<Box<TimeFn<T>>>,
    event_id: Option<Box<IdFn<T>>>,
    max_payload_bytes: usize,
    min_event_time_ms: Option<i64>,
    check: InstalledCheck<T>,
}

impl<T> fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("event_time", &self.event_time.is_some())
            .field("event_id", &self.event_id.is_some())
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("min_event_time_ms", &self.min_event_time_ms)
            .finish()
    }
}

/// The default payload limit (1 MiB, Kafka's default `message.max.bytes`).
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The most payload bytes a dead letter carries: a Kafka broker takes
/// about 1 MB per message by default and Kinesis 1 MiB per record, which the
/// payload (base64 in a Kinesis envelope) and its context must fit in. A
/// longer payload is cut here, and the dead letter says so
/// ([`Clipped::note`]): a dead letter that cannot be written would stop the
/// lane at that message for good.
pub(crate) const MAX_DEAD_LETTER_PAYLOAD: usize = 512 * 1024;

/// Bad messages `(origin, reason)` a source has no dead-letter `destination`
/// (`topic`, `stream`) for: without `skip`, the first stops the source
/// ([`Error::BadMessage`]); with it, each is logged and counted in
/// `counted` and passed by.
pub(crate) fn without_destination<'a>(
    skip: bool,
    destination: &'static str,
    bad: impl IntoIterator<Item = (String, &'a str)>,
    counted: &AtomicU64,
) -> Result<()> {
    for (origin, reason) in bad {
        if !skip {
            return Err(Error::BadMessage {
                origin,
                reason: reason.to_owned(),
                destination,
            });
        }
        Counters::add(counted, 1);
        tracing::error!(%origin, %reason, destination,
            "bad message skipped: undecodable or refused by the pipeline (no dead-letter {destination} configured)");
    }
    Ok(())
}

/// A payload as a dead letter carries it.
pub(crate) struct Clipped<'a> {
    /// At most [`MAX_DEAD_LETTER_PAYLOAD`] bytes of the payload.
    pub(crate) bytes: &'a [u8],
    /// For a cut payload: `<n> bytes, sha256 <hex>; the first <m> kept`.
    pub(crate) note: Option<String>,
}

/// `payload` cut to [`MAX_DEAD_LETTER_PAYLOAD`] bytes, with a note naming
/// its full size and SHA-256 when it was cut.
pub(crate) fn clip_dead_letter(payload: &[u8]) -> Clipped<'_> {
    use sha2::Digest as _;
    if payload.len() <= MAX_DEAD_LETTER_PAYLOAD {
        return Clipped {
            bytes: payload,
            note: None,
        };
    }
    let digest = sha2::Sha256::digest(payload);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Clipped {
        bytes: &payload[..MAX_DEAD_LETTER_PAYLOAD],
        note: Some(format!(
            "{} bytes, sha256 {hex}; the first {MAX_DEAD_LETTER_PAYLOAD} kept",
            payload.len()
        )),
    }
}

impl<T> Decoder<T> {
    /// A decoder from a decode function; event time is the broker's
    /// timestamp until [`event_time`](Self::event_time) says otherwise.
    pub fn new(decode: impl Fn(&[u8]) -> Result<T, String> + Send + Sync + 'static) -> Self {
        Decoder {
            decode: Box::new(decode),
            event_time: None,
            event_id: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            min_event_time_ms: None,
            check: InstalledCheck::default(),
        }
    }

    /// Takes the event time from the decoded value (falls back to the
    /// broker's timestamp when it returns `None`).
    pub fn event_time(mut self, f: impl Fn(&T) -> Option<i64> + Send + Sync + 'static) -> Self {
        self.event_time = Some(Box::new(f));
        self
    }

    /// Takes an event id from the decoded value (for the deduper).
    pub fn event_id(mut self, f: impl Fn(&T) -> Option<Arc<str>> + Send + Sync + 'static) -> Self {
        self.event_id = Some(Box::new(f));
        self
    }

    /// Payloads larger than this are dead letters.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Skips (and counts) records whose event time is before `at_ms`: the
    /// live side of an event-time cut.
    pub fn min_event_time(mut self, at_ms: i64) -> Self {
        self.min_event_time_ms = Some(at_ms);
        self
    }

    /// Decodes one payload as the sources do (the record's position is
    /// left [`Position::Unknown`]); the error is the dead-letter reason,
    /// also when the check a runner installed into the source refuses the
    /// record. A record before the event-time floor is returned as is.
    pub fn try_decode(
        &self,
        payload: &[u8],
        broker_time_ms: Option<i64>,
    ) -> Result<Record<T>, String> {
        self.record(Some(payload), broker_time_ms, Position::Unknown)?
            .checked(self.check().as_ref())
    }

    /// Installs the check of decoded records (see
    /// [`LiveSource::check_records`](crate::LiveSource::check_records)):
    /// a record it refuses is a dead letter with the check's reason. It
    /// replaces any earlier one.
    pub(crate) fn install_check(&self, check: RecordCheck<T>) {
        self.check.set(check);
    }

    /// The installed check, taken once per batch of messages and passed to
    /// [`decode_message`](Self::decode_message).
    pub(crate) fn check(&self) -> Option<RecordCheck<T>> {
        self.check.get()
    }

    fn record(
        &self,
        payload: Option<&[u8]>,
        broker_time_ms: Option<i64>,
        position: Position,
    ) -> Result<Record<T>, String> {
        let payload = match payload {
            None | Some([]) => return Err("empty payload".to_owned()),
            Some(p) if p.len() > self.max_payload_bytes => {
                return Err(format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    p.len(),
                    self.max_payload_bytes
                ));
            }
            Some(p) => p,
        };
        let value = (self.decode)(payload)?;
        let event_time_ms = self
            .event_time
            .as_ref()
            .and_then(|f| f(&value))
            .or(broker_time_ms)
            .ok_or_else(|| {
                "no event time: the extractor returned none and the broker gave no timestamp"
                    .to_owned()
            })?;
        let event_id = self.event_id.as_ref().and_then(|f| f(&value));
        Ok(Record {
            value,
            event_time_ms,
            event_id,
            position,
        })
    }

    /// Decodes one message for a source; `check` is the installed one
    /// ([`check`](Self::check)).
    pub(crate) fn decode_message(
        &self,
        check: Option<&RecordCheck<T>>,
        payload: Option<&[u8]>,
        broker_time_ms: Option<i64>,
        position: Position,
    ) -> Outcome<T> {
        match self.record(payload, broker_time_ms, position) {
            Ok(r)
                if self
                    .min_event_time_ms
                    .is_some_and(|min| r.event_time_ms < min) =>
            {
                Outcome::BeforeCut
            }
            Ok(r) => match r.checked(check) {
                Ok(r) => Outcome::Record(r),
                Err(reason) => Outcome::Dead(reason),
            },
            Err(reason) => Outcome::Dead(reason),
        }
    }
}

impl<T: DeserializeOwned> Decoder<T> {
    /// A JSON decoder for any `Deserialize` type (event time from the
    /// broker unless [`event_time`](Self::event_time) is set).
    pub fn json() -> Self {
        Decoder::new(|bytes| {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
        })
    }
}

/// What one message became.
pub(crate) enum Outcome<T> {
    Record(Record<T>),
    Dead(String),
    BeforeCut,
}

impl Decoder<CountEvent> {
    /// The ready JSON decoder of [`CountEvent`]: event time from
    /// `occurred_at` / `occurred_at_unix_ms`, event id from `event_id`.
    pub fn count_events() -> Self {
        Decoder::new(CountEvent::from_json)
            .event_time(|e: &CountEvent| Some(e.occurred_at_ms))
            .event_id(|e: &CountEvent| e.event_id.as_deref().map(Arc::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_payloads_are_cut_with_a_note() {
        let small = vec![7u8; 100];
        let c = clip_dead_letter(&small);
        assert_eq!((c.bytes.len(), c.note), (100, None));
        let big = vec![b'x'; MAX_DEAD_LETTER_PAYLOAD + 10];
        let c = clip_dead_letter(&big);
        assert_eq!(c.bytes.len(), MAX_DEAD_LETTER_PAYLOAD);
        let note = c.note.unwrap();
        assert!(
            note.starts_with(&format!("{} bytes, sha256 ", MAX_DEAD_LETTER_PAYLOAD + 10))
                && note.ends_with("; the first 524288 kept"),
            "{note}"
        );
    }
    use serde::Deserialize;

    #[test]
    fn count_event_decoding_and_poison() {
        let d = Decoder::count_events().max_payload_bytes(200);
        let ok = d
            .try_decode(br#"{"entity_id":"a","count":3,"occurred_at":"2026-05-08T14:00:00.250+02:00","x":1}"#, Some(9))
            .unwrap();
        assert_eq!(ok.value.count, 3);
        assert_eq!(ok.event_time_ms, 1_778_241_600_250);
        assert_eq!(ok.event_id, None);
        let before_1970 = d
            .try_decode(
                br#"{"entity_id":"a","count":1,"occurred_at":"1969-12-31T23:59:59.999Z"}"#,
                None,
            )
            .unwrap();
        assert_eq!(before_1970.event_time_ms, -1);
        let err = d
            .try_decode(br#"{"entity_id":"a","count":1}"#, None)
            .unwrap_err();
        assert!(err.contains("neither occurred_at"), "{err}");
        let err = d
            .try_decode(
                br#"{"entity_id":"a","count":1,"occurred_at":"yesterday"}"#,
                None,
            )
            .unwrap_err();
        assert!(
            err.starts_with("invalid RFC 3339 timestamp \"yesterday\""),
            "{err}"
        );
        let err = d.try_decode(&[b' '; 201], None).unwrap_err();
        assert_eq!(err, "payload of 201 bytes exceeds the limit of 200 bytes");
        assert!(
            matches!(d.decode_message(None, None, None, Position::Unknown), Outcome::Dead(r) if r == "empty payload")
        );

        let cut = Decoder::count_events().min_event_time(10);
        assert!(matches!(
            cut.decode_message(
                None,
                Some(br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":9}"#),
                None,
                Position::Unknown
            ),
            Outcome::BeforeCut
        ));
        assert!(matches!(
            cut.decode_message(
                None,
                Some(br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":10}"#),
                None,
                Position::Unknown
            ),
            Outcome::Record(_)
        ));
    }

    #[test]
    fn event_time_falls_back_to_the_broker() {
        #[derive(Debug, Deserialize)]
        struct Click {
            #[allow(dead_code)]
            page: String,
        }
        let d = Decoder::<Click>::json();
        assert_eq!(
            d.try_decode(br#"{"page":"/"}"#, Some(42))
                .unwrap()
                .event_time_ms,
            42
        );
        let err = d.try_decode(br#"{"page":"/"}"#, None).unwrap_err();
        assert!(err.starts_with("no event time"), "{err}");
    }
}
