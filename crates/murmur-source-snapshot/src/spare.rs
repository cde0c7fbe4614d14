//! Record vectors given back by a source's consumer, for its next chunks.

use std::sync::{Mutex, PoisonError};

use murmur_core::Record;

/// At most this many bytes of record vectors wait for reuse. A steady scan
/// gives back a vector per chunk and takes one per chunk, so few wait at a
/// time; the bound keeps a burst of returns (a lane catching up on the
/// chunks read ahead for it) from pinning memory.
const SPARE_BYTES: usize = 32 << 20;

/// Emptied record vectors, shared by the reads of one source.
///
/// A chunk's vector is large (8192 records of about 128 bytes), freed on
/// the consumer's thread and allocated again on a reader's. Allocating a
/// fresh one per chunk had the allocator hand the memory back to the OS
/// between chunks and the kernel zero it again on first touch: filling
/// them was 37% of the page faults of the snapshot benchmark's Parquet
/// scan + aggregate, and 2% once they were given back. A `Mutex` over a
/// stack is enough here: it is taken twice per chunk, not per record.
pub(crate) struct SpareRecords<T> {
    held: Mutex<Held<T>>,
}

/// The vectors waiting, and their capacity in bytes.
struct Held<T> {
    vectors: Vec<Vec<Record<T>>>,
    bytes: usize,
}

impl<T> Default for SpareRecords<T> {
    fn default() -> Self {
        SpareRecords {
            held: Mutex::new(Held {
                vectors: Vec::new(),
                bytes: 0,
            }),
        }
    }
}

impl<T> SpareRecords<T> {
    /// An empty vector: the one given back last (still in cache), or a new
    /// one.
    pub(crate) fn take(&self) -> Vec<Record<T>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.vectors.pop() {
            Some(records) => {
                held.bytes -= bytes(&records);
                records
            }
            None => Vec::new(),
        }
    }

    /// Keeps `records`' allocation for a later [`take`](Self::take) (its
    /// records, if any are left, are dropped), unless enough is kept.
    pub(crate) fn give(&self, mut records: Vec<Record<T>>) {
        records.clear();
        let size = bytes(&records);
        if size == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.bytes + size <= SPARE_BYTES {
            held.bytes += size;
            held.vectors.push(records);
        }
    }
}

fn bytes<T>(records: &Vec<Record<T>>) -> usize {
    records.capacity() * size_of::<Record<T>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_given_back_is_taken_again_empty_and_the_total_is_bounded() {
        let spare = SpareRecords::<u64>::default();
        assert_eq!(spare.take().capacity(), 0, "nothing given back yet");
        let mut records: Vec<Record<u64>> = (0..10).map(|i| Record::new(i, 0)).collect();
        records.reserve(100);
        let capacity = records.capacity();
        let address = records.as_ptr();
        spare.give(records);
        let again = spare.take();
        assert!(again.is_empty());
        assert_eq!((again.capacity(), again.as_ptr()), (capacity, address));
        assert_eq!(spare.take().capacity(), 0, "taken once only");

        // Vectors of no capacity are not kept; past the byte bound neither.
        spare.give(Vec::new());
        let per = SPARE_BYTES / 4 / size_of::<Record<u64>>();
        for _ in 0..6 {
            spare.give(Vec::with_capacity(per));
        }
        let mut kept = 0;
        while spare.take().capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, 4);
    }
}
