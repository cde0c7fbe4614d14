//! Property and accuracy tests for every monoid: identity, associativity,
//! commutativity (byte-exact on the canonical encoding for sketches),
//! round-trips, garbage decoding, parameter mismatches and sketch accuracy.

use murmur_core::monoid::{
    Bloom, Count, Decayed, DecayedSum, DynMonoid, First, HyperLogLog, Last, Map, Max, Min, Set,
    Sum, TopK, TopKSummary, Tuple,
};
use murmur_core::monoid::{FORMAT_VERSION, Kind};
use murmur_core::{Cell, Monoid, MonoidError};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn ok<T>(r: Result<T, MonoidError>) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(e.to_string()))
}

fn fold<M: Monoid>(m: &M, inputs: &[M::Input]) -> M::Value {
    let mut acc = m.identity();
    for i in inputs {
        m.insert(&mut acc, i.clone());
    }
    acc
}

/// Checks encode/decode round trip and canonicity of one value.
fn roundtrip<M: Monoid>(m: &M, v: &M::Value) -> Result<(), TestCaseError> {
    let cell = m.encode(v);
    let back = ok(m.decode(&cell))?;
    prop_assert_eq!(&back, v);
    prop_assert!(DynMonoid::validate_cell(m, &cell).is_ok());
    prop_assert_eq!(m.encode(&back), cell);
    Ok(())
}

/// The monoid laws on values built from three input sequences, compared
/// byte-exact on the encoding *and* on the typed values.
fn laws<M: Monoid>(m: &M, xs: &[Vec<M::Input>; 3]) -> Result<(), TestCaseError> {
    let [a, b, c] = [fold(m, &xs[0]), fold(m, &xs[1]), fold(m, &xs[2])];
    let id = m.identity();
    for v in [&a, &b, &c, &id] {
        roundtrip(m, v)?;
    }
    let enc = |v: &M::Value| m.encode(v);

    // identity, both sides
    let left = ok(m.combine(&id, &a))?;
    let right = ok(m.combine(&a, &id))?;
    prop_assert_eq!(enc(&left), enc(&a));
    prop_assert_eq!(enc(&right), enc(&a));
    prop_assert_eq!(&left, &a);
    prop_assert_eq!(&right, &a);

    // commutativity
    let ab = ok(m.combine(&a, &b))?;
    let ba = ok(m.combine(&b, &a))?;
    prop_assert_eq!(enc(&ab), enc(&ba));
    prop_assert_eq!(&ab, &ba);

    // associativity
    let ab_c = ok(m.combine(&ab, &c))?;
    let bc = ok(m.combine(&b, &c))?;
    let a_bc = ok(m.combine(&a, &bc))?;
    prop_assert_eq!(enc(&ab_c), enc(&a_bc));
    prop_assert_eq!(&ab_c, &a_bc);
    roundtrip(m, &ab_c)?;

    // insert is a homomorphism: folding a ++ b equals combining the folds
    let mut concat = xs[0].clone();
    concat.extend(xs[1].iter().cloned());
    prop_assert_eq!(enc(&fold(m, &concat)), enc(&ab));

    // idempotence where claimed
    if m.is_idempotent() {
        prop_assert_eq!(enc(&ok(m.combine(&a, &a))?), enc(&a));
    }

    // the object-safe view agrees
    let dyn_m: &dyn DynMonoid = m;
    prop_assert_eq!(ok(dyn_m.combine_cells(&enc(&a), &enc(&b)))?, enc(&ab));
    prop_assert_eq!(dyn_m.identity_cell(), enc(&id));
    Ok(())
}

/// Decoding arbitrary bytes never panics, and whatever is accepted is
/// canonical (re-encodes to the same bytes).
fn garbage<M: Monoid>(m: &M, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut framed = vec![FORMAT_VERSION, Monoid::kind(m).tag()];
    framed.extend_from_slice(bytes);
    for raw in [bytes.to_vec(), framed] {
        let cell = Cell::Bytes(raw);
        if let Ok(v) = m.decode(&cell) {
            prop_assert_eq!(m.encode(&v), cell);
        }
    }
    Ok(())
}

/// Truncating a valid encoding is always an error; corrupting one byte never
/// panics and, if accepted, decodes to something canonical.
fn mutations<M: Monoid>(
    m: &M,
    v: &M::Value,
    cut: prop::sample::Index,
    flip: prop::sample::Index,
    byte: u8,
) -> Result<(), TestCaseError> {
    let Cell::Bytes(bytes) = m.encode(v) else {
        return Ok(());
    };
    let at = cut.index(bytes.len());
    prop_assert!(m.decode(&Cell::Bytes(bytes[..at].to_vec())).is_err());
    let mut corrupt = bytes.clone();
    corrupt[flip.index(bytes.len())] = byte;
    let cell = Cell::Bytes(corrupt);
    if let Ok(w) = m.decode(&cell) {
        prop_assert_eq!(m.encode(&w), cell);
    }
    let mut longer = bytes;
    longer.push(byte);
    prop_assert!(m.decode(&Cell::Bytes(longer)).is_err());
    Ok(())
}

