//! The canonical counting event and its ready decoders.

use murmur_core::Record;
use serde::{Deserialize, Deserializer};

use crate::jsonl::SerdeLines;
use crate::parquet::{Batch, BatchDecoder, ColumnError};

/// The canonical event of a Murmur backfill seed: `count` occurrences for
/// `entity_id` at `occurred_at_ms`.
///
/// | format | columns / fields |
/// |---|---|
/// | Parquet | `entity_id: string`, `count: int64`, `occurred_at_unix_ms: int64` (or a timestamp) |
/// | JSON Lines | `entity_id` (string), `count` (integer), `occurred_at` (RFC 3339 string) |
///
/// Other columns or fields (the Hive `year/month/day/hour`) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct CountEvent {
    /// The entity counted.
    pub entity_id: String,
    /// How many occurrences the event stands for.
    pub count: i64,
    /// When it happened, milliseconds since the Unix epoch.
    #[serde(rename = "occurred_at", deserialize_with = "rfc3339_ms")]
    pub occurred_at_ms: i64,
}

impl CountEvent {
    /// The JSON Lines decoder of the canonical schema (no event id).
    pub fn json() -> SerdeLines<CountEvent> {
        SerdeLines::new(|e: &CountEvent| e.occurred_at_ms)
    }

    /// The Parquet decoder of the canonical schema (no event id).
    pub fn parquet() -> CountEventColumns {
        CountEventColumns
    }
}

/// The [`BatchDecoder`] of [`CountEvent`] (see [`CountEvent::parquet`]).
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
        out: &mut Vec<Result<Record<CountEvent>, String>>,
    ) -> Result<(), ColumnError> {
        let ids = batch.strings("entity_id")?;
        let counts = batch.i64s("count")?;
        let times = batch.timestamps_ms("occurred_at_unix_ms")?;
        out.extend((0..batch.num_rows()).map(|row| {
            let occurred_at_ms = times.require(row)?;
            let event = CountEvent {
                entity_id: ids.require(row)?.to_owned(),
                count: counts.require(row)?,
                occurred_at_ms,
            };
            Ok(Record::new(event, occurred_at_ms))
        }));
        Ok(())
    }
}

/// Deserializes an RFC 3339 timestamp string (`2026-05-08T14:03:07.250Z`,
/// `2026-05-08T16:03:07+02:00`) into milliseconds since the Unix epoch
/// (sub-millisecond digits are floored). For
/// `#[serde(deserialize_with = "murmur_source_snapshot::rfc3339_ms")]`.
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
    use crate::jsonl::LineDecoder as _;

    #[test]
    fn json_decoding() {
        let d = CountEvent::json();
        let r = d
            .decode(br#"{"entity_id":"a","count":3,"occurred_at":"2026-05-08T14:00:00.250+02:00","year":2026}"#)
            .unwrap();
        assert_eq!(r.value.count, 3);
        assert_eq!(r.event_time_ms, 1_778_241_600_250);
        assert_eq!(r.value.occurred_at_ms, r.event_time_ms);
        let before_1970 = d
            .decode(br#"{"entity_id":"a","count":1,"occurred_at":"1969-12-31T23:59:59.9995Z"}"#)
            .unwrap();
        assert_eq!(before_1970.event_time_ms, -1);
        let err = d
            .decode(br#"{"entity_id":"a","count":1,"occurred_at":"2026-05-08 25:00:00Z"}"#)
            .unwrap_err();
        assert!(
            err.starts_with(
                "invalid RFC 3339 timestamp \"2026-05-08 25:00:00Z\": input is out of range"
            ),
            "{err}"
        );
    }
}
