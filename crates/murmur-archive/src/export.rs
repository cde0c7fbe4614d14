//! Export of a DynamoDB table to object storage: a parallel scan with a
//! read-capacity limit into gzipped JSON Lines or Parquet files, with a
//! manifest.

use crate::encode::Encoder;
use crate::error::{Error, Result};
use crate::object::{ObjectSink, ParquetObject, UploadOptions, encode_error};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use murmur_core::{Position, Record};
use murmur_source_snapshot::SnapshotSource as _;
use murmur_source_snapshot::dynamodb::{DynamoDbScanOptions, DynamoDbScanSource, StreamsHandoff};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::sync::Arc;

/// The manifest's object name, beside the files.
pub const MANIFEST: &str = "_manifest.json";

/// The files an export writes.
#[non_exhaustive]
pub enum ExportFormat<T> {
    /// One JSON object per line, gzipped (`.jsonl.gz`), `T` serialized
    /// with serde (with `serde_json::Value`, every attribute as plain
    /// JSON: numbers, strings, lists, maps; binary as byte lists).
    JsonLinesGzip,
    /// Parquet (`.parquet`, Snappy) with the encoder's schema.
    Parquet(Encoder<T>),
}

impl<T> ExportFormat<T> {
    /// The files' suffix, also the manifest's `format`.
    fn extension(&self) -> &'static str {
        match self {
            ExportFormat::JsonLinesGzip => "jsonl.gz",
            ExportFormat::Parquet(_) => "parquet",
        }
    }
}

impl<T> std::fmt::Debug for ExportFormat<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExportFormat::JsonLinesGzip => "JsonLinesGzip",
            ExportFormat::Parquet(_) => "Parquet",
        })
    }
}

/// What and how to export.
#[derive(Debug)]
#[non_exhaustive]
pub struct ExportOptions<T> {
    /// The scan: table, segments, page size, read-capacity limit, filter,
    /// projection.
    pub scan: DynamoDbScanOptions,
    /// The files.
    pub format: ExportFormat<T>,
    /// A segment's items are split into files of at most this many.
    /// Default 1,000,000.
    pub max_items_per_file: u64,
    /// Uploads.
    pub upload: UploadOptions,
}

impl<T> ExportOptions<T> {
    /// Exports with the scan's settings, 1,000,000 items per file.
    pub fn new(scan: DynamoDbScanOptions, format: ExportFormat<T>) -> Self {
        ExportOptions {
            scan,
            format,
            max_items_per_file: 1_000_000,
            upload: UploadOptions::default(),
        }
    }
}

/// One file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// The object key.
    pub key: String,
    /// The scan segment it holds items of.
    pub segment: u32,
    /// Items in it.
    pub items: u64,
    /// Its size.
    pub bytes: u64,
}

/// The manifest written last, as `_manifest.json` beside the files (then
/// an empty `_SUCCESS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExportManifest {
    /// The table.
    pub table: String,
    /// `jsonl.gz` or `parquet`.
    pub format: String,
    /// Scan segments (`TotalSegments`).
    pub segments: u32,
    /// Items written, all files together.
    pub items: u64,
    /// When the export started (RFC 3339, UTC) ...
    pub started_at: String,
    /// ... and when the scan finished.
    pub finished_at: String,
    /// Read capacity units the scan consumed.
    pub consumed_read_capacity: f64,
    /// Where each DynamoDB Streams shard stood *before* the scan: a live
    /// stage reading the stream from here sees every change the scan may
    /// have missed. `None` when the table has no stream.
    pub streams_handoff: Option<StreamsHandoff>,
    /// The files, by segment and order.
    pub files: Vec<ExportedFile>,
}

