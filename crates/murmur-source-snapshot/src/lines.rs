//! Streaming, decompressing line reading of one object.

use std::io;
use std::sync::Arc;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};
use tokio_util::io::StreamReader;

use crate::error::{Error, Result, pinned, read_error};
use crate::source::WorkUnit;

/// Buffer size of the decompressed line reader.
const BUFFER: usize = 256 * 1024;

/// The compression of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Plain text.
    None,
    /// gzip (`.gz`, `.gzip`, magic `1f 8b`), concatenated members allowed.
    Gzip,
    /// Zstandard (`.zst`, `.zstd`, magic `28 b5 2f fd`), multiple frames allowed.
    Zstd,
}

impl Compression {
    const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
    const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

    /// The compression a key's suffix claims, if any.
    pub(crate) fn from_suffix(key: &str) -> Option<Compression> {
        let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match ext.as_str() {
            "gz" | "gzip" => Some(Compression::Gzip),
            "zst" | "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression the first bytes of an object show.
    pub(crate) fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(Self::GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(Self::ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Decides the compression from the suffix and the magic bytes: a suffix
/// that the content contradicts is an error naming the object.
fn decide(object: &str, head: &[u8]) -> Result<Compression> {
    let magic = Compression::from_magic(head);
    match Compression::from_suffix(object) {
        Some(claimed) if claimed != magic => {
            let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
            Err(Error::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "named as {} but is not {} (first bytes: [{}])",
                    claimed.name(),
                    claimed.name(),
                    shown.join(" ")
                ),
            })
        }
        _ => Ok(magic),
    }
}

type Reader = Box<dyn AsyncBufRead + Send + Unpin>;

/// Bytes read from a local file per blocking read.
const FILE_READ: u64 = 1 << 20;

/// `range` of a local file as a stream of reads of up to [`FILE_READ`]
/// bytes, each on the blocking pool. (`GetResult::into_stream` reads 8 KiB
/// at a time, one blocking-pool round trip each: a scan of local JSON Lines
/// spent about a tenth of its time switching threads.)
fn file_stream(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    use std::io::{Read as _, Seek as _};
    let end = range.end;
    stream::try_unfold(
        (file, path, range.start),
        move |(mut file, path, at)| async move {
            if at >= end {
                return Ok(None);
            }
            tokio::task::spawn_blocking(move || {
                let mut buf = Vec::new();
                let read = file.seek(io::SeekFrom::Start(at)).and_then(|_| {
                    (&mut file)
                        .take(FILE_READ.min(end - at))
                        .read_to_end(&mut buf)
                });
                match read {
                    // Shorter than listed: the end, as for any stream.
                    Ok(0) => Ok(None),
                    Ok(n) => Ok(Some((Bytes::from(buf), (file, path, at + n as u64)))),
                    Err(e) => Err(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: format!("reading {}: {e}", path.display()).into(),
                    }),
                }
            })
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })?
        },
    )
    .boxed()
}

/// One line of an object.
pub(crate) enum Line<'a> {
    /// The line's bytes, without the line terminator (`\n` or `\r\n`).
    Text(&'a [u8]),
    /// The line was longer than the limit; its length in bytes.
    TooLong(u64),
}

/// Reads the lines of one object, decompressing as it streams; memory use is
/// bounded by the buffer and the maximum line length.
pub(crate) struct LineReader {
    object: Arc<str>,
    compression: Compression,
    reader: Reader,
    line: Vec<u8>,
    max_line_bytes: usize,
}

impl LineReader {
    /// Opens the object of `unit`, the version and size it was listed
    /// with, detecting its compression.
    pub(crate) async fn open(
        store: &Arc<dyn ObjectStore>,
        unit: &WorkUnit,
        max_line_bytes: usize,
    ) -> Result<Self> {
        let object = Arc::clone(&unit.key);
        let (listed_size, e_tag) = (unit.size, unit.e_tag.as_deref());
        let path = Path::parse(&*object).map_err(|e| Error::Read {
            object: object.to_string(),
            source: e.into(),
        })?;
        let got = store
            .get_opts(&path, pinned(e_tag, None))
            .await
            .map_err(|source| read_error(&object, e_tag, source))?;
        // Line positions count from the listed bytes: an object rewritten
        // since (a re-export, a truncation) would resume at the wrong line.
        if got.meta.size != listed_size {
            return Err(Error::Changed {
                object: object.to_string(),
                listed: listed_size,
                now: got.meta.size,
            });
        }
        let mut body = match got.payload {
            GetResultPayload::File(file, path) => file_stream(file, path, got.range),
            GetResultPayload::Stream(s) => s,
        };
        // Peek at the first bytes without consuming them.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0;
        while head_len < 4 {
            match body.next().await {
                Some(Ok(b)) => {
                    head_len += b.len();
                    head.push(b);
                }
                Some(Err(source)) => {
                    return Err(Error::Read {
                        object: object.to_string(),
                        source,
                    });
                }
                None => break,
            }
        }
        let first: Vec<u8> = head
            .iter()
            .flat_map(|b| b.iter().copied())
            .take(4)
            .collect();
        let compression = decide(&object, &first)?;
        let bytes = stream::iter(head.into_iter().map(Ok))
            .chain(body)
            .map_err(io::Error::other);
        let raw = StreamReader::new(bytes);
        let reader: Reader = match compression {
            Compression::None => Box::new(BufReader::with_capacity(BUFFER, raw)),
            Compression::Gzip => {
                let mut d = GzipDecoder::new(raw);
                d.multiple_members(true);
                Box::new(BufReader::with_capacity(BUFFER, d))
            }
            Compression::Zstd => {
                let mut d = ZstdDecoder::new(raw);
                d.multiple_members(true);
                Box::new(BufReader::with_capacity(BUFFER, d))
            }
        };
        Ok(LineReader {
            object,
            compression,
            reader,
            line: Vec::new(),
            max_line_bytes,
        })
    }

