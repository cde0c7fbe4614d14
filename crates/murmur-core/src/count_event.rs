//! The canonical counting event, shared by backfill and live sources.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The canonical counting event: `count` occurrences of `entity_id` at
/// `occurred_at_ms`, with an optional `event_id`.
///
/// One type for the backfill and the live side, so one
/// [`Pipeline`](crate::Pipeline) serves both.
///
/// JSON ([`from_json`](Self::from_json)): `{"entity_id": "...", "count": 3,
/// "occurred_at": "<RFC 3339>"}`, or `"occurred_at_unix_ms": <integer>`
/// instead of `occurred_at` (both given: the integer wins); `"event_id"` is
/// optional. Other fields are ignored. `Deserialize` reads the same fields
/// from any serde format. `Serialize` writes `entity_id`, `count`,
/// `occurred_at_unix_ms` and `event_id` (when set), which both read back
/// unchanged.
///
/// ```
/// use murmur_core::CountEvent;
/// let e = CountEvent::from_json(br#"{"entity_id":"a","count":2,"occurred_at":"2026-05-08T14:00:00.250+02:00"}"#)?;
/// assert_eq!((e.count, e.occurred_at_ms, e.event_id), (2, 1_778_241_600_250, None));
/// let e = CountEvent::from_json(br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":5,"event_id":"e1"}"#)?;
/// assert_eq!((e.occurred_at_ms, e.event_id.as_deref()), (5, Some("e1")));
/// assert_eq!(
///     CountEvent::from_json(br#"{"entity_id":"a","occurred_at_unix_ms":5}"#).unwrap_err(),
///     "invalid CountEvent JSON: missing field `count` at line 1 column 41"
/// );
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CountEvent {
    /// The entity counted: a [`CompactString`] (made with `.into()` from a
    /// `&str` or `String`; it derefs to `&str`), which holds ids of up to 24
    /// bytes inline, so decoding an event allocates nothing for them.
    pub entity_id: CompactString,
    /// How many occurrences the event stands for.
    pub count: i64,
    /// When it happened, milliseconds since the Unix epoch (negative before
    /// 1970).
    #[serde(rename = "occurred_at_unix_ms")]
    pub occurred_at_ms: i64,
    /// A unique event id, if the producer set one (for the deduper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Deserialize)]
struct CountEventWire<'a> {
    entity_id: CompactString,
    count: i64,
    #[serde(default, borrow)]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(default)]
    occurred_at_unix_ms: Option<i64>,
    #[serde(default)]
    event_id: Option<String>,
}

impl CountEvent {
    /// Whether the event can be counted: an `entity_id` of 1 to
    /// [`RowKey::MAX_ENTITY_BYTES`](crate::RowKey::MAX_ENTITY_BYTES) bytes
    /// and an `occurred_at_ms` within
    /// [`Window::MAX_ABS_TIME_MS`](crate::Window::MAX_ABS_TIME_MS). The
    /// decoders of this type ([`from_json`](Self::from_json),
    /// `Deserialize`, the snapshot crate's Parquet decoder) check it, so an
    /// event that no pipeline could fold is a bad record at decoding (with
    /// its object and line, or its partition and offset), not an error that
    /// stops a lane.
    ///
    /// ```
    /// use murmur_core::CountEvent;
    /// let e = CountEvent { entity_id: "".into(), count: 1, occurred_at_ms: 0, event_id: None };
    /// assert_eq!(e.check().unwrap_err(), "CountEvent entity_id is empty");
    /// ```
    #[inline]
    pub fn check(&self) -> Result<(), String> {
        if self.entity_id.is_empty() {
            return Err("CountEvent entity_id is empty".to_owned());
        }
        if self.entity_id.len() > crate::RowKey::MAX_ENTITY_BYTES {
            return Err(format!(
                "CountEvent entity_id is {} bytes, more than the {} a row key holds",
                self.entity_id.len(),
                crate::RowKey::MAX_ENTITY_BYTES
            ));
        }
        if self.occurred_at_ms.unsigned_abs() > crate::Window::MAX_ABS_TIME_MS.unsigned_abs() {
            return Err(format!(
                "CountEvent occurred_at_ms {} is outside the supported range (±{} ms)",
                self.occurred_at_ms,
                crate::Window::MAX_ABS_TIME_MS
            ));
        }
        Ok(())
    }