/// Exports a DynamoDB table under `prefix` of `store`.
///
/// The prefix must be empty (an export never mixes with older files). The
/// DynamoDB Streams position is captured first when `streams` is given
/// and the table has a stream; then every segment is scanned (all at once,
/// sharing the read-capacity limit) and streamed into
/// `part-<segment>-<n>.jsonl.gz` / `.parquet` files (one compressed page
/// or one row group in memory per segment); then the manifest and
/// `_SUCCESS` are written. Items that do not decode into `T` fail the
/// export, naming the segment and item.
pub async fn export_dynamodb<T>(
    client: aws_sdk_dynamodb::Client,
    streams: Option<&aws_sdk_dynamodbstreams::Client>,
    store: Arc<dyn ObjectStore>,
    prefix: &Path,
    options: ExportOptions<T>,
) -> Result<ExportManifest>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let table = options.scan.table.clone();
    let scan_error = |e: murmur_source_snapshot::Error| Error::Scan {
        table: table.clone(),
        source: Box::new(e),
    };
    if let Some(existing) = store.list(Some(prefix)).next().await {
        let key = existing.map_or_else(|e| e.to_string(), |m| m.location.to_string());
        return Err(Error::Config {
            reason: format!(
                "the export prefix `{prefix}` is not empty (it holds `{key}`): export into a new prefix"
            ),
        });
    }
    let started_at = chrono::Utc::now();
    let segments = options.scan.segments;
    let source =
        DynamoDbScanSource::<T>::new(client.clone(), options.scan, |_| 0).map_err(scan_error)?;
    let streams_handoff = match streams {
        Some(streams) if has_stream(&client, &table).await? => Some(
            source
                .capture_streams_handoff(streams)
                .await
                .map_err(scan_error)?,
        ),
        _ => None,
    };
    let units = source.list_units().await.map_err(scan_error)?;
    let format = Arc::new(options.format);
    let upload = options.upload;
    let per_file = options.max_items_per_file.max(1);
    let tasks = units.into_iter().enumerate().map(|(segment, unit)| {
        let source = source.clone();
        let store = store.clone();
        let prefix = prefix.clone();
        let format = format.clone();
        let segment = u32::try_from(segment).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            let chunks = source.read(&unit, &Position::Beginning);
            export_segment(chunks, segment, store, prefix, format, per_file, upload).await
        })
    });
    let mut files = Vec::new();
    for result in futures::future::join_all(tasks).await {
        let segment_files = result.map_err(|e| Error::Config {
            reason: format!("a segment task failed: {e}"),
        })?;
        files.extend(segment_files.map_err(|e| match e {
            SegmentError::Scan(e) => scan_error(e),
            SegmentError::Write(e) => e,
        })?);
    }
    files.sort_by(|a, b| a.key.cmp(&b.key));
    let manifest = ExportManifest {
        table,
        format: format.extension().to_owned(),
        segments,
        items: files.iter().map(|f| f.items).sum(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        consumed_read_capacity: source.consumed_read_capacity(),
        streams_handoff,
        files,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Config {
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    for (name, body) in [(MANIFEST, body), ("_SUCCESS", Vec::new())] {
        let key = prefix.clone().join(name);
        store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(|e| Error::object(&key, e))?;
    }
    Ok(manifest)
}

async fn has_stream(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<bool> {
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| Error::DynamoDb {
            table: table.to_owned(),
            operation: "DescribeTable",
            source: Box::new(aws_sdk_dynamodb::Error::from(e)),
        })?;
    Ok(out
        .table()
        .and_then(|t| t.stream_specification())
        .is_some_and(|s| s.stream_enabled()))
}

enum SegmentError {
    Scan(murmur_source_snapshot::Error),
    Write(Error),
}

impl From<Error> for SegmentError {
    fn from(e: Error) -> Self {
        SegmentError::Write(e)
    }
}

/// One open output file.
enum FileWriter<'a, T> {
    Gzip {
        gz: Box<flate2::write::GzEncoder<Vec<u8>>>,
        sink: Box<ObjectSink>,
    },
    Parquet {
        object: Box<ParquetObject>,
        encoder: &'a Encoder<T>,
    },
}

async fn export_segment<T: Serialize + Send + Sync + 'static>(
    mut chunks: murmur_source_snapshot::ChunkStream<T>,
    segment: u32,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    format: Arc<ExportFormat<T>>,
    per_file: u64,
    upload: UploadOptions,
) -> std::result::Result<Vec<ExportedFile>, SegmentError> {
    let mut files = Vec::new();
    let mut open: Option<(FileWriter<'_, T>, ExportedFile)> = None;
    while let Some(chunk) = chunks.try_next().await.map_err(SegmentError::Scan)? {
        let mut records = chunk.records.as_slice();
        while !records.is_empty() {
            if open.is_none() {
                let key = prefix.clone().join(format!(
                    "part-{segment:05}-{:05}.{}",
                    files.len(),
                    format.extension()
                ));
                let sink = ObjectSink::new(store.clone(), key.clone(), upload);
                let writer = match &*format {
                    ExportFormat::JsonLinesGzip => FileWriter::Gzip {
                        gz: Box::new(flate2::write::GzEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        )),
                        sink: Box::new(sink),
                    },
                    ExportFormat::Parquet(encoder) => {
                        let properties = WriterProperties::builder()
                            .set_compression(Compression::SNAPPY)
                            .build();
                        FileWriter::Parquet {
                            object: Box::new(ParquetObject::new(
                                sink,
                                encoder.schema().clone(),
                                properties,
                            )?),
                            encoder,
                        }
                    }
                };
                let file = ExportedFile {
                    key: key.to_string(),
                    segment,
                    items: 0,
                    bytes: 0,
                };
                open = Some((writer, file));
            }
            let (writer, file) = open.as_mut().expect("opened above");
            let room = usize::try_from(per_file - file.items).unwrap_or(usize::MAX);
            let (now, rest) = records.split_at(room.min(records.len()));
            records = rest;
            write_records(writer, &file.key, now).await?;
            file.items += now.len() as u64;
            if file.items >= per_file {
                let (writer, file) = open.take().expect("open");
                files.push(close(writer, file).await?);
            }
        }
    }
    if let Some((writer, file)) = open.take() {
        files.push(close(writer, file).await?);
    }
    Ok(files)
}

async fn write_records<T: Serialize>(
    writer: &mut FileWriter<'_, T>,
    key: &str,
    records: &[Record<T>],
) -> Result<()> {
    match writer {
        FileWriter::Gzip { gz, sink } => {
            for r in records {
                serde_json::to_writer(&mut *gz, &r.value).map_err(|e| encode_error(key, e))?;
                gz.write_all(b"\n").map_err(|e| encode_error(key, e))?;
            }
            // Hand the compressed bytes so far to the upload: memory stays
            // at about one page.
            let compressed = std::mem::take(gz.get_mut());
            if !compressed.is_empty() {
                sink.push(Bytes::from(compressed)).await?;
            }
        }
        FileWriter::Parquet { object, encoder } => {
            let refs: Vec<&Record<T>> = records.iter().collect();
            let batch = encoder.encode(&refs).map_err(|e| encode_error(key, e))?;
            object.write(&batch).await?;
        }
    }
    Ok(())
}

async fn close<T>(writer: FileWriter<'_, T>, mut file: ExportedFile) -> Result<ExportedFile> {
    let written = match writer {
        FileWriter::Gzip { gz, mut sink } => {
            let rest = (*gz).finish().map_err(|e| encode_error(&file.key, e))?;
            sink.push(Bytes::from(rest)).await?;
            sink.finish().await?
        }
        FileWriter::Parquet { object, .. } => object.close().await?,
    };
    file.bytes = written.bytes;
    Ok(file)
}
