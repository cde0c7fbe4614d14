//! Kinesis sequence numbers, compared as unbounded decimal integers.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A Kinesis sequence number: a non-negative decimal integer of up to 128
/// digits. Real ones have 56 digits, which overflows `u128`, so they are
/// compared as big integers: by significant length, then digit by digit.
///
/// ```
/// use murmur_source_live::SequenceNumber;
/// let a = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").unwrap();
/// let b = SequenceNumber::parse("49590338271490256608559692540925702759324208523137515618").unwrap();
/// assert!(a < b);
/// assert!(SequenceNumber::parse("007").unwrap() == SequenceNumber::parse("7").unwrap());
/// assert!(SequenceNumber::parse("12a").is_none());
/// ```
#[derive(Clone, Eq)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Parses a sequence number; `None` unless it is 1 to 128 ASCII digits.
    pub fn parse(s: &str) -> Option<SequenceNumber> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SequenceNumber(Arc::from(s)))
    }

    /// The sequence number as the service gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without leading zeros (`"0"` for zero).
    fn significant(&self) -> &str {
        let t = self.0.trim_start_matches('0');
        if t.is_empty() { "0" } else { t }
    }

    /// The shared string (for [`Position::Sequence`](murmur_core::Position::Sequence)).
    pub(crate) fn into_arc(self) -> Arc<str> {
        self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl std::hash::Hash for SequenceNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> SequenceNumber {
        SequenceNumber::parse(x).unwrap()
    }

    #[test]
    fn compares_beyond_u128() {
        // u128::MAX has 39 digits; real sequence numbers have 56.
        let small = s("340282366920938463463374607431768211455");
        let real = s("49590338271490256608559692538361571095921575989136588898");
        let next = s("49590338271490256608559692538361571095921575989136588899");
        assert!(small < real && real < next);
        assert!(real.as_str().parse::<u128>().is_err());
        let mut v = vec![next.clone(), small.clone(), real.clone()];
        v.sort();
        assert_eq!(v, vec![small, real, next]);
        // Lexicographic order would get this wrong: "9" > "10".
        assert!(s("9") < s("10"));
        assert_eq!(s("000"), s("0"));
        assert!(s("0") < s("1"));
        for bad in ["", "-1", "1e5", " 1", "0x10", &"9".repeat(129)] {
            assert!(SequenceNumber::parse(bad).is_none(), "{bad:?}");
        }
    }
}