    /// Parses one JSON object (see the type docs). The error names the
    /// reason: `invalid CountEvent JSON: ...` (syntax, missing field, wrong
    /// type, not UTF-8), `invalid RFC 3339 timestamp "..." in occurred_at:
    /// ...`, `CountEvent has neither occurred_at nor occurred_at_unix_ms`,
    /// or what [`check`](Self::check) refuses.
    pub fn from_json(bytes: &[u8]) -> Result<CountEvent, String> {
        // One UTF-8 check of the whole payload is cheaper than serde_json's
        // check of every string in it.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("invalid CountEvent JSON: not UTF-8: {e}"))?;
        let w: CountEventWire =
            serde_json::from_str(text).map_err(|e| format!("invalid CountEvent JSON: {e}"))?;
        w.into_event()
    }
}

impl CountEventWire<'_> {
    fn into_event(self) -> Result<CountEvent, String> {
        let occurred_at_ms = match (self.occurred_at_unix_ms, self.occurred_at) {
            (Some(ms), _) => ms,
            (None, Some(s)) => rfc3339_ms(&s)
                .map_err(|e| format!("invalid RFC 3339 timestamp {s:?} in occurred_at: {e}"))?,
            (None, None) => {
                return Err("CountEvent has neither occurred_at nor occurred_at_unix_ms".to_owned());
            }
        };
        let event = CountEvent {
            entity_id: self.entity_id,
            count: self.count,
            occurred_at_ms,
            // An empty id is no id (under dedup it would make every such
            // event a duplicate of the first).
            event_id: self.event_id.filter(|id| !id.is_empty()),
        };
        event.check()?;
        Ok(event)
    }
}

