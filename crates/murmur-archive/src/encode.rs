//! Records to Arrow record batches: the schema of the archive's Parquet
//! files.

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};
use murmur_core::{CountEvent, Record};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;

type EncodeFn<T> = dyn Fn(&[&Record<T>]) -> Result<RecordBatch, String> + Send + Sync;
type SizeFn<T> = dyn Fn(&T) -> usize + Send + Sync;

/// Turns records into Arrow record batches of one fixed schema, and says
/// how many bytes a record counts for the batcher's byte limit: an
/// estimate of what the record holds in memory while its batch is open
/// (the record itself plus the heap data of its value), so that
/// `max_bytes` bounds the archive's memory.
///
/// * [`Encoder::count_events`]: the canonical [`CountEvent`] columns
///   (`entity_id`, `count`, `occurred_at_unix_ms`, `event_id`), which the
///   Parquet snapshot source reads back;
/// * [`Encoder::serde`]: any `Serialize + Deserialize` type, its schema
///   traced from the type by `serde_arrow`;
/// * [`Encoder::serde_with_schema`]: any `Serialize` type, with an Arrow
///   schema given explicitly;
/// * [`Encoder::new`]: a hand-written columnar function.
///
/// The encoding must be a pure function of the records: a retried batch
/// must encode to the same bytes (see [`crate::Error::Conflict`]).
pub struct Encoder<T> {
    schema: SchemaRef,
    encode: Box<EncodeFn<T>>,
    size: Box<SizeFn<T>>,
}

impl<T> fmt::Debug for Encoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl<T> Encoder<T> {
    /// An encoder from a schema and a function building one record batch of
    /// that schema from records (in order). Records count
    /// `size_of::<Record<T>>()` bytes until
    /// [`record_bytes`](Self::record_bytes) says otherwise.
    pub fn new(
        schema: SchemaRef,
        encode: impl Fn(&[&Record<T>]) -> Result<RecordBatch, String> + Send + Sync + 'static,
    ) -> Self {
        Encoder {
            schema,
            encode: Box::new(encode),
            size: Box::new(|_| std::mem::size_of::<Record<T>>()),
        }
    }

    /// How many bytes a record counts for the byte limit, given its value
    /// (the record's own size, `size_of::<Record<T>>()`, is added).
    pub fn record_bytes(mut self, size: impl Fn(&T) -> usize + Send + Sync + 'static) -> Self {
        self.size = Box::new(move |v| std::mem::size_of::<Record<T>>() + size(v));
        self
    }

    /// The schema of the record batches (and of the Parquet files).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Encodes records into one record batch.
    pub fn encode(&self, records: &[&Record<T>]) -> Result<RecordBatch, String> {
        (self.encode)(records)
    }

    /// The bytes a value counts for the byte limit.
    pub fn bytes(&self, value: &T) -> usize {
        (self.size)(value)
    }
}

