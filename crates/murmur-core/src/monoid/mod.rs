//! Monoids: identity + associative combine, with a canonical, versioned
//! encoding that stores persist.
//!
//! A [`Monoid`] is a *value* (it may carry parameters such as a sketch's
//! precision), not just a type. Every monoid has:
//!
//! * an [`Input`](Monoid::Input): what one event contributes (an `i64` for
//!   [`Sum`], a string for [`HyperLogLog`]) — [`Monoid::insert`] folds it into an
//!   accumulator without building a one-event value first;
//! * a [`Value`](Monoid::Value): the aggregate, with [`Monoid::identity`] and
//!   an associative, commutative [`Monoid::combine_into`];
//! * a canonical encoding into a [`Cell`]: `Int` for the numeric kinds (so
//!   DynamoDB can `ADD` / conditionally `SET` them), versioned bytes for the
//!   rest (first byte [`FORMAT_VERSION`], second the kind tag).
//!
//! Stores never see typed values: they hold [`Cell`]s and merge them through
//! the object-safe [`DynMonoid`], which every [`Monoid`] implements.
//!
//! Idempotent monoids (`combine(x, x) == x`: Min, Max, First, Last, Set,
//! HyperLogLog, Bloom) can be re-applied safely, so stores write them without
//! per-lane fences; see [`Monoid::is_idempotent`].
//!
//! # Choosing a monoid
//!
//! | Question | Monoid | Exact? | Idempotent | Size |
//! |---|---|---|---|---|
//! | how many / how much | [`Count`], [`Sum`] | exact | no | 8 bytes |
//! | smallest / largest number | [`Min`], [`Max`] | exact | yes | 8 bytes |
//! | earliest / latest value | [`First`], [`Last`] (ties by string) | exact | yes | one value |
//! | which distinct values (few) | [`Set`] | exact | yes | grows with distinct values |
//! | how many distinct (many) | [`HyperLogLog`] | ≈ `1.04/sqrt(2^p)` rel. error | yes | `2^p` bytes (sparse when small) |
//! | which items are heaviest | [`TopK`] | lower bounds, every item above `n/(k+1)` kept | no | ≤ `capacity` items |
//! | was x ever seen | [`Bloom`] | no false negatives, tunable false positives | yes | `bits/8` bytes (sparse when small) |
//! | one aggregate per sub-key | [`Map`] of any monoid | as inner | as inner | grows with keys |
//! | two aggregates per row | [`Tuple`] | as parts | if both are | sum of parts |
//! | recent activity with half-life | [`DecayedSum`] | up to float rounding | no | 26 bytes |
//!
//! Sketch parameters (precision, `k`/capacity, bits/hashes, seeds,
//! half-life) are part of the stored bytes; combining or decoding a value with
//! other parameters is [`MonoidError::ParameterMismatch`]. Hashes are
//! `xxh3` with an explicit seed, stable across platforms and releases.
//!
//! All combines are commutative and associative byte-exact on the encoding,
//! with two documented exceptions: [`TopK`] is exactly associative only while
//! the data holds at most `capacity` distinct items (beyond, its
//! heavy-hitter guarantee still holds for every merge order, but the bytes
//! may depend on it), and [`DecayedSum`] is associative up to floating-point
//! rounding.
//!
//! ## Why not the `datasketches` crate
//!
//! The Apache DataSketches Rust port (`datasketches` 0.6, features `hll`,
//! `frequencies`, `bloom`) was evaluated for HyperLogLog and Top-K and
//! rejected, because its serialized sketches are not a function of the
//! multiset of inputs, so stored bytes would depend on merge order:
//!
//! * HLL: in list/set (coupon) mode the serialized coupon order follows
//!   insertion order, so `(a ∪ b) ∪ c` and `a ∪ (b ∪ c)` differ in bytes; in
//!   dense mode the serialized header carries the HIP accumulator and an
//!   "out of order" flag, which a union resets — so `a ∪ a` and `∅ ∪ a` are
//!   not byte-identical to `a`, and a sketch built directly from a stream
//!   differs from the union of sketches of its parts.
//! * Frequent items: merges were neither byte-exact commutative nor
//!   associative (the serialized item order follows its internal hash map,
//!   and its purge keeps a sample-based median rather than a canonical
//!   threshold).
//! * Its Bloom filter union is byte-exact, but hashes via Rust's `Hash`
//!   trait and has its own unversioned format; a 300-line hand-written filter
//!   over `xxh3` keeps one hashing and encoding scheme for every sketch.
//!
//! The hand-written sketches here keep canonical state only (registers, bits,
//! sorted counts), which makes the byte-exact laws hold and property-testable.

mod bloom;
mod composite;
mod decayed;
mod first_last;
mod hll;
mod numeric;
mod set;
mod topk;

pub use bloom::{BLOOM_MAX_BITS, BLOOM_MAX_HASHES, Bloom, BloomFilter};
pub use composite::{Map, Tuple};
pub use decayed::{Decayed, DecayedSum};
pub use first_last::{First, Last};
pub use hll::{HLL_MAX_PRECISION, HLL_MIN_PRECISION, HllSketch, HyperLogLog};
pub use numeric::{Count, Max, Min, Sum};
pub use set::Set;
pub use topk::{TOPK_MAX_CAPACITY, TopK, TopKSummary};