fn hll_small() -> HyperLogLog {
    HyperLogLog::new(6, 42).unwrap()
}
fn bloom_small() -> Bloom {
    Bloom::new(256, 3, 9).unwrap()
}
fn topk_small() -> TopK {
    TopK::new(2, 8).unwrap()
}
fn decayed() -> DecayedSum {
    DecayedSum::new(1_000).unwrap()
}

/// Deterministic splitmix64 stream for the accuracy tests.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn ints() -> impl Strategy<Value = Vec<i64>> {
    vec(any::<i64>(), 0..12)
}
fn timed() -> impl Strategy<Value = Vec<(i64, String)>> {
    // Narrow ranges so that equal times (ties) are common.
    vec((-3i64..3, "[a-c]{0,2}"), 0..8)
}
fn words() -> impl Strategy<Value = Vec<String>> {
    vec("[a-f]{0,3}", 0..12)
}
fn many_words() -> impl Strategy<Value = Vec<String>> {
    // Enough distinct items to cross the sparse/dense threshold of the small
    // HLL (64 registers) and Bloom (256 bits) configurations.
    vec((0u32..100_000).prop_map(|i| format!("u{i}")), 0..48)
}
fn topk_words() -> impl Strategy<Value = Vec<String>> {
    // At most 8 distinct items: within the capacity of `topk_small`.
    vec("[a-h]", 0..40)
}
fn three<S: Strategy>(s: impl Fn() -> S) -> impl Strategy<Value = [S::Value; 3]> {
    (s(), s(), s()).prop_map(|(a, b, c)| [a, b, c])
}

// ---------------------------------------------------------------------------
// Laws
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sum_laws(xs in three(ints)) { laws(&Sum, &xs)?; }

    #[test]
    fn count_laws(xs in three(|| vec(Just(()), 0..12))) { laws(&Count, &xs)?; }

    #[test]
    fn min_laws(xs in three(ints)) { laws(&Min, &xs)?; }

    #[test]
    fn max_laws(xs in three(ints)) { laws(&Max, &xs)?; }

    #[test]
    fn first_laws(xs in three(timed)) { laws(&First, &xs)?; }

    #[test]
    fn last_laws(xs in three(timed)) { laws(&Last, &xs)?; }

    #[test]
    fn set_laws(xs in three(words)) { laws(&Set, &xs)?; }

    #[test]
    fn hll_laws(xs in three(many_words)) {
        laws(&hll_small(), &xs)?;
        laws(&HyperLogLog::new(10, 0).unwrap(), &xs)?;
    }

    #[test]
    fn bloom_laws(xs in three(many_words)) { laws(&bloom_small(), &xs)?; }

    #[test]
    fn topk_laws_within_capacity(xs in three(topk_words)) { laws(&topk_small(), &xs)?; }

    #[test]
    fn map_of_sum_laws(xs in three(|| vec(("[a-c]", any::<i64>()), 0..12))) {
        laws(&Map::new(Sum), &xs)?;
    }

    #[test]
    fn map_of_hll_laws(xs in three(|| vec(("[a-c]", "[a-z]{1,3}"), 0..12))) {
        laws(&Map::new(HyperLogLog::new(4, 1).unwrap()), &xs)?;
    }

    #[test]
    fn map_of_first_laws(xs in three(|| vec(("[a-c]", (-3i64..3, "[a-c]{0,2}")), 0..12))) {
        laws(&Map::new(First), &xs)?;
    }

    #[test]
    fn tuple_laws(xs in three(|| vec((Just(()), any::<i64>()), 0..12))) {
        laws(&Tuple::new(Count, Max), &xs)?;
    }

    #[test]
    fn tuple_of_sketches_laws(xs in three(|| vec(("[a-f]{0,3}", "[a-z]{0,4}"), 0..12))) {
        laws(&Tuple::new(Set, bloom_small()), &xs)?;
    }

    #[test]
    fn nested_laws(xs in three(|| vec(("[a-b]", ("[a-c]".prop_map(String::from), -5i64..5)), 0..12))) {
        laws(&Map::new(Map::new(Min)), &xs)?;
    }
}

