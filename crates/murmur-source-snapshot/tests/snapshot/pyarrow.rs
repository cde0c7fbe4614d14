//! Data Murmur did not write: a Hive-partitioned Parquet and JSON Lines data
//! set written by pyarrow (Python, `MURMUR_PYTHON`), with `_SUCCESS` /
//! `_committed_*` markers, `.crc` side files, mixed codecs and mixed column
//! types — read from a local directory and from S3 (moto).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::*;
use murmur_core::CountEvent;
use murmur_source_snapshot::{
    CountEventColumns, CountEventLines, JsonLinesSource, ObjectListing, ParquetSource,
    SnapshotSource,
};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

/// Writes `<root>/parquet` and `<root>/json`; prints the ground truth as
/// JSON: `{"rows": n, "total": n, "per_day": {"1": [rows, total], ...}}`.
const WRITE_DATASET: &str = r#"
import datetime, gzip, json, os, random, sys
import pyarrow as pa, pyarrow.dataset as ds

root = sys.argv[1]
rng = random.Random(20260508)
truth = {"rows": 0, "total": 0, "per_day": {}}
codecs = ["snappy", "zstd", "gzip", "lz4", "none"]
base = datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone.utc)
i = 0
for day in (1, 2, 3):
    for hour in (0, 7, 13, 22):
        n = 600 + 37 * i
        t0 = int((base + datetime.timedelta(days=day - 1, hours=hour)).timestamp() * 1000)
        ents = ["user-%03d" % rng.randrange(40) for _ in range(n)]
        counts = [rng.randrange(1, 10) for _ in range(n)]
        ts = [t0 + rng.randrange(3_600_000) for _ in range(n)]
        d = truth["per_day"].setdefault(str(day), [0, 0])
        d[0] += n; d[1] += sum(counts)
        truth["rows"] += n; truth["total"] += sum(counts)

        # Parquet, Hive-partitioned as Spark lays it out (partition columns
        # in the path only). One partition uses a microsecond timestamp and
        # large strings instead of int64 milliseconds and strings.
        if i == 5:
            time_col = pa.array([t * 1000 for t in ts], pa.timestamp("us", tz="UTC"))
            ent_col = pa.array(ents, pa.large_string())
        else:
            time_col = pa.array(ts, pa.int64())
            ent_col = pa.array(ents, pa.string())
        table = pa.table({
            "entity_id": ent_col,
            "count": pa.array(counts, pa.int64()),
            "occurred_at_unix_ms": time_col,
            "year": pa.array([2026] * n, pa.int32()),
            "month": pa.array([5] * n, pa.int32()),
            "day": pa.array([day] * n, pa.int32()),
            "hour": pa.array([hour] * n, pa.int32()),
        })
        fmt = ds.ParquetFileFormat()
        codec = codecs[i % len(codecs)]
        ds.write_dataset(table, root + "/parquet", format=fmt,
            partitioning=["year", "month", "day", "hour"], partitioning_flavor="hive",
            file_options=fmt.make_write_options(compression=codec),
            basename_template="part-%05d-{i}.%s.parquet" % (i, codec),
            existing_data_behavior="overwrite_or_ignore",
            max_rows_per_group=256, min_rows_per_group=0, max_rows_per_file=100000)
        pdir = root + "/parquet/year=2026/month=5/day=%d/hour=%d" % (day, hour)
        open(pdir + "/_committed_%d" % i, "w").write("{}")
        open(pdir + "/.part-%05d-0.%s.parquet.crc" % (i, codec), "wb").write(b"crc")

        # JSON Lines: RFC 3339 with varied offsets and precision; codecs rotate.
        jdir = root + "/json/year=2026/month=05/day=%02d/hour=%02d" % (day, hour)
        os.makedirs(jdir)
        lines = []
        for e, c, t in zip(ents, counts, ts):
            dt = datetime.datetime.fromtimestamp(t / 1000, tz=datetime.timezone.utc)
            style = t % 3
            if style == 0:
                s = dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t % 1000)
            elif style == 1:
                s = dt.astimezone(datetime.timezone(datetime.timedelta(hours=2))).isoformat(timespec="microseconds")
            else:
                s = dt.astimezone(datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))).isoformat(timespec="milliseconds")
            lines.append(json.dumps({"entity_id": e, "count": c, "occurred_at": s,
                                     "year": 2026, "month": 5, "day": day, "hour": hour}))
        data = ("\n".join(lines) + "\n").encode()
        kind = i % 3
        if kind == 0:
            with gzip.open(jdir + "/part-00000.json.gz", "wb") as f:
                f.write(data)
        elif kind == 1:
            with pa.output_stream(jdir + "/part-00000.json.zst", compression="zstd") as f:
                f.write(data)
        else:
            open(jdir + "/part-00000.json", "wb").write(data)
        i += 1