use crate::error::MonoidError;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Version byte leading every byte-encoded monoid value.
pub const FORMAT_VERSION: u8 = 1;

/// What kind of monoid a value belongs to; stores dispatch their write
/// strategy on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    /// Integer sum.
    Sum,
    /// Event count.
    Count,
    /// Integer minimum.
    Min,
    /// Integer maximum.
    Max,
    /// Earliest value by event time.
    First,
    /// Latest value by event time.
    Last,
    /// Set of distinct strings.
    Set,
    /// HyperLogLog distinct-count sketch.
    HyperLogLog,
    /// Top-K heavy hitters.
    TopK,
    /// Bloom filter.
    Bloom,
    /// Per-key inner monoid.
    Map,
    /// Pair of monoids.
    Tuple,
    /// Exponentially decayed sum.
    DecayedSum,
}

impl Kind {
    /// One-byte tag used in encodings.
    pub fn tag(self) -> u8 {
        match self {
            Kind::Sum => 1,
            Kind::Count => 2,
            Kind::Min => 3,
            Kind::Max => 4,
            Kind::First => 5,
            Kind::Last => 6,
            Kind::Set => 7,
            Kind::HyperLogLog => 8,
            Kind::TopK => 9,
            Kind::Bloom => 10,
            Kind::Map => 11,
            Kind::Tuple => 12,
            Kind::DecayedSum => 13,
        }
    }
}

/// The stored, canonical form of a monoid value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cell {
    /// A plain integer (Sum, Count, Min, Max).
    Int(i64),
    /// Versioned bytes (every other kind).
    Bytes(Vec<u8>),
}

impl Cell {
    /// The integer, if this is an `Int` cell.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Cell::Int(v) => Some(*v),
            Cell::Bytes(_) => None,
        }
    }

    /// The bytes, if this is a `Bytes` cell.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Cell::Bytes(b) => Some(b),
            Cell::Int(_) => None,
        }
    }
}

/// How a store must write deltas of a monoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteStrategy {
    /// Integer addition (DynamoDB `ADD`), fenced per lane.
    Add,
    /// Keep the smaller integer (conditional `SET`); idempotent, unfenced.
    IntMin,
    /// Keep the larger integer (conditional `SET`); idempotent, unfenced.
    IntMax,
    /// Read, combine, compare-and-set; idempotent, so unfenced.
    MergeIdempotent,
    /// Read, combine, compare-and-set, fenced per lane.
    MergeFenced,
}

impl WriteStrategy {
    /// Whether writes of this strategy carry and check a per-lane fence.
    pub fn is_fenced(self) -> bool {
        matches!(self, WriteStrategy::Add | WriteStrategy::MergeFenced)
    }
}

/// A monoid: identity, associative and commutative combine, canonical
/// encoding.
///
/// Laws, checked by property tests for every implementation in this crate:
/// `combine(identity, x) == x`, `combine(a, combine(b, c)) ==
/// combine(combine(a, b), c)` and `combine(a, b) == combine(b, a)` — byte-exact
/// on the encoding for sketches.
pub trait Monoid: Clone + Send + Sync + 'static {
    /// What one event contributes.
    type Input: Clone + Send + 'static;
    /// The aggregate value.
    type Value: Clone + Debug + PartialEq + Send + Sync + 'static;

    /// The kind, for store dispatch and error messages.
    fn kind(&self) -> Kind;

    /// The identity element.
    fn identity(&self) -> Self::Value;

    /// Folds one event's input into `acc`.
    fn insert(&self, acc: &mut Self::Value, input: Self::Input);

    /// Combines `other` into `acc`. Fails only when parameters mismatch.
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError>;

    /// Combines two values into a new one.
    fn combine(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value, MonoidError> {
        let mut acc = a.clone();
        self.combine_into(&mut acc, b)?;
        Ok(acc)
    }

    /// Whether `combine(x, x) == x` for every `x`.
    fn is_idempotent(&self) -> bool;

    /// How stores write deltas of this monoid.
    fn write_strategy(&self) -> WriteStrategy {
        if self.is_idempotent() {
            WriteStrategy::MergeIdempotent
        } else {
            WriteStrategy::MergeFenced
        }
    }

    /// Canonical encoding: equal values encode to equal cells.
    fn encode(&self, value: &Self::Value) -> Cell;

    /// Decodes a cell written by [`Monoid::encode`]. Garbage is an error,
    /// never a panic.
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError>;
}

/// Object-safe view of a [`Monoid`] over [`Cell`]s, used by stores.
pub trait DynMonoid: Send + Sync {
    /// The kind.
    fn kind(&self) -> Kind;
    /// How stores write deltas.
    fn write_strategy(&self) -> WriteStrategy;
    /// Combines two encoded values into an encoded value.
    fn combine_cells(&self, a: &Cell, b: &Cell) -> Result<Cell, MonoidError>;
    /// The encoded identity.
    fn identity_cell(&self) -> Cell;
    /// Checks that a cell decodes as a value of this monoid.
    fn validate_cell(&self, cell: &Cell) -> Result<(), MonoidError>;
}