    /// Maps an I/O error of the decompressing reader to a read error (the
    /// store failed) or a corrupt-object error (the bytes are bad).
    fn error(&self, e: io::Error) -> Error {
        let object = self.object.to_string();
        if e.get_ref()
            .is_some_and(|inner| inner.is::<object_store::Error>())
        {
            let inner = e.into_inner().expect("checked above");
            let source = *inner
                .downcast::<object_store::Error>()
                .expect("checked above");
            return Error::Read { object, source };
        }
        let reason = match self.compression {
            Compression::None => format!("cannot read: {e}"),
            c => format!("corrupt or truncated {} stream: {e}", c.name()),
        };
        Error::Corrupt { object, reason }
    }

    /// The next line, `None` at the end of the object. With `keep == false`
    /// the line is only skipped (resume).
    pub(crate) async fn next_line(&mut self, keep: bool) -> Result<Option<Line<'_>>> {
        self.line.clear();
        let mut len: u64 = 0;
        let mut seen_any = false;
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(b) => b,
                Err(e) => return Err(self.error(e)),
            };
            if available.is_empty() {
                if !seen_any {
                    return Ok(None);
                }
                break;
            }
            seen_any = true;
            let (take, done) = match memchr::memchr(b'\n', available) {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            len += take as u64;
            if keep && len <= self.max_line_bytes as u64 {
                self.line.extend_from_slice(&available[..take]);
            }
            let consumed = if done { take + 1 } else { take };
            self.reader.consume(consumed);
            if done {
                break;
            }
        }
        let whole = keep && self.line.len() as u64 == len;
        if whole && self.line.last() == Some(&b'\r') {
            self.line.pop();
            len -= 1;
        }
        if len > self.max_line_bytes as u64 {
            return Ok(Some(Line::TooLong(len)));
        }
        Ok(Some(Line::Text(&self.line)))
    }

    /// Passes `f` the next lines, at most `max` (more than 0): every line
    /// that sits whole in the reader's buffer, in one pass and without
    /// copying, or else the one line [`next_line`](Self::next_line)
    /// assembles across refills. Returns how many lines were passed; 0 at
    /// the end of the object.
    pub(crate) async fn for_lines(&mut self, max: u64, mut f: impl FnMut(Line<'_>)) -> Result<u64> {
        let available = match self.reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => return Err(self.error(e)),
        };
        let (mut passed, mut consumed) = (0u64, 0usize);
        for end in memchr::memchr_iter(b'\n', available) {
            if passed == max {
                break;
            }
            // As `next_line`: the limit counts a `\r` before the `\n`.
            let raw = &available[consumed..end];
            f(if raw.len() > self.max_line_bytes {
                Line::TooLong(raw.len() as u64)
            } else {
                Line::Text(raw.strip_suffix(b"\r").unwrap_or(raw))
            });
            consumed = end + 1;
            passed += 1;
        }
        if passed > 0 {
            self.reader.consume(consumed);
            return Ok(passed);
        }
        Ok(match self.next_line(true).await? {
            Some(line) => {
                f(line);
                1
            }
            None => 0,
        })
    }

    /// Whether the object has no more bytes.
    pub(crate) async fn at_end(&mut self) -> Result<bool> {
        match self.reader.fill_buf().await {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(self.error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_and_magic() {
        assert_eq!(
            Compression::from_suffix("a/b.json.gz"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_suffix("a/b.json.ZST"),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_suffix("a/b.json"), None);
        assert_eq!(
            Compression::from_magic(&[0x1f, 0x8b, 8, 0]),
            Compression::Gzip
        );
        assert_eq!(Compression::from_magic(b"{\"a\""), Compression::None);
        assert!(decide("x.gz", b"{\"a\"").is_err());
        assert_eq!(
            decide("x.json", &[0x28, 0xb5, 0x2f, 0xfd]).unwrap(),
            Compression::Zstd
        );
        let err = decide("x.gz", b"").unwrap_err().to_string();
        assert_eq!(
            err,
            "object `x.gz`: named as gzip but is not gzip (first bytes: [])"
        );
    }
}
