//! Which objects a snapshot consists of: prefix listing, key filter, Hive
//! partitions and the partition filter, and the handoff manifest.

use std::fmt;
use std::sync::Arc;

use futures::TryStreamExt as _;
use murmur_core::HandoffToken;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::error::{Error, Result};
use crate::source::{Partitions, WorkUnit};

/// Name of the handoff manifest object, directly under the listing prefix.
///
/// Its content is one [`HandoffToken`] as JSON, exactly as
/// [`HandoffToken::to_json`] writes it, for example
/// `{"kind":"kafka","topic":"events","offsets":{"0":42,"1":17}}` or
/// `{"kind":"event_time_cut","at_ms":1778248800000}`. The job that writes
/// the snapshot (Spark) writes it last, beside its `_SUCCESS` marker. It is
/// never read as data (the default key filter skips `_`-files).
pub const HANDOFF_MANIFEST: &str = "_murmur_handoff.json";

type KeyFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;
type PartitionFilter = Arc<dyn Fn(&Partitions) -> bool + Send + Sync>;

/// The default key filter: keeps every object except markers and hidden
/// files — any path segment (below the prefix) starting with `_` or `.`
/// (`_SUCCESS`, `_committed_*`, `_temporary/`, `.spark-staging/`,
/// `_murmur_handoff.json`), names ending in `.crc`, and directory markers
/// (keys ending in `/`).
///
/// `key` is relative to the listing prefix.
pub fn default_key_filter(key: &str) -> bool {
    !key.ends_with('/')
        && !key.ends_with(".crc")
        && key
            .split('/')
            .all(|segment| !segment.starts_with('_') && !segment.starts_with('.'))
}

/// Hive `column=value` partition values from the directory segments of a key
/// (the file name is not a partition). Values are percent-decoded, as Hive
/// and Spark escape special characters (`%3A` for `:`).
pub fn hive_partitions(key: &str) -> Partitions {
    let mut partitions = Partitions::default();
    let dirs = key.rsplit_once('/').map_or("", |(dirs, _file)| dirs);
    for segment in dirs.split('/') {
        if let Some((column, value)) = segment.split_once('=')
            && !column.is_empty()
        {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            partitions.insert(column.to_string(), value.into_owned());
        }
    }
    partitions
}

/// The objects of a snapshot: every object under a prefix of an
/// [`ObjectStore`] (local directory, S3, memory) that passes the key filter
/// and the partition filter, in lexicographic key order.
///
/// ```
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, path::Path, ObjectStoreExt as _};
/// use murmur_source_snapshot::ObjectListing;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Arc::new(InMemory::new());
/// for key in ["events/day=01/a.json", "events/day=02/a.json", "events/day=02/_SUCCESS"] {
///     store.put(&Path::from(key), "{}\n".into()).await.unwrap();
/// }
/// let listing = ObjectListing::new(store, Path::from("events"))
///     .partition_filter(|p| p.get_i64("day") == Some(2));
/// let units = listing.list().await.unwrap();
/// assert_eq!(units.len(), 1);
/// assert_eq!(&*units[0].key, "events/day=02/a.json");
/// assert_eq!(units[0].partitions.get("day"), Some("02"));
/// # });
/// ```
#[derive(Clone)]
pub struct ObjectListing {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    key_filter: KeyFilter,
    partition_filter: Option<PartitionFilter>,
    handoff: Option<HandoffToken>,
}

impl fmt::Debug for ObjectListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectListing")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("partition_filter", &self.partition_filter.is_some())
            .field("handoff", &self.handoff)
            .finish_non_exhaustive()
    }
}

