//! Ready decoders of the canonical [`CountEvent`], and the RFC 3339 serde
//! helper.

use std::sync::Arc;

use murmur_core::{CountEvent, Position, Record};
use serde::Deserializer;

use crate::jsonl::LineDecoder;
use crate::parquet::{Batch, BatchDecoder, ColumnError, DecodedRows};

/// The [`LineDecoder`] of the canonical [`CountEvent`]: each line is parsed
/// with [`CountEvent::from_json`] (the same parser as the live sources), the
/// event time is `occurred_at_ms` and the event id is `event_id` when the
/// line has one.
///
/// | field | JSON |
/// |---|---|
/// | `entity_id` | string |
/// | `count` | integer |
/// | `occurred_at` or `occurred_at_unix_ms` | RFC 3339 string, or integer milliseconds since the epoch (both given: the integer wins) |
/// | `event_id` | optional string |
///
/// Other fields (the Hive `year/month/day/hour`) are ignored. A line that
/// does not decode is a bad record whose reason is `from_json`'s error.
///
/// ```
/// use murmur_source_snapshot::{CountEventLines, LineDecoder};
/// let r = CountEventLines
///     .decode(br#"{"entity_id":"a","count":2,"occurred_at":"2026-05-08T14:00:00Z","event_id":"e1"}"#)
///     .unwrap();
/// assert_eq!((r.value.count, r.event_time_ms), (2, 1_778_248_800_000));
/// assert_eq!(r.event_id.as_deref(), Some("e1"));
/// assert_eq!(
///     CountEventLines.decode(br#"{"entity_id":"a","occurred_at_unix_ms":5}"#).unwrap_err(),
///     "invalid CountEvent JSON: missing field `count` at line 1 column 41"
/// );
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CountEventLines;

impl LineDecoder for CountEventLines {
    type Item = CountEvent;

    fn decode(&self, line: &[u8]) -> Result<Record<CountEvent>, String> {
        let value = CountEvent::from_json(line)?;
        Ok(Record {
            event_time_ms: value.occurred_at_ms,
            event_id: value.event_id.as_deref().map(Arc::from),
            value,
            position: Position::Unknown,
        })
    }
}

/// The [`BatchDecoder`] of the canonical [`CountEvent`]: columns
/// `entity_id: string`, `count: int64` and `occurred_at_unix_ms: int64` (or
/// an Arrow timestamp), which is also the event time. Other columns are
/// ignored; records have no event id. A row with a null, or that
/// [`CountEvent::check`] refuses (an empty entity id), is a bad record.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountEventColumns;

impl BatchDecoder for CountEventColumns {
    type Item = CountEvent;

    fn columns(&self) -> Vec<String> {
        vec![
            "entity_id".into(),
            "count".into(),
            "occurred_at_unix_ms".into(),
        ]
    }

    fn event_time_column(&self) -> Option<String> {
        Some("occurred_at_unix_ms".into())
    }

    fn decode(
        &self,
        batch: &Batch<'_>,
        out: &mut DecodedRows<CountEvent>,
    ) -> Result<(), ColumnError> {
        let ids = batch.strings("entity_id")?;
        let counts = batch.i64s("count")?;
        let times = batch.timestamps_ms("occurred_at_unix_ms")?;
        out.extend((0..batch.num_rows()).map(|row| {
            let occurred_at_ms = times.require(row)?;
            let event = CountEvent {
                entity_id: ids.require(row)?.into(),
                count: counts.require(row)?,
                occurred_at_ms,
                event_id: None,
            };
            event.check()?;
            Ok(Record::new(event, occurred_at_ms))
        }));
        Ok(())
    }
}

/// Deserializes an RFC 3339 timestamp string (`2026-05-08T14:03:07.250Z`,
/// `2026-05-08T16:03:07+02:00`) into milliseconds since the Unix epoch
/// (sub-millisecond digits are floored). For
/// `#[serde(deserialize_with = "murmur_source_snapshot::rfc3339_ms")]` in
/// your own event types.
///
/// Parsed with `chrono` (already in the dependency tree through Arrow and
/// object_store), which accepts exactly RFC 3339: a `T` or space separator,
/// a mandatory offset, leap seconds.
pub fn rfc3339_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp string")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<i64, E> {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| E::custom(format_args!("invalid RFC 3339 timestamp {s:?}: {e}")))
        }
    }
    deserializer.deserialize_str(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_decoding() {
        let d = CountEventLines;
        let r = d
            .decode(br#"{"entity_id":"a","count":3,"occurred_at":"2026-05-08T14:00:00.250+02:00","year":2026}"#)
            .unwrap();
        assert_eq!(r.value.count, 3);
        assert_eq!(r.event_time_ms, 1_778_241_600_250);
        assert_eq!(r.value.occurred_at_ms, r.event_time_ms);
        assert_eq!(r.event_id, None);
        let before_1970 = d
            .decode(br#"{"entity_id":"a","count":1,"occurred_at":"1969-12-31T23:59:59.9995Z"}"#)
            .unwrap();
        assert_eq!(before_1970.event_time_ms, -1);
        let with_id = d
            .decode(br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":7,"event_id":"e7"}"#)
            .unwrap();
        assert_eq!(with_id.event_time_ms, 7);
        assert_eq!(with_id.event_id.as_deref(), Some("e7"));
        assert_eq!(with_id.value.event_id.as_deref(), Some("e7"));
        let err = d
            .decode(br#"{"entity_id":"a","count":1,"occurred_at":"2026-05-08 25:00:00Z"}"#)
            .unwrap_err();
        assert_eq!(
            err,
            r#"invalid RFC 3339 timestamp "2026-05-08 25:00:00Z" in occurred_at: input is out of range"#
        );
    }

    #[test]
    fn rfc3339_serde_helper() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "rfc3339_ms")]
            at: i64,
        }
        let t: T = serde_json::from_str(r#"{"at":"2026-05-08T14:00:00.250+02:00"}"#).unwrap();
        assert_eq!(t.at, 1_778_241_600_250);
        let err = serde_json::from_str::<T>(r#"{"at":"2026-05-08 25:00:00Z"}"#)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            r#"invalid RFC 3339 timestamp "2026-05-08 25:00:00Z": input is out of range at line 1 column 28"#
        );
    }
}
