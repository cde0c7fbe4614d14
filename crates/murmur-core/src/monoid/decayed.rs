//! [`DecayedSum`]: an exponentially time-decayed sum.

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;

/// An exponentially decayed sum: each amount loses half its weight every
/// `half_life_ms` of event time ("recent activity", "trending score").
///
/// * Input: `(event_time_ms, amount)`.
/// * Value: a [`Decayed`] — the sum as seen at its reference time `at_ms`,
///   the latest event time folded in. The identity is `0.0` at `i64::MIN`
///   ([`Decayed::IDENTITY`]).
///
/// Combine rescales both operands to the later reference time,
/// `v · 2^(-(t - at) / half_life)`, and adds them. The reference time is
/// exact (a maximum); the value is a floating-point sum, so
/// **associativity holds only up to rounding** (relative differences around
/// 1e-15 per combine, tested at 1e-9): merge order can change the last bits.
/// Commutativity and identity are exact. Non-finite amounts make the value
/// non-finite. Not idempotent, so rows are fenced.
///
/// Decoding a value stored with another half-life is a
/// [`MonoidError::ParameterMismatch`].
///
/// Encoding: header, half-life (`u64` LE), reference time (`i64` LE), value
/// (`f64` LE bits, with `-0.0` written as `0.0` and every NaN as the one
/// canonical NaN; decoding rejects the other patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecayedSum {
    half_life_ms: u64,
}

/// The value of a [`DecayedSum`]: `value` as seen at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decayed {
    /// The decayed sum at `at_ms`.
    pub value: f64,
    /// The reference time: the latest event time folded in (`i64::MIN` for
    /// the identity).
    pub at_ms: i64,
}

impl Decayed {
    /// The identity: nothing folded in.
    pub const IDENTITY: Decayed = Decayed {
        value: 0.0,
        at_ms: i64::MIN,
    };

    fn is_identity(&self) -> bool {
        self.at_ms == i64::MIN && self.value == 0.0
    }
}

impl DecayedSum {
    /// A decayed sum with the given half-life in milliseconds (at least 1).
    pub fn new(half_life_ms: u64) -> Result<Self, MonoidError> {
        if half_life_ms == 0 {
            return Err(MonoidError::Config {
                kind: Kind::DecayedSum,
                reason: "half-life must be at least 1 ms".into(),
            });
        }
        Ok(DecayedSum { half_life_ms })
    }

    /// The half-life in milliseconds.
    pub fn half_life_ms(&self) -> u64 {
        self.half_life_ms
    }

    /// The value decayed (or, for `now_ms < at_ms`, grown back) to `now_ms`.
    pub fn value_at(&self, value: &Decayed, now_ms: i64) -> f64 {
        if value.is_identity() {
            return 0.0;
        }
        self.scale(value.value, i128::from(now_ms) - i128::from(value.at_ms))
    }

    fn scale(&self, value: f64, elapsed_ms: i128) -> f64 {
        if elapsed_ms == 0 {
            value
        } else {
            value * (-(elapsed_ms as f64) / self.half_life_ms as f64).exp2()
        }
    }
}

/// `-0.0` -> `0.0`, any NaN -> the canonical NaN.
fn canonical_bits(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        (v + 0.0).to_bits()
    }
}

impl Monoid for DecayedSum {
    type Input = (i64, f64);
    type Value = Decayed;

    fn kind(&self) -> Kind {
        Kind::DecayedSum
    }
    fn identity(&self) -> Decayed {
        Decayed::IDENTITY
    }
    fn insert(&self, acc: &mut Decayed, (at_ms, value): (i64, f64)) {
        let _ = self.combine_into(acc, &Decayed { value, at_ms });
    }
    fn combine_into(&self, acc: &mut Decayed, other: &Decayed) -> Result<(), MonoidError> {
        if other.is_identity() {
            return Ok(());
        }
        if acc.is_identity() {
            *acc = *other;
            return Ok(());
        }
        let at_ms = acc.at_ms.max(other.at_ms);
        let a = self.scale(acc.value, i128::from(at_ms) - i128::from(acc.at_ms));
        let b = self.scale(other.value, i128::from(at_ms) - i128::from(other.at_ms));
        *acc = Decayed {
            value: a + b,
            at_ms,
        };
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        false
    }
    fn encode(&self, value: &Decayed) -> Cell {
        let mut out = codec::header(Kind::DecayedSum, 24);
        out.extend_from_slice(&self.half_life_ms.to_le_bytes());
        out.extend_from_slice(&value.at_ms.to_le_bytes());
        out.extend_from_slice(&canonical_bits(value.value).to_le_bytes());
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<Decayed, MonoidError> {
        let kind = Kind::DecayedSum;
        let mut r = Reader::new(kind, codec::payload(kind, cell)?);
        let half_life_ms = r.u64()?;
        if half_life_ms != self.half_life_ms {
            return Err(MonoidError::ParameterMismatch {
                kind,
                parameter: "half_life_ms",
                left: self.half_life_ms.to_string(),
                right: half_life_ms.to_string(),
            });
        }
        let at_ms = r.i64()?;
        let bits = r.u64()?;
        let value = f64::from_bits(bits);
        if canonical_bits(value) != bits {
            return Err(decode_error(kind, "non-canonical float encoding"));
        }
        r.finish()?;
        Ok(Decayed { value, at_ms })
    }
}
