//! Writing one object: streamed, create-only, and verified when it already
//! exists.
//!
//! Bytes are hashed (SHA-256) as they are produced. An object that stays
//! under the part size is written with one create-only `PUT`
//! (`If-None-Match: *` on S3); a larger one checks that the key is free and
//! then streams a multipart upload, so only one part is ever held. When the
//! key is taken (a retried batch, a restart after a crash between the write
//! and the checkpoint), the existing object is read back and hashed: the
//! same bytes count as done, other bytes are [`Error::Conflict`]. Batch
//! contents and their encoding are deterministic, so a retry writes the
//! same bytes and never a second copy.

use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::TryStreamExt as _;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, WriteMultipart};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use sha2::{Digest as _, Sha256};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How objects are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Objects up to this size are one `PUT`; larger ones a multipart
    /// upload of parts this size (S3's minimum is 5 MiB). Default 8 MiB.
    pub part_size: usize,
    /// Parts of one object uploaded at once. Default 4.
    pub part_concurrency: usize,
    /// Attempts at writing one object (and at each checkpoint update)
    /// before the batch fails. Default 5.
    pub attempts: u32,
    /// Backoff before the second attempt, doubled after each. Default 200 ms.
    pub backoff: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 << 20,
            part_concurrency: 4,
            attempts: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

/// What writing an object did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// The object's size.
    pub bytes: u64,
    /// It already existed with the same content (nothing was uploaded).
    pub existed: bool,
}

enum State {
    Buffering(Vec<u8>),
    Multipart(WriteMultipart),
    /// The key was taken when the first part was due: only hash the rest.
    Exists,
}

/// A streaming, create-only writer of one object.
pub(crate) struct ObjectSink {
    store: Arc<dyn ObjectStore>,
    key: Path,
    options: UploadOptions,
    state: State,
    hasher: Sha256,
    size: u64,
}

