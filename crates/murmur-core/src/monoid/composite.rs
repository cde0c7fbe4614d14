//! Composite monoids: [`Map`] (per-key inner monoid) and [`Tuple`] (pair).

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;
use std::collections::BTreeMap;

const CELL_INT: u8 = 0;
const CELL_BYTES: u8 = 1;

/// Appends an inner cell: tag 0 + `i64` LE, or tag 1 + `u32`-length-prefixed
/// bytes.
fn put_cell(out: &mut Vec<u8>, cell: &Cell) {
    match cell {
        Cell::Int(v) => {
            out.push(CELL_INT);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Cell::Bytes(b) => {
            out.push(CELL_BYTES);
            codec::put_bytes(out, b);
        }
    }
}

fn read_cell(kind: Kind, r: &mut Reader<'_>) -> Result<Cell, MonoidError> {
    match r.u8()? {
        CELL_INT => Ok(Cell::Int(r.i64()?)),
        CELL_BYTES => Ok(Cell::Bytes(r.bytes()?.to_vec())),
        tag => Err(decode_error(kind, format!("invalid inner cell tag {tag}"))),
    }
}

fn cell_size(cell: &Cell) -> usize {
    match cell {
        Cell::Int(_) => 9,
        Cell::Bytes(b) => 5 + b.len(),
    }
}

/// A per-key inner monoid: `key -> M::Value`, combined key by key.
///
/// * Input: `(key, inner input)`.
/// * Value: `BTreeMap<String, M::Value>`; the identity is the empty map. A
///   key is present once anything was folded into it (even if its inner
///   value equals the inner identity).
///
/// Associative and commutative exactly when the inner monoid is (per key,
/// with the union of keys); idempotent iff the inner monoid is, so a
/// `Map<Max>` needs no fence while a `Map<Sum>` does. Maps are unbounded:
/// mind DynamoDB's 400 KB item limit.
///
/// Errors of the inner monoid (parameter mismatches) are returned as they
/// are; after an error the accumulator may be partially combined and must
/// be discarded.
///
/// Encoding: header, `u32` entry count, then per entry by ascending key: the
/// `u32`-length-prefixed key and the inner cell (tag 0 + `i64` LE for an
/// integer cell, tag 1 + `u32`-length-prefixed bytes for a byte cell).
/// Decoding rejects unsorted or duplicate keys and decodes (validates) every
/// inner value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Map<M> {
    inner: M,
}

impl<M: Monoid> Map<M> {
    /// A map whose values are combined with `inner`.
    pub fn new(inner: M) -> Self {
        Map { inner }
    }

    /// The inner monoid.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

impl<M: Monoid> Monoid for Map<M> {
    type Input = (String, M::Input);
    type Value = BTreeMap<String, M::Value>;

    fn kind(&self) -> Kind {
        Kind::Map
    }
    fn identity(&self) -> Self::Value {
        BTreeMap::new()
    }
    fn insert(&self, acc: &mut Self::Value, (key, input): Self::Input) {
        let slot = acc.entry(key).or_insert_with(|| self.inner.identity());
        self.inner.insert(slot, input);
    }
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError> {
        for (key, value) in other {
            match acc.get_mut(key) {
                Some(slot) => self.inner.combine_into(slot, value)?,
                None => {
                    // combine(identity, value) rather than a clone, so
                    // parameter checks apply to every entry.
                    let mut slot = self.inner.identity();
                    self.inner.combine_into(&mut slot, value)?;
                    acc.insert(key.clone(), slot);
                }
            }
        }
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        self.inner.is_idempotent()
    }
    fn encode(&self, value: &Self::Value) -> Cell {
        let cells: Vec<(&String, Cell)> = value
            .iter()
            .map(|(k, v)| (k, self.inner.encode(v)))
            .collect();
        let size: usize = cells.iter().map(|(k, c)| 4 + k.len() + cell_size(c)).sum();
        let mut out = codec::header(Kind::Map, 4 + size);
        out.extend_from_slice(&(cells.len() as u32).to_le_bytes());
        for (key, cell) in &cells {
            codec::put_string(&mut out, key);
            put_cell(&mut out, cell);
        }
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError> {
        let kind = Kind::Map;
        let mut r = Reader::new(kind, codec::payload(kind, cell)?);
        let len = r.u32()?;
        let mut map = BTreeMap::new();
        for _ in 0..len {
            let key = r.string()?;
            if map
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= key)
            {
                return Err(decode_error(kind, "keys not strictly ascending"));
            }
            let inner = read_cell(kind, &mut r)?;
            let value = self.inner.decode(&inner)?;
            map.insert(key, value);
        }
        r.finish()?;
        Ok(map)
    }
}

/// A pair of monoids combined component-wise.
///
/// * Input: `(A::Input, B::Input)`.
/// * Value: `(A::Value, B::Value)`; the identity is the pair of identities.
///
/// Associative and commutative exactly when both components are;
/// idempotent iff both are (a `Tuple<Min, Max>` needs no fence, a
/// `Tuple<Count, Max>` does). After an error (a component's parameter
/// mismatch) the accumulator may be partially combined and must be
/// discarded.
///
/// Encoding: header, then the two component cells, each as tag 0 + `i64` LE
/// (integer cell) or tag 1 + `u32`-length-prefixed bytes (byte cell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuple<A, B> {
    a: A,
    b: B,
}

impl<A: Monoid, B: Monoid> Tuple<A, B> {
    /// The pair of `a` and `b`.
    pub fn new(a: A, b: B) -> Self {
        Tuple { a, b }
    }

    /// The first component's monoid.
    pub fn first(&self) -> &A {
        &self.a
    }

    /// The second component's monoid.
    pub fn second(&self) -> &B {
        &self.b
    }
}

impl<A: Monoid, B: Monoid> Monoid for Tuple<A, B> {
    type Input = (A::Input, B::Input);
    type Value = (A::Value, B::Value);

    fn kind(&self) -> Kind {
        Kind::Tuple
    }
    fn identity(&self) -> Self::Value {
        (self.a.identity(), self.b.identity())
    }
    fn insert(&self, acc: &mut Self::Value, (a, b): Self::Input) {
        self.a.insert(&mut acc.0, a);
        self.b.insert(&mut acc.1, b);
    }
    fn combine_into(&self, acc: &mut Self::Value, other: &Self::Value) -> Result<(), MonoidError> {
        self.a.combine_into(&mut acc.0, &other.0)?;
        self.b.combine_into(&mut acc.1, &other.1)
    }
    fn is_idempotent(&self) -> bool {
        self.a.is_idempotent() && self.b.is_idempotent()
    }
    fn encode(&self, value: &Self::Value) -> Cell {
        let a = self.a.encode(&value.0);
        let b = self.b.encode(&value.1);
        let mut out = codec::header(Kind::Tuple, cell_size(&a) + cell_size(&b));
        put_cell(&mut out, &a);
        put_cell(&mut out, &b);
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<Self::Value, MonoidError> {
        let kind = Kind::Tuple;
        let mut r = Reader::new(kind, codec::payload(kind, cell)?);
        let a = read_cell(kind, &mut r)?;
        let b = read_cell(kind, &mut r)?;
        r.finish()?;
        Ok((self.a.decode(&a)?, self.b.decode(&b)?))
    }
}
