//! [`Bloom`]: approximate membership ("have we seen x?").

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Largest supported filter size in bits (512 MiB; mind DynamoDB's 400 KB
/// item limit, about 3.2 million bits, for stored rows).
pub const BLOOM_MAX_BITS: u64 = 1 << 32;
/// Largest supported number of hash functions.
pub const BLOOM_MAX_HASHES: u32 = 64;

const FORM_DENSE: u8 = 0;
const FORM_SPARSE: u8 = 1;

/// Bloom filter over strings: no false negatives, a tunable false-positive
/// rate.
///
/// * Input: one string.
/// * Value: a [`BloomFilter`] of `bits` bits (a multiple of 64); the identity
///   has no bit set.
///
/// Each item sets `hashes` bits chosen by enhanced double hashing (Dillinger
/// & Manolios 2004) from `xxh3_128_with_seed(bytes, seed)` — a fixed,
/// platform-independent hash, so filters from different processes and
/// releases merge correctly. Combine is bitwise OR: commutative, associative
/// and idempotent, byte-exact on the encoding; rows need no fence.
///
/// Combining or decoding filters whose `bits`, `hashes` or `seed` differ from
/// this monoid's is a [`MonoidError::ParameterMismatch`].
///
/// Encoding: header, bits (`u64`), hashes (`u8`), seed (`u64`), a form byte,
/// then either the bitset as little-endian `u64` words (dense, form 0) or,
/// when that is strictly smaller, a `u32` count and the ascending `u32`
/// positions of the set bits (sparse, form 1). The form is a function of the
/// bits and decoding rejects the other one, so equal filters encode to equal
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bloom {
    bits: u64,
    hashes: u32,
    seed: u64,
}

impl Bloom {
    /// A filter of `bits` bits (rounded up to a multiple of 64, at most
    /// [`BLOOM_MAX_BITS`]) setting `hashes` bits per item (1 to
    /// [`BLOOM_MAX_HASHES`]), hashing with `seed`.
    pub fn new(bits: u64, hashes: u32, seed: u64) -> Result<Self, MonoidError> {
        let config = |reason: String| MonoidError::Config {
            kind: Kind::Bloom,
            reason,
        };
        if bits == 0 || bits > BLOOM_MAX_BITS {
            return Err(config(format!("bits {bits} outside 1..={BLOOM_MAX_BITS}")));
        }
        if hashes == 0 || hashes > BLOOM_MAX_HASHES {
            return Err(config(format!(
                "hashes {hashes} outside 1..={BLOOM_MAX_HASHES}"
            )));
        }
        Ok(Bloom {
            bits: bits.div_ceil(64) * 64,
            hashes,
            seed,
        })
    }

    /// A filter sized for `expected_items` distinct items at a false-positive
    /// rate of `fpr` (in `(0, 1)`), seed 0: `bits = ceil(-n ln p / ln² 2)`,
    /// `hashes = round(bits / n · ln 2)`. Use [`Bloom::with_seed`] to change
    /// the seed.
    pub fn with_rate(expected_items: u64, fpr: f64) -> Result<Self, MonoidError> {
        let config = |reason: String| MonoidError::Config {
            kind: Kind::Bloom,
            reason,
        };
        if expected_items == 0 {
            return Err(config("expected_items must be at least 1".into()));
        }
        if !(fpr > 0.0 && fpr < 1.0) {
            return Err(config(format!("false-positive rate {fpr} outside (0, 1)")));
        }
        let n = expected_items as f64;
        let ln2 = std::f64::consts::LN_2;
        let bits = (-n * fpr.ln() / (ln2 * ln2)).ceil();
        if bits > BLOOM_MAX_BITS as f64 {
            return Err(config(format!(
                "{expected_items} items at rate {fpr} need {bits} bits, more than {BLOOM_MAX_BITS}"
            )));
        }
        let bits = (bits as u64).max(1);
        let hashes = ((bits as f64 / n) * ln2)
            .round()
            .clamp(1.0, f64::from(BLOOM_MAX_HASHES));
        Self::new(bits, hashes as u32, 0)
    }

    /// The same filter shape with another hash seed.
    pub fn with_seed(self, seed: u64) -> Self {
        Bloom { seed, ..self }
    }

    /// Size in bits (a multiple of 64).
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// Bits set per item.
    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    /// The hash seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether `item` may have been inserted into `value` (`false` is
    /// certain; `true` is wrong with about the configured rate).
    pub fn contains(&self, value: &BloomFilter, item: &str) -> bool {
        value.contains(item)
    }

    fn check(&self, value: &BloomFilter) -> Result<(), MonoidError> {
        check_params(self, value.bits, value.hashes, value.seed)
    }
}

fn check_params(b: &Bloom, bits: u64, hashes: u32, seed: u64) -> Result<(), MonoidError> {
    let mismatch = |parameter, left: String, right: String| MonoidError::ParameterMismatch {
        kind: Kind::Bloom,
        parameter,
        left,
        right,
    };
    if b.bits != bits {
        return Err(mismatch("bits", b.bits.to_string(), bits.to_string()));
    }
    if b.hashes != hashes {
        return Err(mismatch("hashes", b.hashes.to_string(), hashes.to_string()));
    }
    if b.seed != seed {
        return Err(mismatch("seed", b.seed.to_string(), seed.to_string()));
    }
    Ok(())
}

/// A Bloom filter's bits and parameters; build it with [`Monoid::identity`]
/// / [`Monoid::insert`] of a [`Bloom`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bits: u64,
    hashes: u32,
    seed: u64,
    words: Vec<u64>,
}