impl ObjectSink {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, key: Path, options: UploadOptions) -> Self {
        ObjectSink {
            store,
            key,
            options,
            state: State::Buffering(Vec::new()),
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Appends bytes to the object.
    pub(crate) async fn push(&mut self, bytes: Bytes) -> Result<()> {
        self.hasher.update(&bytes);
        self.size += bytes.len() as u64;
        match &mut self.state {
            State::Buffering(buf) => {
                buf.extend_from_slice(&bytes);
                if buf.len() >= self.options.part_size {
                    let buf = std::mem::take(buf);
                    self.start_multipart(buf).await?;
                }
            }
            State::Multipart(upload) => {
                upload
                    .wait_for_capacity(self.options.part_concurrency)
                    .await
                    .map_err(|e| Error::object(&self.key, e))?;
                upload.put(bytes);
            }
            State::Exists => {}
        }
        Ok(())
    }

    async fn start_multipart(&mut self, first: Vec<u8>) -> Result<()> {
        match self.store.head(&self.key).await {
            Ok(_) => {
                self.state = State::Exists;
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => {
                let upload = self
                    .store
                    .put_multipart(&self.key)
                    .await
                    .map_err(|e| Error::object(&self.key, e))?;
                let mut upload =
                    WriteMultipart::new_with_chunk_size(upload, self.options.part_size);
                upload.put(first.into());
                self.state = State::Multipart(upload);
                Ok(())
            }
            Err(e) => Err(Error::object(&self.key, e)),
        }
    }

    /// Completes the object: the one create-only `PUT`, or the multipart
    /// upload's completion, or the check of an existing object.
    pub(crate) async fn finish(self) -> Result<Written> {
        let ours = hex(&self.hasher.finalize());
        let written = Written {
            bytes: self.size,
            existed: false,
        };
        match self.state {
            State::Buffering(buf) => {
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match self.store.put_opts(&self.key, buf.into(), options).await {
                    Ok(_) => Ok(written),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => verify(&*self.store, &self.key, &ours, self.size).await,
                    Err(e) => Err(Error::object(&self.key, e)),
                }
            }
            State::Multipart(upload) => {
                upload
                    .finish()
                    .await
                    .map_err(|e| Error::object(&self.key, e))?;
                Ok(written)
            }
            State::Exists => verify(&*self.store, &self.key, &ours, self.size).await,
        }
    }
}

/// The key is taken: the same bytes count as written, others conflict.
async fn verify(store: &dyn ObjectStore, key: &Path, ours: &str, size: u64) -> Result<Written> {
    let mut hasher = Sha256::new();
    let mut stream = store
        .get(key)
        .await
        .map_err(|e| Error::object(key, e))?
        .into_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| Error::object(key, e))? {
        hasher.update(&chunk);
    }
    let existing = hex(&hasher.finalize());
    if existing == ours {
        tracing::info!(key = %key, "object already written by an earlier attempt");
        Ok(Written {
            bytes: size,
            existed: true,
        })
    } else {
        Err(Error::Conflict {
            key: key.to_string(),
            existing,
            ours: ours.to_owned(),
        })
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One Parquet object written through an [`ObjectSink`]: the Parquet
/// writer hands over each row group as it completes, so one row group and
/// one upload part are in memory.
pub(crate) struct ParquetObject {
    writer: AsyncArrowWriter<ParquetSink>,
    outcome: Outcome,
    key: String,
}

impl ParquetObject {
    pub(crate) fn new(
        sink: ObjectSink,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self> {
        let key = sink.key.to_string();
        let outcome = Outcome::default();
        let sink = ParquetSink {
            sink: Some(sink),
            outcome: outcome.clone(),
        };
        let writer = AsyncArrowWriter::try_new(sink, schema, Some(properties))
            .map_err(|e| encode_error(&key, e))?;
        Ok(ParquetObject {
            writer,
            outcome,
            key,
        })
    }

    /// Appends rows.
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let written = self.writer.write(batch).await;
        written.map_err(|e| self.outcome.error(&self.key, e))
    }

    /// Writes the footer and completes the object.
    pub(crate) async fn close(self) -> Result<Written> {
        let ParquetObject {
            writer,
            outcome,
            key,
        } = self;
        writer.close().await.map_err(|e| outcome.error(&key, e))?;
        let done = outcome.0.lock().expect("outcome lock").take();
        done.unwrap_or_else(|| Err(encode_error(&key, "the writer did not complete the object")))
    }
}

pub(crate) fn encode_error(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Encode {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// The sink's own result: its error when a write failed because of it (the
/// Parquet writer only passes a string on), then what `complete` did.
#[derive(Clone, Default)]
struct Outcome(Arc<Mutex<Option<Result<Written>>>>);

impl Outcome {
    /// The error behind a failed writer call: the sink's, or the encoder's.
    fn error(&self, key: &str, e: parquet::errors::ParquetError) -> Error {
        match self.0.lock().expect("outcome lock").take() {
            Some(Err(sink_error)) => sink_error,
            _ => encode_error(key, e),
        }
    }

    fn set(&self, result: Result<Written>) {
        *self.0.lock().expect("outcome lock") = Some(result);
    }
}

/// An [`ObjectSink`] as the Parquet writer's output.
struct ParquetSink {
    sink: Option<ObjectSink>,
    outcome: Outcome,
}

impl ParquetSink {
    fn fail(&self, e: Error) -> parquet::errors::ParquetError {
        let message = e.to_string();
        self.outcome.set(Err(e));
        parquet::errors::ParquetError::General(message)
    }
}

impl parquet::arrow::async_writer::AsyncFileWriter for ParquetSink {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            let Some(sink) = self.sink.as_mut() else {
                return Err(parquet::errors::ParquetError::General(
                    "write after complete".into(),
                ));
            };
            let pushed = sink.push(bs).await;
            pushed.map_err(|e| self.fail(e))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            let Some(sink) = self.sink.take() else {
                return Ok(());
            };
            match sink.finish().await {
                Ok(w) => {
                    self.outcome.set(Ok(w));
                    Ok(())
                }
                Err(e) => Err(self.fail(e)),
            }
        })
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `options.attempts`
/// are spent, with doubling backoff.
pub(crate) async fn retry<T, F, Fut>(
    options: &UploadOptions,
    what: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = options.backoff;
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && n < options.attempts => {
                tracing::warn!(what, attempt = n, error = %e, "retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn write(store: &Arc<dyn ObjectStore>, key: &str, data: &[u8]) -> Result<Written> {
        let options = UploadOptions {
            part_size: 5 << 20,
            ..UploadOptions::default()
        };
        let mut sink = ObjectSink::new(store.clone(), Path::from(key), options);
        // Pushed in 1 MiB pieces, as a Parquet writer hands over row groups.
        for piece in data.chunks(1 << 20) {
            sink.push(Bytes::copy_from_slice(piece)).await?;
        }
        sink.finish().await
    }

    #[tokio::test]
    async fn small_and_multipart_objects_are_written_once_and_verified_after() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let small = vec![7u8; 1000];
        let large: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        for (key, data) in [("s", &small), ("l", &large)] {
            let first = write(&store, key, data).await.unwrap();
            assert_eq!(
                first,
                Written {
                    bytes: data.len() as u64,
                    existed: false
                }
            );
            let stored = store
                .get(&Path::from(key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(stored.as_ref(), data.as_slice(), "{key}");
            // A retry of the same batch: nothing uploaded, counted as done.
            let again = write(&store, key, data).await.unwrap();
            assert_eq!(
                again,
                Written {
                    bytes: data.len() as u64,
                    existed: true
                }
            );
            // Other bytes at the same key: refused, nothing overwritten.
            let mut other = data.clone();
            other[0] ^= 1;
            let err = write(&store, key, &other).await.unwrap_err();
            assert!(matches!(err, Error::Conflict { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("object `{key}` already exists"))
            );
            let stored = store
                .get(&Path::from(key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(stored.as_ref(), data.as_slice());
        }
    }
}
