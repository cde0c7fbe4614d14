//! [`Set`]: the exact set of distinct strings.

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;
use std::collections::BTreeSet;

/// The exact set of distinct strings seen (set union).
///
/// * Input: one string.
/// * Value: `BTreeSet<String>`; the identity is the empty set.
///
/// Union is commutative, associative and idempotent, so replays are
/// harmless and rows need no fence. The set is unbounded: use it for
/// low-cardinality attributes (tags, countries, device kinds); for
/// high-cardinality "how many distinct" questions use
/// [`HyperLogLog`](super::HyperLogLog), for "have we seen x" use
/// [`Bloom`](super::Bloom). Remember DynamoDB's 400 KB item limit.
///
/// Encoding: header, `u32` count, then each string (`u32`-length-prefixed)
/// in strictly ascending byte order; decoding rejects unsorted or duplicate
/// entries, so every accepted encoding is the canonical one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Set;

impl Monoid for Set {
    type Input = String;
    type Value = BTreeSet<String>;

    fn kind(&self) -> Kind {
        Kind::Set
    }
    fn identity(&self) -> Self::Value {
        BTreeSet::new()
    }
    fn insert(&self, acc: &mut Self::Value, input: String) {
        acc.insert(input);
    }
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError> {
        for s in other {
            if !acc.contains(s) {
                acc.insert(s.clone());
            }
        }
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn encode(&self, value: &Self::Value) -> Cell {
        let size: usize = value.iter().map(|s| 4 + s.len()).sum();
        let mut out = codec::header(Kind::Set, 4 + size);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        for s in value {
            codec::put_string(&mut out, s);
        }
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError> {
        let mut r = Reader::new(Kind::Set, codec::payload(Kind::Set, cell)?);
        let n = r.u32()?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            let s = r.string()?;
            if set.last().is_some_and(|last: &String| *last >= s) {
                return Err(decode_error(Kind::Set, "entries not strictly ascending"));
            }
            set.insert(s);
        }
        r.finish()?;
        Ok(set)
    }
}
