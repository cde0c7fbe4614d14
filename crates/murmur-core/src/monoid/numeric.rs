//! Integer monoids stored as plain numbers: Sum, Count, Min, Max.

use super::{Cell, Kind, Monoid, WriteStrategy, codec::decode_error};
use crate::error::MonoidError;

fn int(kind: Kind, cell: &Cell) -> Result<i64, MonoidError> {
    cell.as_int()
        .ok_or_else(|| decode_error(kind, "expected an integer, found bytes"))
}

/// Integer sum (wrapping on `i64` overflow, which keeps it associative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum;

impl Monoid for Sum {
    type Input = i64;
    type Value = i64;
    fn kind(&self) -> Kind {
        Kind::Sum
    }
    fn identity(&self) -> i64 {
        0
    }
    fn insert(&self, acc: &mut i64, input: i64) {
        *acc = acc.wrapping_add(input);
    }
    fn combine_into(&self, acc: &mut i64, other: &i64) -> Result<(), MonoidError> {
        *acc = acc.wrapping_add(*other);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        false
    }
    fn write_strategy(&self) -> WriteStrategy {
        WriteStrategy::Add
    }
    fn encode(&self, value: &i64) -> Cell {
        Cell::Int(*value)
    }
    fn decode(&self, cell: &Cell) -> Result<i64, MonoidError> {
        int(Kind::Sum, cell)
    }
}

/// Number of events; each event's input is ignored (`()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count;

impl Monoid for Count {
    type Input = ();
    type Value = i64;
    fn kind(&self) -> Kind {
        Kind::Count
    }
    fn identity(&self) -> i64 {
        0
    }
    fn insert(&self, acc: &mut i64, _input: ()) {
        *acc = acc.wrapping_add(1);
    }
    fn combine_into(&self, acc: &mut i64, other: &i64) -> Result<(), MonoidError> {
        *acc = acc.wrapping_add(*other);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        false
    }
    fn write_strategy(&self) -> WriteStrategy {
        WriteStrategy::Add
    }
    fn encode(&self, value: &i64) -> Cell {
        Cell::Int(*value)
    }
    fn decode(&self, cell: &Cell) -> Result<i64, MonoidError> {
        int(Kind::Count, cell)
    }
}

/// Integer minimum; the identity is `i64::MAX` (reported as "no value" by
/// queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Min;

impl Monoid for Min {
    type Input = i64;
    type Value = i64;
    fn kind(&self) -> Kind {
        Kind::Min
    }
    fn identity(&self) -> i64 {
        i64::MAX
    }
    fn insert(&self, acc: &mut i64, input: i64) {
        *acc = (*acc).min(input);
    }
    fn combine_into(&self, acc: &mut i64, other: &i64) -> Result<(), MonoidError> {
        *acc = (*acc).min(*other);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn write_strategy(&self) -> WriteStrategy {
        WriteStrategy::IntMin
    }
    fn encode(&self, value: &i64) -> Cell {
        Cell::Int(*value)
    }
    fn decode(&self, cell: &Cell) -> Result<i64, MonoidError> {
        int(Kind::Min, cell)
    }
}

/// Integer maximum; the identity is `i64::MIN` (reported as "no value" by
/// queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Max;

impl Monoid for Max {
    type Input = i64;
    type Value = i64;
    fn kind(&self) -> Kind {
        Kind::Max
    }
    fn identity(&self) -> i64 {
        i64::MIN
    }
    fn insert(&self, acc: &mut i64, input: i64) {
        *acc = (*acc).max(input);
    }
    fn combine_into(&self, acc: &mut i64, other: &i64) -> Result<(), MonoidError> {
        *acc = (*acc).max(*other);
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn write_strategy(&self) -> WriteStrategy {
        WriteStrategy::IntMax
    }
    fn encode(&self, value: &i64) -> Cell {
        Cell::Int(*value)
    }
    fn decode(&self, cell: &Cell) -> Result<i64, MonoidError> {
        int(Kind::Max, cell)
    }
}