// DecayedSum: exact on times, commutativity and identity; associativity up
// to rounding (relative 1e-9).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decayed_sum_laws(xs in three(|| vec((-5_000i64..5_000, -1_000.0f64..1_000.0), 0..8))) {
        let m = decayed();
        let [a, b, c] = [fold(&m, &xs[0]), fold(&m, &xs[1]), fold(&m, &xs[2])];
        let id = m.identity();
        for v in [&a, &b, &c, &id] {
            roundtrip(&m, v)?;
        }
        prop_assert_eq!(m.encode(&ok(m.combine(&id, &a))?), m.encode(&a));
        prop_assert_eq!(m.encode(&ok(m.combine(&a, &id))?), m.encode(&a));
        let ab = ok(m.combine(&a, &b))?;
        prop_assert_eq!(m.encode(&ab), m.encode(&ok(m.combine(&b, &a))?));
        let ab_c = ok(m.combine(&ab, &c))?;
        let a_bc = ok(m.combine(&a, &ok(m.combine(&b, &c))?))?;
        prop_assert_eq!(ab_c.at_ms, a_bc.at_ms);
        prop_assert!(close(ab_c.value, a_bc.value), "{ab_c:?} vs {a_bc:?}");

        // Against a direct evaluation of Σ amount · 2^(-(T - t)/h).
        let all: Vec<_> = xs.iter().flatten().collect();
        if let Some(t_max) = all.iter().map(|(t, _)| *t).max() {
            let direct: f64 = all
                .iter()
                .map(|(t, v)| v * (-((t_max - t) as f64) / 1_000.0).exp2())
                .sum();
            prop_assert!(close(m.value_at(&ab_c, t_max), direct), "{ab_c:?} vs {direct}");
        }
        prop_assert!(!m.is_idempotent());
    }
}

// ---------------------------------------------------------------------------
// Garbage decoding: never a panic, only canonical bytes accepted.
// ---------------------------------------------------------------------------

fn all_garbage(bytes: &[u8]) -> Result<(), TestCaseError> {
    garbage(&Sum, bytes)?;
    garbage(&Count, bytes)?;
    garbage(&Min, bytes)?;
    garbage(&Max, bytes)?;
    garbage(&First, bytes)?;
    garbage(&Last, bytes)?;
    garbage(&Set, bytes)?;
    garbage(&HyperLogLog::new(4, 0).unwrap(), bytes)?;
    garbage(&hll_small(), bytes)?;
    garbage(&Bloom::new(64, 2, 0).unwrap(), bytes)?;
    garbage(&topk_small(), bytes)?;
    garbage(&Map::new(Sum), bytes)?;
    garbage(&Map::new(Set), bytes)?;
    garbage(&Tuple::new(Count, Last), bytes)?;
    garbage(&decayed(), bytes)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_arbitrary_bytes(bytes in vec(any::<u8>(), 0..96)) {
        all_garbage(&bytes)?;
    }

    #[test]
    fn decode_arbitrary_bytes_with_valid_parameters(
        tail in vec(any::<u8>(), 0..64),
        form in 0u8..3,
        count in 0u32..20,
    ) {
        // Get past the parameter checks so the register/item parsers see junk.
        let mut hll = vec![FORMAT_VERSION, Kind::HyperLogLog.tag(), 4];
        hll.extend_from_slice(&0u64.to_le_bytes());
        hll.push(form);
        hll.extend_from_slice(&count.to_le_bytes());
        hll.extend_from_slice(&tail);
        garbage(&HyperLogLog::new(4, 0).unwrap(), &hll[2..])?;

        let mut bloom = vec![FORMAT_VERSION, Kind::Bloom.tag()];
        bloom.extend_from_slice(&64u64.to_le_bytes());
        bloom.push(2);
        bloom.extend_from_slice(&0u64.to_le_bytes());
        bloom.push(form);
        bloom.extend_from_slice(&count.to_le_bytes());
        bloom.extend_from_slice(&tail);
        garbage(&Bloom::new(64, 2, 0).unwrap(), &bloom[2..])?;

        let mut topk = vec![FORMAT_VERSION, Kind::TopK.tag()];
        topk.extend_from_slice(&2u32.to_le_bytes());
        topk.extend_from_slice(&8u32.to_le_bytes());
        topk.extend_from_slice(&1_000u64.to_le_bytes());
        topk.extend_from_slice(&u64::from(form).to_le_bytes());
        topk.extend_from_slice(&count.to_le_bytes());
        topk.extend_from_slice(&tail);
        garbage(&topk_small(), &topk[2..])?;

        let mut decayed_bytes = 1_000u64.to_le_bytes().to_vec();
        decayed_bytes.extend_from_slice(&tail);
        garbage(&decayed(), &decayed_bytes)?;
    }

    #[test]
    fn decode_mutated_encodings(
        words in many_words(),
        timed_in in timed(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        mutations(&First, &fold(&First, &timed_in), cut, flip, byte)?;
        mutations(&Last, &fold(&Last, &timed_in), cut, flip, byte)?;
        mutations(&Set, &fold(&Set, &words), cut, flip, byte)?;
        let h = hll_small();
        mutations(&h, &fold(&h, &words), cut, flip, byte)?;
        let b = bloom_small();
        mutations(&b, &fold(&b, &words), cut, flip, byte)?;
        let t = topk_small();
        mutations(&t, &fold(&t, &words), cut, flip, byte)?;
        let keyed: Vec<(String, i64)> = words.iter().map(|w| (w[..2].to_string(), 1)).collect();
        mutations(&Map::new(Sum), &fold(&Map::new(Sum), &keyed), cut, flip, byte)?;
        let pairs: Vec<((), i64)> = timed_in.iter().map(|(t, _)| ((), *t)).collect();
        let tm = Tuple::new(Count, Max);
        mutations(&tm, &fold(&tm, &pairs), cut, flip, byte)?;
        let d = decayed();
        let amounts: Vec<(i64, f64)> = timed_in.iter().map(|(t, s)| (*t, s.len() as f64)).collect();
        mutations(&d, &fold(&d, &amounts), cut, flip, byte)?;
    }
}

#[test]
fn decode_rejects_wrong_version_kind_and_cell_type() {
    fn check<M: Monoid>(m: &M, v: &M::Value) {
        let Cell::Bytes(good) = m.encode(v) else {
            panic!("byte monoid expected")
        };
        assert!(m.decode(&Cell::Bytes(good.clone())).is_ok());
        let mut wrong_version = good.clone();
        wrong_version[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            m.decode(&Cell::Bytes(wrong_version)),
            Err(MonoidError::Decode { .. })
        ));
        let mut wrong_kind = good.clone();
        wrong_kind[1] = if Monoid::kind(m) == Kind::Set {
            Kind::Bloom.tag()
        } else {
            Kind::Set.tag()
        };
        assert!(matches!(
            m.decode(&Cell::Bytes(wrong_kind)),
            Err(MonoidError::Decode { .. })
        ));
        assert!(m.decode(&Cell::Int(0)).is_err());
        assert!(m.decode(&Cell::Bytes(vec![])).is_err());
        assert!(m.decode(&Cell::Bytes(good[..1].to_vec())).is_err());
    }
    check(&First, &Some((1, "a".into())));
    check(&Last, &None);
    check(&Set, &BTreeSet::from(["x".to_string()]));
    check(&hll_small(), &hll_small().identity());
    check(&bloom_small(), &bloom_small().identity());
    check(&topk_small(), &topk_small().identity());
    check(&Map::new(Sum), &BTreeMap::from([("k".to_string(), 3)]));
    check(&Tuple::new(Sum, Set), &(1, BTreeSet::new()));
    check(
        &decayed(),
        &Decayed {
            value: 1.5,
            at_ms: 7,
        },
    );

    for m in [&Sum as &dyn DynMonoid, &Count, &Min, &Max] {
        assert!(
            m.validate_cell(&Cell::Bytes(vec![FORMAT_VERSION, 1]))
                .is_err()
        );
        assert!(m.validate_cell(&Cell::Int(-5)).is_ok());
    }
}