/// The fields of [`CountEvent::from_json`], from any serde format (a
/// DynamoDB item through `serde_dynamo`, for one).
impl<'de> Deserialize<'de> for CountEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CountEventWire::deserialize(deserializer)?
            .into_event()
            .map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (sub-millisecond
/// digits floored), exactly as `chrono::DateTime::parse_from_rfc3339` and
/// `timestamp_millis` compute it. The common shape
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` is parsed directly (it is
/// most of the decoding cost otherwise); anything else, leap seconds
/// included, goes to chrono.
fn rfc3339_ms(s: &str) -> Result<i64, chrono::ParseError> {
    match rfc3339_fast(s.as_bytes()) {
        Some(ms) => Ok(ms),
        None => chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()),
    }
}

fn rfc3339_fast(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', frac @ ..] = rest {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits.min(3)].iter().enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            (h * 3600 + m * 60) * if *sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_s) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_no_pipeline_could_fold_are_refused_at_decoding() {
        let err = CountEvent::from_json(br#"{"entity_id":"","count":1,"occurred_at_unix_ms":5}"#)
            .unwrap_err();
        assert_eq!(err, "CountEvent entity_id is empty");
        let long = "x".repeat(crate::RowKey::MAX_ENTITY_BYTES + 1);
        let line = format!(r#"{{"entity_id":"{long}","count":1,"occurred_at_unix_ms":5}}"#);
        assert_eq!(
            CountEvent::from_json(line.as_bytes()).unwrap_err(),
            "CountEvent entity_id is 2049 bytes, more than the 2048 a row key holds"
        );
        let longest = "x".repeat(crate::RowKey::MAX_ENTITY_BYTES);
        let line = format!(r#"{{"entity_id":"{longest}","count":1,"occurred_at_unix_ms":5}}"#);
        assert!(CountEvent::from_json(line.as_bytes()).is_ok());
        let no_id = CountEvent::from_json(
            br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":5,"event_id":""}"#,
        )
        .unwrap();
        assert_eq!(no_id.event_id, None, "an empty id is no id");
        // Nanoseconds where milliseconds belong.
        let err = CountEvent::from_json(
            br#"{"entity_id":"a","count":1,"occurred_at_unix_ms":1778248800000000000}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "CountEvent occurred_at_ms 1778248800000000000 is outside the supported range (±9223372036854775 ms)"
        );
        let edge = format!(
            r#"{{"entity_id":"a","count":1,"occurred_at_unix_ms":-{}}}"#,
            crate::Window::MAX_ABS_TIME_MS
        );
        assert!(CountEvent::from_json(edge.as_bytes()).is_ok());
        // The same check behind `Deserialize` (a DynamoDB item, say).
        let err = serde_json::from_str::<CountEvent>(
            r#"{"entity_id":"","count":1,"occurred_at_unix_ms":5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("entity_id is empty"), "{err}");
    }

    #[test]
    fn json_decoding_and_errors() {
        let e = CountEvent::from_json(
            br#"{"entity_id":"a","count":3,"occurred_at":"2026-05-08T14:00:00.250+02:00","x":1}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            CountEvent {
                entity_id: "a".into(),
                count: 3,
                occurred_at_ms: 1_778_241_600_250,
                event_id: None
            }
        );
        let both = CountEvent::from_json(
            br#"{"entity_id":"a","count":1,"occurred_at":"yesterday","occurred_at_unix_ms":7,"event_id":"e"}"#,
        )
        .unwrap();
        assert_eq!(
            (both.occurred_at_ms, both.event_id.as_deref()),
            (7, Some("e"))
        );
        let before_1970 = CountEvent::from_json(
            br#"{"entity_id":"a","count":1,"occurred_at":"1969-12-31T23:59:59.999Z"}"#,
        )
        .unwrap();
        assert_eq!(before_1970.occurred_at_ms, -1);
        let err = CountEvent::from_json(br#"{"entity_id":"a","count":1}"#).unwrap_err();
        assert_eq!(
            err,
            "CountEvent has neither occurred_at nor occurred_at_unix_ms"
        );
        let err = CountEvent::from_json(
            br#"{"entity_id":"a","count":1,"occurred_at":"2026-05-08 25:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            r#"invalid RFC 3339 timestamp "2026-05-08 25:00:00Z" in occurred_at: input is out of range"#
        );
        let err = CountEvent::from_json(b"{\"entity_id\":\"\xff\"}").unwrap_err();
        assert!(
            err.starts_with("invalid CountEvent JSON: not UTF-8: "),
            "{err}"
        );
        let err = CountEvent::from_json(br#"{"entity_id":"a","count":"3"}"#).unwrap_err();
        assert_eq!(
            err,
            r#"invalid CountEvent JSON: invalid type: string "3", expected i64 at line 1 column 28"#
        );
    }

    #[test]
    fn deserialize_has_the_same_semantics() {
        let e: CountEvent = serde_json::from_value(serde_json::json!({
            "entity_id": "a", "count": 2, "occurred_at": "2026-05-08T14:00:00.250+02:00",
            "event_id": "e1", "other": [1]
        }))
        .unwrap();
        assert_eq!(
            (e.occurred_at_ms, e.event_id.as_deref()),
            (1_778_241_600_250, Some("e1"))
        );
        let err = serde_json::from_str::<CountEvent>(r#"{"entity_id":"a","count":1}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "CountEvent has neither occurred_at nor occurred_at_unix_ms"
        );
    }

    #[test]
    fn serialized_json_reads_back() {
        for e in [
            CountEvent {
                entity_id: "a\"b".into(),
                count: -2,
                occurred_at_ms: -1,
                event_id: None,
            },
            CountEvent {
                entity_id: "x".into(),
                count: 1,
                occurred_at_ms: 1_778_241_600_250,
                event_id: Some("e1".into()),
            },
        ] {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(CountEvent::from_json(json.as_bytes()).unwrap(), e, "{json}");
            assert_eq!(
                serde_json::from_str::<CountEvent>(&json).unwrap(),
                e,
                "{json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&CountEvent {
                entity_id: "a".into(),
                count: 1,
                occurred_at_ms: 5,
                event_id: None,
            })
            .unwrap(),
            r#"{"entity_id":"a","count":1,"occurred_at_unix_ms":5}"#
        );
    }

    #[test]
    fn fast_rfc3339_agrees_with_chrono() {
        let chrono_ms = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .ok()
        };
        let mut cases: Vec<String> = [
            "2026-05-08T14:00:00Z",
            "2026-05-08t14:00:00.250+02:00",
            "2026-05-08 14:00:00.999999999-11:30",
            "1969-12-31T23:59:59.9995Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2024-02-29T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-05-08T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-05-08T14:00:00.Z",
            "2026-05-08T14:00:00+0200",
            "2026-05-08T14:00:00",
            "2026-05-08T14:00:00+24:00",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = |m: u64| (x >> (m % 48)) % (m.max(1));
            let frac = match f(5) {
                0 => String::new(),
                n => format!(
                    ".{}",
                    &format!("{:09}", f(1_000_000_000))[..(n as usize * 2).min(9)]
                ),
            };
            let zone = match f(3) {
                0 => "Z".to_string(),
                _ => format!(
                    "{}{:02}:{:02}",
                    if f(2) == 0 { '+' } else { '-' },
                    f(24),
                    f(60)
                ),
            };
            cases.push(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{zone}",
                f(10_000),
                1 + f(12),
                1 + f(31),
                f(24),
                f(60),
                f(60)
            ));
        }
        for c in &cases {
            assert_eq!(rfc3339_ms(c).ok(), chrono_ms(c), "{c}");
        }
    }
}