impl<M: Monoid> DynMonoid for M {
    fn kind(&self) -> Kind {
        Monoid::kind(self)
    }
    fn write_strategy(&self) -> WriteStrategy {
        Monoid::write_strategy(self)
    }
    fn combine_cells(&self, a: &Cell, b: &Cell) -> Result<Cell, MonoidError> {
        let mut acc = self.decode(a)?;
        self.combine_into(&mut acc, &self.decode(b)?)?;
        Ok(self.encode(&acc))
    }
    fn identity_cell(&self) -> Cell {
        self.encode(&self.identity())
    }
    fn validate_cell(&self, cell: &Cell) -> Result<(), MonoidError> {
        self.decode(cell).map(|_| ())
    }
}

/// Helpers for versioned byte encodings, shared by every byte-encoded monoid.
pub mod codec {
    use super::{Cell, FORMAT_VERSION, Kind};
    use crate::error::MonoidError;

    /// Starts an encoding for `kind`: the version byte and the kind tag.
    pub fn header(kind: Kind, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity + 2);
        out.push(FORMAT_VERSION);
        out.push(kind.tag());
        out
    }

    /// Checks version and kind tag of a cell and returns the payload.
    pub fn payload(kind: Kind, cell: &Cell) -> Result<&[u8], MonoidError> {
        let bytes = match cell {
            Cell::Bytes(b) => b.as_slice(),
            Cell::Int(_) => return Err(decode_error(kind, "expected bytes, found an integer")),
        };
        match bytes {
            [] | [_] => Err(decode_error(kind, "value shorter than its 2-byte header")),
            [v, _, ..] if *v != FORMAT_VERSION => Err(decode_error(
                kind,
                format!("unsupported format version {v} (this build reads {FORMAT_VERSION})"),
            )),
            [_, t, rest @ ..] if *t == kind.tag() => Ok(rest),
            [_, t, ..] => Err(decode_error(
                kind,
                format!("kind tag {t} does not match expected {}", kind.tag()),
            )),
        }
    }

    /// Builds a decode error.
    pub fn decode_error(kind: Kind, reason: impl Into<String>) -> MonoidError {
        MonoidError::Decode {
            kind,
            reason: reason.into(),
        }
    }

    /// A bounds-checked reader over a payload.
    #[derive(Debug)]
    pub struct Reader<'a> {
        kind: Kind,
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// Reads `payload` for values of `kind`.
        pub fn new(kind: Kind, bytes: &'a [u8]) -> Self {
            Reader { kind, bytes }
        }

        /// Takes `n` bytes.
        pub fn take(&mut self, n: usize) -> Result<&'a [u8], MonoidError> {
            if self.bytes.len() < n {
                return Err(decode_error(
                    self.kind,
                    format!(
                        "truncated: wanted {n} more bytes, {} left",
                        self.bytes.len()
                    ),
                ));
            }
            let (head, tail) = self.bytes.split_at(n);
            self.bytes = tail;
            Ok(head)
        }

        /// Reads one byte.
        pub fn u8(&mut self) -> Result<u8, MonoidError> {
            Ok(self.take(1)?[0])
        }

        /// Reads a little-endian u32.
        pub fn u32(&mut self) -> Result<u32, MonoidError> {
            Ok(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            ))
        }

        /// Reads a little-endian u64.
        pub fn u64(&mut self) -> Result<u64, MonoidError> {
            Ok(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            ))
        }

        /// Reads a little-endian i64.
        pub fn i64(&mut self) -> Result<i64, MonoidError> {
            Ok(i64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            ))
        }

        /// Reads a little-endian f64.
        pub fn f64(&mut self) -> Result<f64, MonoidError> {
            Ok(f64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            ))
        }

        /// Reads a u32-length-prefixed UTF-8 string.
        pub fn string(&mut self) -> Result<String, MonoidError> {
            let len = self.u32()? as usize;
            let raw = self.take(len)?;
            String::from_utf8(raw.to_vec())
                .map_err(|e| decode_error(self.kind, format!("invalid UTF-8 string: {e}")))
        }

        /// Reads a u32-length-prefixed byte string.
        pub fn bytes(&mut self) -> Result<&'a [u8], MonoidError> {
            let len = self.u32()? as usize;
            self.take(len)
        }

        /// Bytes not yet read.
        pub fn remaining(&self) -> &'a [u8] {
            self.bytes
        }

        /// Fails unless every byte was read.
        pub fn finish(self) -> Result<(), MonoidError> {
            if self.bytes.is_empty() {
                Ok(())
            } else {
                Err(decode_error(
                    self.kind,
                    format!("{} trailing bytes", self.bytes.len()),
                ))
            }
        }
    }

    /// Appends a u32-length-prefixed string.
    pub fn put_string(out: &mut Vec<u8>, s: &str) {
        put_bytes(out, s.as_bytes());
    }

    /// Appends a u32-length-prefixed byte string.
    pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
}