#[test]
fn hll_rejects_wrong_register_length_and_values() {
    let m = HyperLogLog::new(4, 0).unwrap();
    let mut dense = vec![FORMAT_VERSION, Kind::HyperLogLog.tag(), 4];
    dense.extend_from_slice(&0u64.to_le_bytes());
    dense.push(0);
    dense.extend_from_slice(&[1u8; 16]);
    assert!(m.decode(&Cell::Bytes(dense.clone())).is_ok());
    // 15 or 17 registers for precision 4
    assert!(
        m.decode(&Cell::Bytes(dense[..dense.len() - 1].to_vec()))
            .is_err()
    );
    let mut long = dense.clone();
    long.push(1);
    assert!(m.decode(&Cell::Bytes(long)).is_err());
    // a register above 64 - p + 1
    let mut high = dense.clone();
    *high.last_mut().unwrap() = 62;
    assert!(m.decode(&Cell::Bytes(high)).is_err());
    // precision byte outside 4..=18
    let mut bad_p = dense.clone();
    bad_p[2] = 3;
    assert!(matches!(
        m.decode(&Cell::Bytes(bad_p)),
        Err(MonoidError::Decode { .. })
    ));
    // dense form for a sketch that must be sparse
    let p10 = HyperLogLog::new(10, 0).unwrap();
    let mut v = p10.identity();
    p10.insert(&mut v, "x".into());
    let Cell::Bytes(sparse) = p10.encode(&v) else {
        unreachable!()
    };
    assert_eq!(sparse[11], 1, "one register set: sparse form");
    let mut as_dense = sparse[..11].to_vec();
    as_dense.push(0);
    as_dense.extend_from_slice(v.registers());
    assert!(p10.decode(&Cell::Bytes(as_dense)).is_err());
}

