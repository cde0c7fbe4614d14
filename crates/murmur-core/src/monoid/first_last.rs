//! [`First`] and [`Last`]: the value with the earliest / latest event time.

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;

/// Encodes an optional `(event_time_ms, value)` pair: a presence byte (0/1),
/// then the little-endian time and the length-prefixed string.
fn encode_timed(kind: Kind, value: &Option<(i64, String)>) -> Cell {
    let mut out = codec::header(kind, 1 + 8 + 4 + value.as_ref().map_or(0, |(_, s)| s.len()));
    match value {
        None => out.push(0),
        Some((t, s)) => {
            out.push(1);
            out.extend_from_slice(&t.to_le_bytes());
            codec::put_string(&mut out, s);
        }
    }
    Cell::Bytes(out)
}

fn decode_timed(kind: Kind, cell: &Cell) -> Result<Option<(i64, String)>, MonoidError> {
    let mut r = Reader::new(kind, codec::payload(kind, cell)?);
    let value = match r.u8()? {
        0 => None,
        1 => {
            let t = r.i64()?;
            Some((t, r.string()?))
        }
        other => return Err(decode_error(kind, format!("invalid presence byte {other}"))),
    };
    r.finish()?;
    Ok(value)
}

/// Keeps whichever of `acc` / `other` wins under `keep_other(acc, other)`.
fn pick(
    acc: &mut Option<(i64, String)>,
    other: &Option<(i64, String)>,
    keep_other: impl Fn(&(i64, String), &(i64, String)) -> bool,
) {
    match (acc.as_ref(), other) {
        (_, None) => {}
        (None, Some(o)) => *acc = Some(o.clone()),
        (Some(a), Some(o)) => {
            if keep_other(a, o) {
                *acc = Some(o.clone());
            }
        }
    }
}

/// The value with the **earliest** event time.
///
/// * Input: `(event_time_ms, value)`.
/// * Value: `Option<(event_time_ms, value)>`; the identity is `None`.
///
/// Of two candidates the one with the smaller time wins; equal times are
/// broken by the lexicographically *smaller* string, so the result is the
/// minimum of a total order and `combine` is commutative, associative and
/// idempotent no matter in which order events (or replays) arrive.
///
/// Encoding: header, a presence byte (0 = none, 1 = some), then the
/// little-endian `i64` time and the `u32`-length-prefixed UTF-8 string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct First;

impl Monoid for First {
    type Input = (i64, String);
    type Value = Option<(i64, String)>;

    fn kind(&self) -> Kind {
        Kind::First
    }
    fn identity(&self) -> Self::Value {
        None
    }
    fn insert(&self, acc: &mut Self::Value, input: Self::Input) {
        match acc {
            Some(a) if *a <= input => {}
            _ => *acc = Some(input),
        }
    }
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError> {
        pick(acc, other, |a, o| o < a);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn encode(&self, value: &Self::Value) -> Cell {
        encode_timed(Kind::First, value)
    }
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError> {
        decode_timed(Kind::First, cell)
    }
}

/// The value with the **latest** event time.
///
/// * Input: `(event_time_ms, value)`.
/// * Value: `Option<(event_time_ms, value)>`; the identity is `None`.
///
/// Of two candidates the one with the larger time wins; equal times are
/// broken by the lexicographically *larger* string, so the result is the
/// maximum of a total order and `combine` is commutative, associative and
/// idempotent: a late-arriving older event never overwrites a newer one.
///
/// Encoding: as for [`First`] (with the [`Kind::Last`] tag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Last;

impl Monoid for Last {
    type Input = (i64, String);
    type Value = Option<(i64, String)>;

    fn kind(&self) -> Kind {
        Kind::Last
    }
    fn identity(&self) -> Self::Value {
        None
    }
    fn insert(&self, acc: &mut Self::Value, input: Self::Input) {
        match acc {
            Some(a) if *a >= input => {}
            _ => *acc = Some(input),
        }
    }
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError> {
        pick(acc, other, |a, o| o > a);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn encode(&self, value: &Self::Value) -> Cell {
        encode_timed(Kind::Last, value)
    }
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError> {
        decode_timed(Kind::Last, cell)
    }
}