impl BloomFilter {
    fn empty(bits: u64, hashes: u32, seed: u64) -> Self {
        BloomFilter {
            bits,
            hashes,
            seed,
            words: vec![0; (bits / 64) as usize],
        }
    }

    /// Size in bits.
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// Bits set per item.
    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    /// The hash seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of bits set.
    pub fn ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether `item` may have been inserted (`false` is certain).
    pub fn contains(&self, item: &str) -> bool {
        let words = &self.words;
        self.positions(item)
            .all(|bit| words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn insert_str(&mut self, item: &str) {
        let positions: Vec<u64> = self.positions(item).collect();
        for bit in positions {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Enhanced double hashing: `x += y; y += i` over the two halves of the
    /// 128-bit hash, each step reduced modulo `bits`.
    fn positions(&self, item: &str) -> impl Iterator<Item = u64> + use<> {
        let hash = xxh3_128_with_seed(item.as_bytes(), self.seed);
        let mut x = hash as u64;
        let mut y = (hash >> 64) as u64;
        let bits = self.bits;
        (0..u64::from(self.hashes)).map(move |i| {
            let bit = x % bits;
            x = x.wrapping_add(y);
            y = y.wrapping_add(i);
            bit
        })
    }
}

/// The canonical choice of form: sparse when it is strictly smaller.
fn use_sparse(bits: u64, ones: u64) -> bool {
    4 + 4 * ones < bits / 8
}

impl Monoid for Bloom {
    type Input = String;
    type Value = BloomFilter;

    fn kind(&self) -> Kind {
        Kind::Bloom
    }
    fn identity(&self) -> BloomFilter {
        BloomFilter::empty(self.bits, self.hashes, self.seed)
    }
    /// Sets the item's bits, with the accumulator's own parameters.
    fn insert(&self, acc: &mut BloomFilter, input: String) {
        acc.insert_str(&input);
    }
    fn combine_into(&self, acc: &mut BloomFilter, other: &BloomFilter) -> Result<(), MonoidError> {
        self.check(acc)?;
        self.check(other)?;
        for (a, b) in acc.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        true
    }
    fn encode(&self, value: &BloomFilter) -> Cell {
        let ones = value.ones();
        let sparse = use_sparse(value.bits, ones);
        let body = if sparse {
            4 + 4 * ones as usize
        } else {
            value.words.len() * 8
        };
        let mut out = codec::header(Kind::Bloom, 18 + body);
        out.extend_from_slice(&value.bits.to_le_bytes());
        out.push(value.hashes as u8);
        out.extend_from_slice(&value.seed.to_le_bytes());
        if sparse {
            out.push(FORM_SPARSE);
            out.extend_from_slice(&(ones as u32).to_le_bytes());
            for (i, &w) in value.words.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    let bit = i as u64 * 64 + u64::from(w.trailing_zeros());
                    out.extend_from_slice(&(bit as u32).to_le_bytes());
                    w &= w - 1;
                }
            }
        } else {
            out.push(FORM_DENSE);
            for w in &value.words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<BloomFilter, MonoidError> {
        let kind = Kind::Bloom;
        let mut r = Reader::new(kind, codec::payload(kind, cell)?);
        let bits = r.u64()?;
        let hashes = u32::from(r.u8()?);
        let seed = r.u64()?;
        check_params(self, bits, hashes, seed)?;
        let mut filter = BloomFilter::empty(bits, hashes, seed);
        match r.u8()? {
            FORM_DENSE => {
                let raw = r.take(filter.words.len() * 8)?;
                for (w, chunk) in filter.words.iter_mut().zip(raw.chunks_exact(8)) {
                    *w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                }
                if use_sparse(bits, filter.ones()) {
                    return Err(decode_error(kind, "dense form used for a sparse filter"));
                }
            }
            FORM_SPARSE => {
                let count = r.u32()?;
                if !use_sparse(bits, u64::from(count)) {
                    return Err(decode_error(kind, "sparse form used for a dense filter"));
                }
                let mut next = 0u64;
                for _ in 0..count {
                    let bit = u64::from(r.u32()?);
                    if bit < next || bit >= bits {
                        return Err(decode_error(
                            kind,
                            format!("bit position {bit} out of order or out of range"),
                        ));
                    }
                    filter.words[(bit / 64) as usize] |= 1 << (bit % 64);
                    next = bit + 1;
                }
            }
            form => return Err(decode_error(kind, format!("unknown bit form {form}"))),
        }
        r.finish()?;
        Ok(filter)
    }
}