// ---------------------------------------------------------------------------
// Parameter mismatches and configuration errors
// ---------------------------------------------------------------------------

fn is_mismatch<T: std::fmt::Debug>(r: Result<T, MonoidError>, param: &str) -> bool {
    matches!(r, Err(MonoidError::ParameterMismatch { parameter, .. }) if parameter == param)
}

#[test]
fn hll_parameter_mismatch() {
    let a = HyperLogLog::new(10, 1).unwrap();
    let p = HyperLogLog::new(11, 1).unwrap();
    let s = HyperLogLog::new(10, 2).unwrap();
    let mut va = a.identity();
    a.insert(&mut va, "x".into());
    assert!(is_mismatch(a.combine(&va, &p.identity()), "precision"));
    assert!(is_mismatch(a.combine(&p.identity(), &va), "precision"));
    assert!(is_mismatch(a.combine(&va, &s.identity()), "seed"));
    assert!(is_mismatch(p.decode(&a.encode(&va)), "precision"));
    assert!(is_mismatch(s.decode(&a.encode(&va)), "seed"));
    assert!(is_mismatch(
        DynMonoid::combine_cells(&p, &DynMonoid::identity_cell(&p), &a.encode(&va)),
        "precision"
    ));
    assert!(matches!(
        HyperLogLog::new(3, 0),
        Err(MonoidError::Config { .. })
    ));
    assert!(matches!(
        HyperLogLog::new(19, 0),
        Err(MonoidError::Config { .. })
    ));
    assert!(HyperLogLog::new(18, 0).is_ok());
}

#[test]
fn bloom_parameter_mismatch() {
    let a = Bloom::new(1024, 4, 1).unwrap();
    let bits = Bloom::new(2048, 4, 1).unwrap();
    let hashes = Bloom::new(1024, 5, 1).unwrap();
    let seed = a.with_seed(2);
    for (other, param) in [(bits, "bits"), (hashes, "hashes"), (seed, "seed")] {
        assert!(is_mismatch(
            a.combine(&a.identity(), &other.identity()),
            param
        ));
        assert!(is_mismatch(
            a.decode(&other.encode(&other.identity())),
            param
        ));
    }
    assert!(matches!(
        Bloom::new(0, 1, 0),
        Err(MonoidError::Config { .. })
    ));
    assert!(matches!(
        Bloom::new(64, 0, 0),
        Err(MonoidError::Config { .. })
    ));
    assert!(matches!(
        Bloom::with_rate(0, 0.01),
        Err(MonoidError::Config { .. })
    ));
    assert!(matches!(
        Bloom::with_rate(10, 1.0),
        Err(MonoidError::Config { .. })
    ));
    assert!(matches!(
        Bloom::with_rate(10, f64::NAN),
        Err(MonoidError::Config { .. })
    ));
    assert_eq!(Bloom::new(100, 1, 0).unwrap().bits(), 128);
}

#[test]
fn topk_parameter_mismatch() {
    let a = TopK::new(3, 24).unwrap();
    let k = TopK::new(4, 24).unwrap();
    let cap = TopK::new(3, 25).unwrap();
    assert!(is_mismatch(a.combine(&a.identity(), &k.identity()), "k"));
    assert!(is_mismatch(
        a.combine(&cap.identity(), &a.identity()),
        "capacity"
    ));
    assert!(is_mismatch(a.decode(&k.encode(&k.identity())), "k"));
    assert!(is_mismatch(
        a.decode(&cap.encode(&cap.identity())),
        "capacity"
    ));
    assert!(matches!(TopK::new(0, 8), Err(MonoidError::Config { .. })));
    assert!(matches!(TopK::new(3, 2), Err(MonoidError::Config { .. })));
    assert!(TopK::new(3, 3).is_ok());
    assert_eq!(TopK::with_k(5).unwrap().capacity(), 40);
}

#[test]
fn decayed_sum_parameter_mismatch() {
    let a = decayed();
    let b = DecayedSum::new(2_000).unwrap();
    let v = fold(&b, &[(10, 1.0)]);
    assert!(is_mismatch(a.decode(&b.encode(&v)), "half_life_ms"));
    assert!(matches!(
        DecayedSum::new(0),
        Err(MonoidError::Config { .. })
    ));
}

