//! Damaged objects, generated: valid JSON Lines (plain, gzip, zstd) and
//! Parquet objects with bytes overwritten, inserted or cut off. Whatever
//! the damage, a read never panics; it either yields every line or row as
//! a record or a bad record (nothing dropped silently), or fails with an
//! error that names the object.

use std::sync::Arc;

use crate::common::*;
use futures::TryStreamExt as _;
use murmur_core::Position;
use murmur_source_snapshot::{
    BadRecordPolicy, Chunk, CountEventColumns, CountEventLines, JsonLinesOptions, JsonLinesSource,
    ObjectListing, ParquetOptions, ParquetSource, SnapshotSource,
};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use parquet::basic::Compression as ParquetCodec;
use proptest::prelude::*;

const MAY_2026: i64 = 1_777_593_600_000;

/// 40 canonical events of a few entities.
fn rows() -> Vec<(String, i64, i64)> {
    (0..40)
        .map(|i| (format!("e{}", i % 7), i % 5 + 1, MAY_2026 + i * 61_000))
        .collect()
}

fn plain_lines() -> Vec<u8> {
    let mut text = String::new();
    for (e, c, t) in rows() {
        text += &json_line(&e, c, t);
        text.push('\n');
    }
    text.into_bytes()
}

/// One change to an object's bytes.
#[derive(Debug, Clone)]
enum Damage {
    /// Overwrite the byte at (position modulo the length).
    Set(usize, u8),
    /// Insert a byte at (position modulo the length + 1).
    Insert(usize, u8),
    /// Keep only the first (position modulo the length) bytes.
    Cut(usize),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Damage::Set(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Damage::Insert(p, b)),
        1 => any::<usize>().prop_map(Damage::Cut),
    ];
    proptest::collection::vec(one, 1..6)
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let len = bytes.len();
        match *d {
            Damage::Set(p, b) if len > 0 => bytes[p % len] = b,
            Damage::Set(..) => {}
            Damage::Insert(p, b) => bytes.insert(p % (len + 1), b),
            Damage::Cut(p) if len > 0 => bytes.truncate(p % len),
            Damage::Cut(_) => {}
        }
    }
    bytes
}

/// Reads `key` whole from a memory store holding `bytes`, tolerating any
/// number of bad records: the chunks, or the error's text.
fn read<S, F>(key: &str, bytes: Vec<u8>, source: F) -> Result<Vec<Chunk<S::Item>>, String>
where
    S: SnapshotSource,
    F: FnOnce(ObjectListing) -> S,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        put(&store, key, bytes).await;
        let source = source(ObjectListing::new(store, Path::from("in")));
        let units = source.list_units().await.map_err(|e| e.to_string())?;
        assert_eq!(units.len(), 1, "the one object is listed");
        source
            .read(&units[0], &Position::Beginning)
            .try_collect()
            .await
            .map_err(|e| e.to_string())
    })
}

fn jsonl(listing: ObjectListing) -> JsonLinesSource<CountEventLines> {
    let options = JsonLinesOptions {
        chunk_lines: 8,
        max_line_bytes: 4096,
        ..Default::default()
    };
    let bad = BadRecordPolicy::max_bad_records(u64::MAX);
    JsonLinesSource::with_options(listing, CountEventLines, options, bad).unwrap()
}

fn parquet(listing: ObjectListing) -> ParquetSource<CountEventColumns> {
    let options = ParquetOptions {
        chunk_rows: 8,
        ..Default::default()
    };
    let bad = BadRecordPolicy::max_bad_records(u64::MAX);
    ParquetSource::with_options(listing, CountEventColumns, options, bad).unwrap()
}

/// An error names the object and did not come from a panic.
fn names_the_object(err: &str, key: &str) {
    assert!(err.contains(key), "the error names `{key}`: {err}");
    assert!(!err.contains("panicked"), "a reader panicked: {err}");
}

/// The lines of `text` that are not blank (a reader passes over those).
fn non_blank_lines(text: &[u8]) -> u64 {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64
}

/// `bytes` inflated by another decoder: flate2 (every gzip member) or zstd
/// (every frame).
fn inflate(bytes: &[u8], zst: bool) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    if zst {
        zstd::stream::read::Decoder::new(bytes)?.read_to_end(&mut out)?;
    } else {
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    }
    Ok(out)
}

/// Every record and bad record of the chunks.
fn lines_read<T>(chunks: &[Chunk<T>]) -> u64 {
    chunks.iter().map(|c| c.records.len() as u64 + c.bad).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Plain text: every non-blank line comes out as a record or a bad
    /// record.
    #[test]
    fn damaged_json_lines_lose_no_line(damage in damage()) {
        let bytes = apply(plain_lines(), &damage);
        let expected = non_blank_lines(&bytes);
        let chunks = read("in/part-0.json", bytes, jsonl).unwrap();
        prop_assert_eq!(lines_read(&chunks), expected);
    }

    /// Compressed: what another decoder (flate2, zstd) inflates comes out
    /// line for line as records or bad records; damage it notices fails
    /// the read too, naming the object.
    #[test]
    fn damaged_compressed_json_lines_lose_no_line(damage in damage(), zst in any::<bool>()) {
        let (key, bytes) = if zst {
            ("in/part-0.json.zst", zstd(&plain_lines()))
        } else {
            ("in/part-0.json.gz", gzip(&plain_lines()))
        };
        let bytes = apply(bytes, &damage);
        let inflated = inflate(&bytes, zst);
        match (read(key, bytes, jsonl), inflated) {
            (Ok(chunks), Ok(text)) => prop_assert_eq!(lines_read(&chunks), non_blank_lines(&text)),
            (Ok(chunks), Err(e)) => prop_assert!(
                false,
                "read {} lines of an object the other decoder refuses: {}",
                lines_read(&chunks),
                e
            ),
            (Err(err), _) => names_the_object(&err, key),
        }
    }

    /// Parquet: every row comes out as a record or a bad row, or the read
    /// fails naming the object.
    #[test]
    fn damaged_parquet_fails_by_name(damage in damage(), snappy in any::<bool>()) {
        let codec = if snappy { ParquetCodec::SNAPPY } else { ParquetCodec::UNCOMPRESSED };
        let key = "in/part-0.parquet";
        match read(key, apply(parquet_bytes(&rows(), codec, 16), &damage), parquet) {
            Ok(chunks) => prop_assert_eq!(lines_read(&chunks), 40),
            Err(err) => names_the_object(&err, key),
        }
    }
}

/// Two damages the generator found that made the parquet crate panic
/// (each now a clear error naming the object): a column chunk the footer
/// puts at a negative offset, and a page that says it is dictionary-encoded
/// where there is no dictionary.
#[test]
fn damage_that_panicked_the_parquet_crate_is_a_corrupt_object() {
    let key = "in/part-0.parquet";
    let cases = [
        (
            ParquetCodec::SNAPPY,
            vec![
                Damage::Insert(3_169_896_709_385_563_661, 0),
                Damage::Set(4_718_458_625_290_492_046, 1),
            ],
            "outside the object's",
        ),
        (
            ParquetCodec::UNCOMPRESSED,
            vec![Damage::Set(16_615_126_958_210_893_527, 180)],
            "the Parquet decoder failed on its data: Decoder for dict should have been set",
        ),
    ];
    for (codec, damage, expected) in cases {
        let bytes = apply(parquet_bytes(&rows(), codec, 16), &damage);
        let err = read(key, bytes, parquet).unwrap_err();
        names_the_object(&err, key);
        assert!(err.starts_with("object `in/part-0.parquet`: "), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}