impl<T: Serialize + 'static> Encoder<T> {
    /// Encodes `T` with `serde_arrow` into the given fields (top-level
    /// struct fields by name). A value's heap data is estimated as its JSON
    /// size.
    pub fn serde_with_schema(fields: Vec<FieldRef>) -> Self {
        let schema = Arc::new(Schema::new(fields.clone()));
        let encode_schema = schema.clone();
        Encoder::new(schema, move |records| {
            let values: Vec<&T> = records.iter().map(|r| &r.value).collect();
            let batch =
                serde_arrow::to_record_batch(&fields, &values).map_err(|e| e.to_string())?;
            // serde_arrow builds the schema from the fields; keep ours
            // (with its metadata) for the writer.
            RecordBatch::try_new(encode_schema.clone(), batch.columns().to_vec())
                .map_err(|e| e.to_string())
        })
        .record_bytes(json_size)
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Encoder<T> {
    /// Encodes `T` with `serde_arrow`, the schema traced from the type
    /// (`Option` fields are nullable; see `serde_arrow`'s tracing for
    /// the mapping). Fails when the type cannot be traced (e.g. a field
    /// whose type is only known from data).
    pub fn serde() -> Result<Self, String> {
        use serde_arrow::schema::{SchemaLike as _, TracingOptions};
        let fields = Vec::<FieldRef>::from_type::<T>(TracingOptions::default())
            .map_err(|e| format!("cannot trace an Arrow schema from the type: {e}"))?;
        Ok(Self::serde_with_schema(fields))
    }
}

impl Encoder<CountEvent> {
    /// The canonical [`CountEvent`] columns: `entity_id` (Utf8),
    /// `count` (Int64), `occurred_at_unix_ms` (Int64) and `event_id`
    /// (Utf8, nullable) — what the Parquet snapshot source's
    /// `ParquetSource::count_events` reads, so an archive can be backfilled.
    pub fn count_events() -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("occurred_at_unix_ms", DataType::Int64, false),
            Field::new("event_id", DataType::Utf8, true),
        ]));
        let encode_schema = schema.clone();
        Encoder::new(schema, move |records: &[&Record<CountEvent>]| {
            let n = records.len();
            let ids: usize = records.iter().map(|r| r.value.entity_id.len()).sum();
            let mut entity = StringBuilder::with_capacity(n, ids);
            let mut count = Int64Builder::with_capacity(n);
            let mut at = Int64Builder::with_capacity(n);
            let mut event_id = StringBuilder::new();
            for r in records {
                entity.append_value(&r.value.entity_id);
                count.append_value(r.value.count);
                at.append_value(r.value.occurred_at_ms);
                event_id.append_option(r.value.event_id.as_deref());
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(entity.finish()),
                Arc::new(count.finish()),
                Arc::new(at.finish()),
                Arc::new(event_id.finish()),
            ];
            RecordBatch::try_new(encode_schema.clone(), columns).map_err(|e| e.to_string())
        })
        .record_bytes(|e| e.entity_id.len() + e.event_id.as_ref().map_or(0, String::len))
    }
}

/// The size of a value's JSON encoding, counted without allocating.
fn json_size<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => std::mem::size_of::<T>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array as _;

    fn record<T>(value: T) -> Record<T> {
        Record::new(value, 0)
    }

    #[test]
    fn count_events_have_the_canonical_columns() {
        let e = Encoder::count_events();
        let a = record(CountEvent {
            entity_id: "a".into(),
            count: 2,
            occurred_at_ms: 5,
            event_id: Some("e1".into()),
        });
        let b = record(CountEvent {
            entity_id: "bb".into(),
            count: 3,
            occurred_at_ms: 6,
            event_id: None,
        });
        let batch = e.encode(&[&a, &b]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), *e.schema());
        assert_eq!(batch.column(3).null_count(), 1);
        let record = std::mem::size_of::<Record<CountEvent>>();
        assert_eq!(e.bytes(&a.value), record + 1 + 2);
    }

    #[derive(Serialize, serde::Deserialize)]
    struct View {
        page: String,
        ms: i64,
        referrer: Option<String>,
    }

    #[test]
    fn serde_types_trace_their_schema() {
        let e = Encoder::<View>::serde().unwrap();
        let names: Vec<&str> = e
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["page", "ms", "referrer"]);
        assert!(e.schema().field(2).is_nullable());
        let v = record(View {
            page: "/a".into(),
            ms: 1,
            referrer: None,
        });
        let batch = e.encode(&[&v, &v]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            e.bytes(&v.value),
            std::mem::size_of::<Record<View>>() + r#"{"page":"/a","ms":1,"referrer":null}"#.len()
        );
    }

    #[test]
    fn a_schema_that_does_not_fit_is_an_error() {
        let fields = vec![Arc::new(Field::new("page", DataType::Int64, false))];
        let e = Encoder::<View>::serde_with_schema(fields);
        let v = record(View {
            page: "/a".into(),
            ms: 1,
            referrer: None,
        });
        assert!(e.encode(&[&v]).is_err());
    }
}