#[test]
fn composite_mismatch_propagates() {
    let a = Map::new(HyperLogLog::new(8, 0).unwrap());
    let b = Map::new(HyperLogLog::new(9, 0).unwrap());
    let va = fold(&a, &[("k".into(), "x".into())]);
    let vb = fold(&b, &[("k".into(), "y".into())]);
    assert!(is_mismatch(a.combine(&va, &vb), "precision"));
    // also for a key only the right operand has
    let vb2 = fold(&b, &[("other".into(), "y".into())]);
    assert!(is_mismatch(a.combine(&va, &vb2), "precision"));
    assert!(is_mismatch(a.decode(&b.encode(&vb)), "precision"));

    let t = Tuple::new(Sum, TopK::new(1, 2).unwrap());
    let u = Tuple::new(Sum, TopK::new(1, 3).unwrap());
    assert!(is_mismatch(
        t.combine(&t.identity(), &u.identity()),
        "capacity"
    ));
    assert!(is_mismatch(t.decode(&u.encode(&u.identity())), "capacity"));
}

// ---------------------------------------------------------------------------
// Semantics
// ---------------------------------------------------------------------------

#[test]
fn first_last_semantics() {
    let events = [
        (5, "e".to_string()),
        (1, "b".into()),
        (1, "a".into()),
        (9, "x".into()),
        (9, "y".into()),
    ];
    assert_eq!(fold(&First, &events), Some((1, "a".into())));
    assert_eq!(fold(&Last, &events), Some((9, "y".into())));
    assert_eq!(fold(&First, &[]), None);
    assert!(First.is_idempotent() && Last.is_idempotent());
}

#[test]
fn idempotence_flags() {
    assert!(Set.is_idempotent());
    assert!(hll_small().is_idempotent());
    assert!(bloom_small().is_idempotent());
    assert!(!topk_small().is_idempotent());
    assert!(!decayed().is_idempotent());
    assert!(Map::new(Max).is_idempotent());
    assert!(!Map::new(Sum).is_idempotent());
    assert!(Tuple::new(Min, Set).is_idempotent());
    assert!(!Tuple::new(Min, Count).is_idempotent());
    assert!(Monoid::write_strategy(&Tuple::new(Min, Count)).is_fenced());
    assert!(!Monoid::write_strategy(&Tuple::new(Min, Set)).is_fenced());
    assert_eq!(Monoid::kind(&Map::new(Sum)), Kind::Map);
    assert_eq!(Monoid::kind(&Tuple::new(Sum, Sum)), Kind::Tuple);
}

#[test]
fn decayed_sum_semantics() {
    let m = decayed();
    let v = fold(&m, &[(0, 8.0)]);
    assert_eq!(m.value_at(&v, 0), 8.0);
    assert_eq!(m.value_at(&v, 1_000), 4.0);
    assert_eq!(m.value_at(&v, 3_000), 1.0);
    let w = fold(&m, &[(0, 8.0), (1_000, 4.0)]);
    assert_eq!(
        w,
        Decayed {
            value: 8.0,
            at_ms: 1_000
        }
    );
    // late event: reference time stays at the latest
    let late = fold(&m, &[(1_000, 4.0), (0, 8.0)]);
    assert_eq!(late, w);
    assert_eq!(m.value_at(&m.identity(), 123), 0.0);
    // -0.0 and 0.0 encode identically
    let z = Decayed {
        value: -0.0,
        at_ms: 5,
    };
    assert_eq!(
        m.encode(&z),
        m.encode(&Decayed {
            value: 0.0,
            at_ms: 5
        })
    );
}

#[test]
fn map_keeps_keys_and_tuple_pairs() {
    let m = Map::new(Sum);
    let v = fold(&m, &[("a".into(), 1), ("b".into(), 2), ("a".into(), -1)]);
    assert_eq!(
        v,
        BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 2)])
    );
    let t = Tuple::new(Count, Set);
    let v = fold(&t, &[((), "x".into()), ((), "x".into())]);
    assert_eq!(v, (2, BTreeSet::from(["x".to_string()])));
}

// ---------------------------------------------------------------------------
// HyperLogLog accuracy
// ---------------------------------------------------------------------------

#[test]
fn hll_accuracy_and_merge_at_one_million() {
    let m = HyperLogLog::new(14, 7).unwrap();
    let n = 1_000_000u64;
    let mut whole = m.identity();
    let mut parts = vec![m.identity(); 4];
    let mut checkpoints = Vec::new();
    for i in 0..n {
        let item = format!("user-{i}");
        m.insert(&mut parts[(i / 250_000) as usize], item.clone());
        m.insert(&mut whole, item);
        if [10, 100, 1_000, 10_000, 100_000].contains(&(i + 1)) {
            checkpoints.push((i + 1, m.estimate(&whole)));
        }
    }
    let se = m.standard_error();
    assert!((se - 1.04 / 128.0).abs() < 1e-12);
    let est = m.estimate(&whole);
    let rel = (est - n as f64).abs() / n as f64;
    eprintln!("HLL p=14 at {n}: estimate {est:.0}, relative error {rel:.5} (SE {se:.5})");
    assert!(
        rel < 3.0 * se,
        "estimate {est} off by {rel} (> 3 SE {})",
        3.0 * se
    );
    for (true_n, est) in checkpoints {
        let rel = (est - true_n as f64).abs() / true_n as f64;
        assert!(
            rel < 3.0 * se,
            "at {true_n}: estimate {est}, relative error {rel}"
        );
    }
    assert_eq!(m.estimate(&m.identity()), 0.0);

    // Merging 4 disjoint sketches in any order gives the single sketch, byte for byte.
    let want = m.encode(&whole);
    for order in [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]] {
        let mut acc = m.identity();
        for i in order {
            m.combine_into(&mut acc, &parts[i]).unwrap();
        }
        assert_eq!(m.encode(&acc), want);
    }
    let left = m.combine(&parts[0], &parts[1]).unwrap();
    let right = m.combine(&parts[2], &parts[3]).unwrap();
    assert_eq!(m.encode(&m.combine(&right, &left).unwrap()), want);
    // Dense at 10^6: exactly header + p + seed + form + 2^14 registers.
    assert_eq!(want.as_bytes().unwrap().len(), 2 + 1 + 8 + 1 + (1 << 14));
}