impl ObjectListing {
    /// All objects under `prefix` (a directory-like prefix: `events` matches
    /// `events/...`, not `events2/...`), with the [`default_key_filter`].
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        ObjectListing {
            store,
            prefix,
            key_filter: Arc::new(default_key_filter),
            partition_filter: None,
            handoff: None,
        }
    }

    /// A listing of `uri`: `s3://bucket/prefix` (credentials and region from
    /// the standard AWS environment; `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL` point it at a stand-in such as moto or
    /// LocalStack), `file:///dir` or a plain local directory.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let config = |reason: String| Error::Config { reason };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(config(format!("{uri}: no bucket")));
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) =
                std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            {
                builder = builder
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint);
            }
            let store = builder
                .build()
                .map_err(|e| config(format!("cannot open {uri}: {e}")))?;
            return Ok(Self::new(Arc::new(store), Path::from(prefix)));
        }
        let dir = uri.strip_prefix("file://").unwrap_or(uri);
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| config(format!("cannot open directory {dir}: {e}")))?;
        Ok(Self::new(Arc::new(store), Path::from("")))
    }

    /// Replaces the key filter; it gets the key relative to the prefix.
    pub fn key_filter(mut self, keep: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.key_filter = Arc::new(keep);
        self
    }

    /// Keeps only objects whose Hive partitions pass `keep`. Evaluated on
    /// the listing, so pruned objects are never opened.
    pub fn partition_filter(
        mut self,
        keep: impl Fn(&Partitions) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.partition_filter = Some(Arc::new(keep));
        self
    }

    /// Uses `token` as the handoff instead of reading the
    /// [`HANDOFF_MANIFEST`].
    pub fn with_handoff(mut self, token: HandoffToken) -> Self {
        self.handoff = Some(token);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Lists the units: filtered, sorted by key, numbered from 0.
    pub async fn list(&self) -> Result<Vec<WorkUnit>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|source| Error::List {
                prefix: self.prefix.to_string(),
                source,
            })?;
        let mut kept: Vec<(String, u64, Partitions, Option<String>)> = Vec::new();
        for meta in metas {
            let key = meta.location.to_string();
            let relative = if self.prefix.as_ref().is_empty() {
                key.as_str()
            } else {
                key.strip_prefix(self.prefix.as_ref())
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(&key)
            };
            if !(self.key_filter)(relative) {
                continue;
            }
            let partitions = hive_partitions(relative);
            if let Some(filter) = &self.partition_filter
                && !filter(&partitions)
            {
                continue;
            }
            kept.push((key, meta.size, partitions, meta.e_tag));
        }
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(kept
            .into_iter()
            .enumerate()
            .map(|(index, (key, size, partitions, e_tag))| WorkUnit {
                index: index as u64,
                key: key.into(),
                size,
                partitions,
                e_tag: e_tag.map(Arc::from),
            })
            .collect())
    }

    /// The handoff token: the explicit one if set, else the
    /// [`HANDOFF_MANIFEST`] under the prefix if it exists, else `None`.
    pub async fn handoff(&self) -> Result<Option<HandoffToken>> {
        if let Some(token) = &self.handoff {
            return Ok(Some(token.clone()));
        }
        let path = self.prefix.clone().join(HANDOFF_MANIFEST);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(Error::Read {
                    object: path.to_string(),
                    source,
                });
            }
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::Manifest {
            object: path.to_string(),
            reason: format!("not UTF-8: {e}"),
        })?;
        HandoffToken::from_json(text)
            .map(Some)
            .map_err(|e| Error::Manifest {
                object: path.to_string(),
                reason: format!("not a handoff token: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_filter_skips_markers_and_hidden_files() {
        for skipped in [
            "_SUCCESS",
            "year=2026/_committed_123",
            "year=2026/.part-0.parquet.crc",
            "year=2026/part-0.parquet.crc",
            "_temporary/0/part-0.parquet",
            ".spark-staging/x.json",
            "_murmur_handoff.json",
            "year=2026/",
        ] {
            assert!(!default_key_filter(skipped), "{skipped}");
        }
        for kept in [
            "part-0.parquet",
            "year=2026/month=05/part-00000-abc.snappy.parquet",
            "a/b.json.gz",
        ] {
            assert!(default_key_filter(kept), "{kept}");
        }
    }

    #[test]
    fn hive_partitions_from_directories_only() {
        let p = hive_partitions("year=2026/month=05/day=08/hour=14/part-00000.parquet");
        assert_eq!(p.get("year"), Some("2026"));
        assert_eq!(p.get("month"), Some("05"));
        assert_eq!(p.get_i64("month"), Some(5));
        assert_eq!(p.get_i64("hour"), Some(14));
        assert_eq!(p.iter().count(), 4);
        assert!(hive_partitions("x=1.parquet").is_empty());
        let escaped = hive_partitions("ts=2026-05-08 14%3A00/f");
        assert_eq!(escaped.get("ts"), Some("2026-05-08 14:00"));
    }
}