for sub in ("parquet", "json"):
    open(root + "/" + sub + "/_SUCCESS", "w").close()
print(json.dumps(truth))
"#;

fn parse_truth(out: &str) -> (u64, i64, BTreeMap<u32, (u64, i64)>) {
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let per_day = v["per_day"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(d, x)| {
            (
                d.parse().unwrap(),
                (x[0].as_u64().unwrap(), x[1].as_i64().unwrap()),
            )
        })
        .collect();
    (
        v["rows"].as_u64().unwrap(),
        v["total"].as_i64().unwrap(),
        per_day,
    )
}

/// Reads both data sets from `store` and compares with the ground truth,
/// whole and pruned to day 2.
async fn check(store: Arc<dyn ObjectStore>, truth: &(u64, i64, BTreeMap<u32, (u64, i64)>)) {
    let (rows, total, per_day) = truth;
    for day_filter in [None, Some(2u32)] {
        let listing = |prefix: &str| {
            let l = ObjectListing::new(Arc::clone(&store), Path::from(prefix));
            match day_filter {
                Some(d) => l.partition_filter(move |p| p.get_i64("day") == Some(i64::from(d))),
                None => l,
            }
        };
        let parquet = ParquetSource::new(listing("parquet"), CountEventColumns);
        let json = JsonLinesSource::new(listing("json"), CountEventLines);
        let p_units = parquet.list_units().await.unwrap();
        let j_units = json.list_units().await.unwrap();
        let expected_units = if day_filter.is_some() { 4 } else { 12 };
        assert_eq!(
            p_units.len(),
            expected_units,
            "markers and .crc files are skipped"
        );
        assert_eq!(j_units.len(), expected_units);
        let p: Vec<CountEvent> = read_all(&parquet, &p_units, 3)
            .await
            .into_iter()
            .map(|r| r.value)
            .collect();
        let j: Vec<CountEvent> = read_all(&json, &j_units, 3)
            .await
            .into_iter()
            .map(|r| r.value)
            .collect();
        let (want_rows, want_total) = match day_filter {
            Some(d) => per_day[&d],
            None => (*rows, *total),
        };
        for (name, events) in [("parquet", &p), ("json", &j)] {
            let t = Truth::of_events(events.iter());
            assert_eq!(
                (t.rows, t.total),
                (want_rows, want_total),
                "{name} {day_filter:?}"
            );
            if day_filter.is_none() {
                let days: BTreeMap<u32, (u64, i64)> = t.per_day.clone();
                assert_eq!(&days, per_day, "{name}: per day (event times parsed right)");
            }
        }
        // Both formats carry the same events.
        let mut a = p.clone();
        let mut b = j.clone();
        a.sort_by(|x, y| {
            (x.occurred_at_ms, &x.entity_id, x.count).cmp(&(
                y.occurred_at_ms,
                &y.entity_id,
                y.count,
            ))
        });
        b.sort_by(|x, y| {
            (x.occurred_at_ms, &x.entity_id, x.count).cmp(&(
                y.occurred_at_ms,
                &y.entity_id,
                y.count,
            ))
        });
        assert_eq!(a, b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_dataset_from_local_directory_and_s3() {
    let Some(python) = python("the pyarrow data set test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run_python(&python, WRITE_DATASET, &[dir.path().to_str().unwrap()]);
    let truth = parse_truth(&out);
    assert_eq!(truth.0, (0..12).map(|i| 600 + 37 * i).sum::<u64>());

    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    check(local, &truth).await;

    let Some((s3, bucket)) = s3_store("the pyarrow data set test on S3") else {
        return;
    };
    upload_dir(&python, dir.path(), &bucket);
    check(s3, &truth).await;
}