// ---------------------------------------------------------------------------
// Top-K guarantee beyond capacity
// ---------------------------------------------------------------------------

/// Every item with true count > n/(k+1) is in `top`; estimates are lower
/// bounds within `max_error`; the error bound is respected.
fn check_topk_guarantee(
    m: &TopK,
    summary: &TopKSummary,
    truth: &HashMap<String, u64>,
) -> Result<(), String> {
    let n: u64 = truth.values().sum();
    if summary.total() != n {
        return Err(format!("total {} != {n}", summary.total()));
    }
    if (m.capacity() as u64 + 1) * summary.max_error() > n {
        return Err(format!(
            "error {} above n/(capacity+1)",
            summary.max_error()
        ));
    }
    let top = m.top(summary);
    if top.len() > m.k() as usize {
        return Err(format!("{} items returned for k = {}", top.len(), m.k()));
    }
    for w in top.windows(2) {
        if (w[0].1, &w[1].0) < (w[1].1, &w[0].0) {
            return Err(format!("not sorted: {top:?}"));
        }
    }
    for (item, &est) in summary.counts() {
        let f = truth.get(item).copied().unwrap_or(0);
        if est > f || est + summary.max_error() < f {
            return Err(format!(
                "{item}: estimate {est}, true {f}, error {}",
                summary.max_error()
            ));
        }
    }
    for (item, &f) in truth {
        if f * (u64::from(m.k()) + 1) > n && !top.iter().any(|(t, _)| t == item) {
            return Err(format!(
                "heavy item {item} ({f} of {n}) missing from {top:?}"
            ));
        }
    }
    Ok(())
}

/// Merges `parts` in a random tree shape and order.
fn random_merge(m: &TopK, parts: &[TopKSummary], rng: &mut SplitMix) -> TopKSummary {
    let mut pool: Vec<TopKSummary> = parts.to_vec();
    while pool.len() > 1 {
        let i = rng.below(pool.len() as u64) as usize;
        let a = pool.swap_remove(i);
        let j = rng.below(pool.len() as u64) as usize;
        let b = pool.swap_remove(j);
        pool.push(m.combine(&a, &b).unwrap());
    }
    pool.pop().unwrap_or_else(|| m.identity())
}

fn zipf_stream(items: usize, s: f64, n: usize, rng: &mut SplitMix) -> Vec<String> {
    let weights: Vec<f64> = (1..=items).map(|i| (i as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(items);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    (0..n)
        .map(|_| {
            let u = rng.unit();
            let i = cdf.partition_point(|&c| c < u).min(items - 1);
            format!("item-{i}")
        })
        .collect()
}

fn truth_of(stream: &[String]) -> HashMap<String, u64> {
    let mut truth = HashMap::new();
    for s in stream {
        *truth.entry(s.clone()).or_insert(0) += 1;
    }
    truth
}

#[test]
fn topk_zipf_guarantee_single_and_merged() {
    let mut rng = SplitMix(2024);
    let stream = zipf_stream(2_000, 1.3, 120_000, &mut rng);
    let truth = truth_of(&stream);
    let n = stream.len() as u64;
    for m in [
        TopK::new(10, 10).unwrap(),
        TopK::with_k(10).unwrap(),
        TopK::new(20, 40).unwrap(),
    ] {
        let heavy = truth
            .values()
            .filter(|&&f| f * (u64::from(m.k()) + 1) > n)
            .count();
        assert!(
            heavy >= 2,
            "the stream must have heavy items for k = {}",
            m.k()
        );

        let single = fold(&m, &stream);
        assert!(single.max_error() > 0, "the test must exceed capacity");
        check_topk_guarantee(&m, &single, &truth).unwrap();

        // 16 partial summaries (random assignment of events), merged in random orders.
        let mut parts = vec![m.identity(); 16];
        for item in &stream {
            let p = rng.below(16) as usize;
            m.insert(&mut parts[p], item.clone());
        }
        for _ in 0..20 {
            let merged = random_merge(&m, &parts, &mut rng);
            check_topk_guarantee(&m, &merged, &truth).unwrap();
        }
        // and sequentially, in shuffled order
        let mut order: Vec<usize> = (0..16).collect();
        rng.shuffle(&mut order);
        let mut acc = m.identity();
        for i in order {
            m.combine_into(&mut acc, &parts[i]).unwrap();
        }
        check_topk_guarantee(&m, &acc, &truth).unwrap();
        let top = m.top(&acc);
        assert_eq!(top[0].0, "item-0");
    }
}

#[test]
fn topk_guarantee_near_threshold() {
    // k items just above n/(k+1) plus a long tail of singletons: the case
    // where Misra–Gries errors are largest relative to the margin.
    let mut rng = SplitMix(7);
    let k = 4u32;
    let m = TopK::new(k, k).unwrap();
    let mut stream = Vec::new();
    for h in 0..k {
        stream.extend(std::iter::repeat_n(format!("heavy-{h}"), 2_010));
    }
    for i in 0..1_960 {
        stream.push(format!("tail-{i}"));
    }
    rng.shuffle(&mut stream);
    let truth = truth_of(&stream);
    check_topk_guarantee(&m, &fold(&m, &stream), &truth).unwrap();
    let mut parts = vec![m.identity(); 16];
    for (i, item) in stream.iter().enumerate() {
        m.insert(&mut parts[i % 16], item.clone());
    }
    for _ in 0..20 {
        check_topk_guarantee(&m, &random_merge(&m, &parts, &mut rng), &truth).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Beyond capacity: the guarantee holds for any partition and merge tree,
    /// and combine stays commutative byte-exact.
    #[test]
    fn topk_guarantee_any_merge_tree(
        events in vec((0u32..30, 0u32..30), 1..400),
        parts in 1usize..8,
        seed in any::<u64>(),
        k in 1u32..4,
        extra in 0u32..4,
    ) {
        let m = TopK::new(k, k + extra).unwrap();
        // Skewed: the min of two uniforms favours small ids.
        let stream: Vec<String> = events.iter().map(|(a, b)| format!("i{}", a.min(b))).collect();
        let truth = truth_of(&stream);
        let mut rng = SplitMix(seed);
        let mut summaries = vec![m.identity(); parts];
        for item in &stream {
            let p = rng.below(parts as u64) as usize;
            m.insert(&mut summaries[p], item.clone());
        }
        for s in &summaries {
            roundtrip(&m, s)?;
        }
        let merged = random_merge(&m, &summaries, &mut rng);
        roundtrip(&m, &merged)?;
        prop_assert!(check_topk_guarantee(&m, &merged, &truth).is_ok(), "{:?}", check_topk_guarantee(&m, &merged, &truth));
        if parts >= 2 {
            let ab = m.combine(&summaries[0], &summaries[1]).unwrap();
            let ba = m.combine(&summaries[1], &summaries[0]).unwrap();
            prop_assert_eq!(m.encode(&ab), m.encode(&ba));
        }
    }
}

// ---------------------------------------------------------------------------
// Bloom accuracy
// ---------------------------------------------------------------------------

#[test]
fn bloom_no_false_negatives_and_rate() {
    let rate = 0.01;
    let m = Bloom::with_rate(100_000, rate).unwrap();
    assert_eq!(m.hashes(), 7);
    let mut v = m.identity();
    for i in 0..100_000 {
        m.insert(&mut v, format!("present-{i}"));
    }
    for i in 0..100_000 {
        assert!(
            m.contains(&v, &format!("present-{i}")),
            "false negative for {i}"
        );
    }
    let false_positives = (0..100_000)
        .filter(|i| m.contains(&v, &format!("absent-{i}")))
        .count();
    let measured = false_positives as f64 / 100_000.0;
    eprintln!(
        "Bloom bits={} hashes={}: measured FPR {measured}",
        m.bits(),
        m.hashes()
    );
    assert!(
        measured <= rate * 1.5 && measured >= rate / 1.5,
        "measured false-positive rate {measured} vs configured {rate}"
    );

    // Merging two halves equals the single filter, byte for byte.
    let mut a = m.identity();
    let mut b = m.identity();
    for i in 0..100_000 {
        let target = if i % 3 == 0 { &mut a } else { &mut b };
        m.insert(target, format!("present-{i}"));
    }
    assert_eq!(m.encode(&m.combine(&b, &a).unwrap()), m.encode(&v));
    assert!(m.decode(&m.encode(&v)).unwrap() == v);
}
