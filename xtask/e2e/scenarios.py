"""The scenarios of `cargo xtask e2e`: the whole system against real services.

`cargo xtask e2e` installs and starts the services, builds `murmur-worker`
and runs this script with the moto venv's Python (boto3, pyarrow and
confluent-kafka). Each scenario generates its events here, writes the
history the way the upstream job would (Spark-shaped Hive-partitioned Parquet
or gzipped JSON Lines on S3, or items in a DynamoDB table), produces the live
events over the network (Kafka over TCP, Kinesis) while the worker runs, and
then compares the worker's stored values, read back through its query
endpoint, with a ground truth computed here from the generated events --
never by Murmur code.

Each scenario prints one line, `PASS <name>: <numbers>` or
`FAIL <name>: <what differed>`; the exit status is 1 if any failed.

Environment (set by xtask): MURMUR_WORKER (the worker binary),
AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KINESIS, KAFKA_BROKERS, and the AWS
credentials and region.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gzip
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

HOUR_MS = 3_600_000
KAFKA_PARTITIONS = 3
KINESIS_SHARDS = 3


class Mismatch(Exception):
    """A compared number differed, or a step the scenario depends on failed."""


# --------------------------------------------------------------------------
# Processes: every child is killed when the driver exits, however it exits.

CHILDREN: list[subprocess.Popen] = []


def kill_children() -> None:
    for child in CHILDREN:
        if child.poll() is None:
            child.kill()
            child.wait()


def on_signal(signum, _frame) -> None:
    kill_children()
    sys.exit(128 + signum)


atexit.register(kill_children)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(["--- " + str(path)] + text[-lines:] + ["---"])


@dataclass
class Worker:
    """One `murmur-worker` process; its stderr goes to `log`."""

    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    stdout: str = ""

    def start(self) -> "Worker":
        err = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [os.environ["MURMUR_WORKER"], *self.args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "MURMUR_LOG": "info"},
        )
        err.close()
        CHILDREN.append(self.proc)
        return self

    def wait(self, timeout: float) -> dict:
        """Waits for a clean exit and returns the run's JSON summary."""
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Mismatch(f"the worker did not finish within {timeout:.0f} s\n{log_tail(self.log)}")
        self.stdout = out.decode(errors="replace")
        if self.proc.returncode != 0:
            raise Mismatch(f"the worker exited with {self.proc.returncode}\n{log_tail(self.log)}")
        lines = [l for l in self.stdout.splitlines() if l.startswith("{")]
        if not lines:
            raise Mismatch(f"the worker printed no summary\n{log_tail(self.log)}")
        return json.loads(lines[-1])

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class QueryEndpoint:
    """`murmur-worker serve` over the scenario's DynamoDB tables."""

    def __init__(self, pipeline: str, log: Path) -> None:
        self.pipeline = pipeline
        self.port = free_port()
        self.worker = Worker(
            ["serve", "--store", "dynamodb", "--pipeline", pipeline, "--progress", "never",
             "--listen", f"127.0.0.1:{self.port}"],
            log,
        ).start()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.worker.proc.poll() is not None:
                    raise Mismatch(f"the query endpoint did not come up\n{log_tail(log)}")
                time.sleep(0.2)

    def ask(self, op: str, body: dict) -> dict[str, int]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/pipelines/{self.pipeline}/{op}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as e:
            raise Mismatch(f"{op} answered {e.code}: {e.read().decode(errors='replace')}")
        return {r["entity"]: r["value"] for r in answer["results"]}

    def close(self) -> None:
        if self.worker.proc and self.worker.proc.poll() is None:
            self.worker.proc.terminate()
            self.worker.proc.wait(timeout=10)


# --------------------------------------------------------------------------
# Events and the independent ground truth.


@dataclass
class Event:
    event_id: str
    entity_id: str
    count: int
    occurred_at_ms: int

    def json(self) -> bytes:
        return json.dumps(
            {
                "event_id": self.event_id,
                "entity_id": self.entity_id,
                "count": self.count,
                "occurred_at_unix_ms": self.occurred_at_ms,
            }
        ).encode()


def make_events(rng: random.Random, n: int, start_ms: int, end_ms: int, entities: int) -> list[Event]:
    """`n` events in `[start_ms, end_ms)`; entity popularity is skewed (Zipf-like)."""
    names = [f"page-{i:04d}" for i in range(entities)]
    weights = [1.0 / (i + 1) for i in range(entities)]
    picks = rng.choices(names, weights=weights, k=n)
    return [
        Event(str(uuid.UUID(int=rng.getrandbits(128))), entity, rng.randint(1, 5),
              rng.randrange(start_ms, end_ms))
        for entity in picks
    ]


class Truth:
    """Per entity and UTC hour, the sum of `count` of every event, once."""

    def __init__(self, events: list[Event]) -> None:
        ids = set()
        self.cells: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for e in events:
            if e.event_id in ids:
                raise AssertionError(f"ground truth got event {e.event_id} twice")
            ids.add(e.event_id)
            self.cells[e.entity_id][e.occurred_at_ms // HOUR_MS] += e.count
        self.events = len(events)
        self.total = sum(e.count for e in events)
        self.first = min(e.occurred_at_ms for e in events)
        self.last = max(e.occurred_at_ms for e in events)

    def entities(self) -> list[str]:
        return sorted(self.cells)

    def range(self, entity: str, from_ms: int, to_ms: int) -> int:
        lo, hi = from_ms // HOUR_MS, to_ms // HOUR_MS
        return sum(v for h, v in self.cells[entity].items() if lo <= h <= hi)

    def window(self, entity: str, last: int, now_ms: int) -> int:
        hi = now_ms // HOUR_MS
        return sum(v for h, v in self.cells[entity].items() if hi - last < h <= hi)

    def get(self, entity: str, at_ms: int) -> int:
        return self.cells[entity].get(at_ms // HOUR_MS, 0)


def differing_hours(endpoint: QueryEndpoint, truth: Truth, entity: str) -> str:
    """Hour by hour, where the stored buckets of `entity` differ (diagnostics)."""
    diffs = []
    for hour in range(truth.first // HOUR_MS, truth.last // HOUR_MS + 1):
        at = hour * HOUR_MS
        stored = endpoint.ask("get_many", {"at": at, "entities": [entity]}).get(entity)
        want = truth.get(entity, at)
        if stored != want:
            iso = dt.datetime.fromtimestamp(hour * 3600, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H")
            diffs.append(f"{iso}: stored {stored}, truth {want}")
    return "; ".join(diffs[:10]) or "none"


def compare(endpoint: QueryEndpoint, truth: Truth, rng: random.Random) -> str:
    """Asks every entity's all-time range, a 24-hour window, random ranges and
    random hours; raises on the first difference. Returns what was compared."""
    entities = truth.entities()
    answers = 0

    def check(op: str, body: dict, expect) -> None:
        nonlocal answers
        got = endpoint.ask(op, {**body, "entities": entities})
        for entity in entities:
            want = expect(entity)
            if got.get(entity) != want:
                raise Mismatch(f"{op} {body} for {entity}: stored {got.get(entity)}, ground truth {want}; "
                               f"hours that differ: {differing_hours(endpoint, truth, entity)}")
        answers += len(entities)

    check("range_many", {"from": truth.first, "to": truth.last},
          lambda e: truth.range(e, truth.first, truth.last))
    stored_total = sum(endpoint.ask("range_many", {"from": truth.first, "to": truth.last,
                                                   "entities": entities}).values())
    if stored_total != truth.total:
        raise Mismatch(f"total: stored {stored_total}, ground truth {truth.total}")
    check("window_many", {"last": 24, "now": truth.last}, lambda e: truth.window(e, 24, truth.last))
    for _ in range(4):
        a, b = sorted(rng.randrange(truth.first, truth.last + 1) for _ in range(2))
        check("range_many", {"from": a, "to": b}, lambda e, a=a, b=b: truth.range(e, a, b))
        at = rng.randrange(truth.first, truth.last + 1)
        check("get_many", {"at": at}, lambda e, at=at: truth.get(e, at))
    return f"total {stored_total} = {truth.total}; {answers} answers equal (range, 24 h window, 4 random ranges, 4 random hours x {len(entities)} entities)"


def check_stored(ctx: "Context", name: str, pipeline: str, truth: Truth) -> str:
    """Serves the pipeline's tables and compares them with `truth`."""
    endpoint = QueryEndpoint(pipeline, ctx.work / f"{name}-serve.log")
    try:
        return compare(endpoint, truth, ctx.rng)
    finally:
        endpoint.close()


# --------------------------------------------------------------------------
# Writers of history, the way the upstream jobs write it.


def hive_dir(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return f"year={t.year}/month={t.month:02d}/day={t.day:02d}/hour={t.hour:02d}"


def by_hour(events: list[Event]) -> dict[str, list[Event]]:
    parts: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        parts[hive_dir(e.occurred_at_ms)].append(e)
    return parts


def spark_parquet(s3, bucket: str, prefix: str, events: list[Event], token: dict) -> int:
    """Hive-partitioned Snappy Parquet as `df.write.partitionBy(year, month,
    day, hour).parquet(...)` lays it out (partition columns in the path, two
    task files per partition), `_SUCCESS`, and the handoff manifest."""
    objects = 0
    task_id = uuid.uuid4()
    for part, rows in sorted(by_hour(events).items()):
        half = (len(rows) + 1) // 2
        for task, chunk in enumerate((rows[:half], rows[half:])):
            if not chunk:
                continue
            table = pa.table(
                {
                    "event_id": pa.array([e.event_id for e in chunk], pa.string()),
                    "entity_id": pa.array([e.entity_id for e in chunk], pa.string()),
                    "count": pa.array([e.count for e in chunk], pa.int64()),
                    "occurred_at_unix_ms": pa.array([e.occurred_at_ms for e in chunk], pa.int64()),
                }
            )
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="snappy", row_group_size=4096)
            key = f"{prefix}/{part}/part-{task:05d}-{task_id}.c000.snappy.parquet"
            s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
            objects += 1
    s3.put_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/_murmur_handoff.json", Body=json.dumps(token).encode())
    return objects


def spark_jsonl_gz(s3, bucket: str, prefix: str, events: list[Event], token: dict) -> int:
    """Hive-partitioned gzipped JSON Lines (`occurred_at` RFC 3339), as
    `df.write.partitionBy(...).option("compression", "gzip").json(...)`."""
    objects = 0
    task_id = uuid.uuid4()
    for part, rows in sorted(by_hour(events).items()):
        lines = []
        for e in rows:
            at = dt.datetime.fromtimestamp(e.occurred_at_ms / 1000, tz=dt.timezone.utc)
            lines.append(json.dumps({
                "event_id": e.event_id,
                "entity_id": e.entity_id,
                "count": e.count,
                "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }))
        body = gzip.compress(("\n".join(lines) + "\n").encode())
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{part}/part-00000-{task_id}.c000.json.gz", Body=body)
        objects += 1
    s3.put_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/_murmur_handoff.json", Body=json.dumps(token).encode())
    return objects


# --------------------------------------------------------------------------
# Live producers.


class KafkaTopic:
    def __init__(self, brokers: str, topic: str) -> None:
        self.brokers, self.topic = brokers, topic
        admin = AdminClient({"bootstrap.servers": brokers})
        futures = admin.create_topics([NewTopic(topic, num_partitions=KAFKA_PARTITIONS, replication_factor=1)])
        for f in futures.values():
            f.result(timeout=30)
        # One message per produce request: tansu 0.6.0 answers ListOffsets
        # (latest) with the last *batch's* base offset + 1, so after a
        # multi-message batch the log would look shorter than a worker's
        # checkpoint, and the worker rightly refuses to start there.
        self.producer = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 0,
                                  "batch.num.messages": 1})
        self.next_offset = {p: 0 for p in range(KAFKA_PARTITIONS)}
        self.failed: list[str] = []

    def produce(self, events: list[Event], rate: float | None = None) -> None:
        """Sends `events` round-robin over the partitions (at about `rate`
        events/s) and waits for every acknowledgement."""
        started = time.monotonic()

        def delivered(err, msg) -> None:
            if err is not None:
                self.failed.append(str(err))
            else:
                p = msg.partition()
                self.next_offset[p] = max(self.next_offset[p], msg.offset() + 1)

        for i, e in enumerate(events):
            self.producer.produce(self.topic, e.json(), key=e.entity_id,
                                  partition=i % KAFKA_PARTITIONS, on_delivery=delivered)
            self.producer.poll(0)
            if rate and i % 100 == 99:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if self.producer.flush(60) != 0 or self.failed:
            raise Mismatch(f"kafka: {len(self.failed)} messages not delivered: {self.failed[:3]}")

    def token(self) -> dict:
        return {"kind": "kafka", "topic": self.topic,
                "offsets": {str(p): o for p, o in self.next_offset.items()}}


def until_offsets(topic: str, start: dict[int, int], events: int) -> dict:
    """The offsets after `events` more messages sent round-robin."""
    ends = dict(start)
    for i in range(events):
        ends[i % KAFKA_PARTITIONS] += 1
    return {"kind": "kafka", "topic": topic, "offsets": {str(p): o for p, o in ends.items()}}


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    """Runs `fn(*args)` in a thread; the list receives its exception, if any."""
    errors: list = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def joined(thread: threading.Thread, errors: list, what: str) -> None:
    thread.join(timeout=300)
    if thread.is_alive():
        raise Mismatch(f"{what} did not finish")
    if errors:
        raise Mismatch(f"{what} failed: {errors[0]!r}")


# --------------------------------------------------------------------------
# Scenarios.


@dataclass
class Context:
    work: Path
    rng: random.Random
    run: str
    s3: object = field(init=False)
    kinesis: object = field(init=False)

    def __post_init__(self) -> None:
        self.s3 = boto3.client("s3")
        self.kinesis = boto3.client("kinesis", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS"))

    def bucket(self, name: str) -> str:
        bucket = f"{self.run}-{name}"
        self.s3.create_bucket(Bucket=bucket)
        return bucket


def kafka_scenario(ctx: Context, name: str, kills: int) -> str:
    """Spark Parquet on S3 -> backfill into DynamoDB -> Kafka from the
    manifest's offsets while a producer keeps sending; `kills` SIGKILLs of
    the worker at random moments first."""
    rng = ctx.rng
    now = int(time.time() * 1000)
    history = make_events(rng, 12_000, now - 12 * HOUR_MS, now - 60_000, entities=25)
    live = make_events(rng, 5_000, now - 2 * HOUR_MS, now + HOUR_MS, entities=25)
    pipeline = f"{ctx.run}-{name}"
    topic = KafkaTopic(os.environ["KAFKA_BROKERS"], f"{pipeline}-views")

    # The upstream job consumed the topic up to a point and exported it.
    topic.produce(history)
    token = topic.token()
    bucket = ctx.bucket(name)
    objects = spark_parquet(ctx.s3, bucket, "events", history, token)
    until = until_offsets(topic.topic, {int(p): o for p, o in token["offsets"].items()}, len(live))

    args = ["run", "--store", "dynamodb", "--create-tables", "--pipeline", pipeline,
            "--window", "hour", "--backfill", "parquet", "--from", f"s3://{bucket}/events",
            "--chunk-rows", "2048", "--live", "kafka", "--kafka-brokers", topic.brokers,
            "--kafka-topic", topic.topic, "--flush-max-age", "1s", "--progress", "never",
            "--until", json.dumps(until)]
    log = ctx.work / f"{name}-worker.log"
    # Slower while workers get killed, so that live kills find records to cut.
    producer, errors = in_thread(topic.produce, live, 400.0 if kills else 1_000.0)
    killed = []
    # The first kills come early in a run (mostly the backfill, which
    # resumes from its progress); the rest wait until this run's live lanes
    # started.
    aims = ["early"] * ((kills + 1) // 2) + ["live"] * (kills // 2)
    for aim in aims:
        mark = log.stat().st_size if log.exists() else 0
        w = Worker(args, log).start()
        this_run = lambda: log.read_bytes()[mark:].decode(errors="replace")  # noqa: E731
        started = time.monotonic()
        if aim == "live":
            while "lane started" not in this_run() and w.proc.poll() is None:
                if time.monotonic() - started > 300:
                    raise Mismatch(f"the live stage did not start\n{log_tail(log)}")
                time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 3.0) if aim == "live" else rng.uniform(0.5, 5.0))
        if w.proc.poll() is not None:
            if w.proc.returncode != 0:
                raise Mismatch(f"the worker exited with {w.proc.returncode} before its kill\n{log_tail(log)}")
            killed.append("none (it had finished)")
            continue
        w.sigkill()
        phase = "live" if "lane started" in this_run() else "backfill"
        killed.append(f"{time.monotonic() - started:.1f}s/{phase}")
    summary = Worker(args, log).start().wait(timeout=600)
    joined(producer, errors, "the Kafka producer")

    truth = Truth(history + live)
    compared = check_stored(ctx, name, pipeline, truth)
    crash = f"; {kills} SIGKILLs at {', '.join(killed)}" if kills else ""
    if not kills and (summary["backfill_records"], summary["live_records"]) != (len(history), len(live)):
        raise Mismatch(f"worker counted backfill {summary['backfill_records']} / live {summary['live_records']}, "
                       f"sent {len(history)} / {len(live)}")
    return (f"{len(history)} events in {objects} Parquet objects + {len(live)} live over Kafka "
            f"(handoff {token['offsets']}){crash}; last run: backfill {summary['backfill']}, "
            f"live {summary['live_records']} records; {compared}")


def dynamodb_table(ctx: Context, name: str, events: list[Event], stream: bool = False):
    """The events as items of a DynamoDB table (as a stream consumer that
    persists them would have written them), optionally with a stream of new
    images; returns the boto3 table."""
    ddb = boto3.resource("dynamodb")
    extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}} if stream else {}
    table = ddb.create_table(
        TableName=f"{ctx.run}-{name}-events",
        KeySchema=[{"AttributeName": "event_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "event_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )
    table.wait_until_exists()
    put_items(table, events)
    return table


def put_items(table, events: list[Event], rate: float | None = None) -> None:
    started = time.monotonic()
    with table.batch_writer() as batch:
        for i, e in enumerate(events):
            batch.put_item(Item={"event_id": e.event_id, "entity_id": e.entity_id, "count": e.count,
                                 "occurred_at_unix_ms": e.occurred_at_ms})
            if rate and i % 25 == 24:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


def kinesis_scenario(ctx: Context, name: str, history_in: str) -> str:
    """History (gzipped JSON Lines on S3, or a DynamoDB table scanned in
    parallel) -> backfill -> event-time-cut handoff -> Kinesis (3 shards, one
    split while the producer sends)."""
    rng = ctx.rng
    now = int(time.time() * 1000)
    cut = now - 60_000
    stream = f"{ctx.run}-{name}"
    pipeline = stream
    older = make_events(rng, 12_000 if history_in == "jsonl" else 3_000,
                        cut - 12 * HOUR_MS, cut - 10 * 60_000, entities=25)
    overlap = make_events(rng, 2_000, cut - 10 * 60_000, cut, entities=25)  # export and stream
    early = make_events(rng, 1_000, cut, now, entities=25)  # export and stream, after the cut
    late = make_events(rng, 5_000, cut, now + HOUR_MS, entities=25)  # stream only

    k = ctx.kinesis
    k.create_stream(StreamName=stream, ShardCount=KINESIS_SHARDS)
    k.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})

    def put(events: list[Event], rate: float | None, split_at: int | None) -> None:
        started = time.monotonic()
        for i in range(0, len(events), 250):
            if split_at is not None and i >= split_at:
                split_at = None
                shard = k.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]
                lo, hi = (int(x) for x in (shard["HashKeyRange"]["StartingHashKey"],
                                           shard["HashKeyRange"]["EndingHashKey"]))
                k.split_shard(StreamName=stream, ShardToSplit=shard["ShardId"],
                              NewStartingHashKey=str((lo + hi) // 2))
                k.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
            batch = events[i:i + 250]
            pending = [{"Data": e.json(), "PartitionKey": e.event_id} for e in batch]
            for _attempt in range(20):
                out = k.put_records(StreamName=stream, Records=pending)
                if out["FailedRecordCount"] == 0:
                    break
                pending = [r for r, res in zip(pending, out["Records"]) if "ErrorCode" in res]
                time.sleep(0.2)
            else:
                raise Mismatch(f"kinesis: {len(pending)} records not accepted")
            if rate:
                ahead = (i + len(batch)) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    # Before the export: the tail of the history and the first live events.
    put(overlap + early, None, None)
    token = {"kind": "event_time_cut", "at_ms": cut}
    if history_in == "jsonl":
        bucket = ctx.bucket(name)
        objects = spark_jsonl_gz(ctx.s3, bucket, "events", older + overlap + early, token)
        where = f"{objects} JSON Lines objects"
        backfill = ["--backfill", "jsonl", "--from", f"s3://{bucket}/events"]
    else:
        table = dynamodb_table(ctx, name, older + overlap + early).name
        where = f"table {table} (4-segment parallel scan, at most 400 RCU/s)"
        backfill = ["--backfill", "dynamodb", "--scan-table", table, "--scan-segments", "4",
                    "--scan-rcu", "400", "--token", json.dumps(token)]

    args = ["run", "--store", "dynamodb", "--create-tables", "--pipeline", pipeline,
            "--window", "hour", *backfill, "--live", "kinesis", "--kinesis-stream", stream, "--cut-skew", "10m",
            "--flush-max-age", "1s", "--progress", "never", "--stop-after-idle", "15s"]
    log = ctx.work / f"{name}-worker.log"
    worker = Worker(args, log).start()
    producer, errors = in_thread(put, late, 1_000.0, len(late) // 2)
    joined(producer, errors, "the Kinesis producer")
    summary = worker.wait(timeout=600)

    shards = len(k.describe_stream(StreamName=stream)["StreamDescription"]["Shards"])
    want = {
        "backfill_records": len(older) + len(overlap),
        "backfill_after_cut": len(early),
        "live_records": len(early) + len(late),
        "live_before_cut": len(overlap),
    }
    got = {key: summary.get(key) for key in want}
    if got != want:
        raise Mismatch(f"worker summary {got}, expected {want}")
    truth = Truth(older + overlap + early + late)
    compared = check_stored(ctx, name, pipeline, truth)
    return (f"{len(older) + len(overlap) + len(early)} events in {where}, "
            f"{len(overlap) + len(early) + len(late)} over Kinesis ({KINESIS_SHARDS} shards -> {shards} after a split); "
            f"cut: backfill kept {got['backfill_records']} (skipped {got['backfill_after_cut']} after it), "
            f"live kept {got['live_records']} (dropped {got['live_before_cut']} before it); {compared}")


def streams_scenario(ctx: Context, name: str) -> str:
    """A DynamoDB table with a stream -> parallel-scan backfill, the stream's
    position captured before the scan -> live from DynamoDB Streams, while a
    writer keeps adding items (during the scan too) and touching old ones;
    per-event dedup absorbs what the scan and the stream both saw."""
    rng = ctx.rng
    now = int(time.time() * 1000)
    before = make_events(rng, 1_500, now - 12 * HOUR_MS, now - 60_000, entities=25)
    during = make_events(rng, 800, now - HOUR_MS, now + HOUR_MS, entities=25)
    modified = rng.sample(before, 60)
    table = dynamodb_table(ctx, name, before, stream=True)
    # History is older than the capture (whose cut is the start of the
    # second before it: creation times are whole seconds).
    time.sleep(2.5)
    pipeline = f"{ctx.run}-{name}"
    args = ["run", "--store", "dynamodb", "--create-tables", "--pipeline", pipeline,
            "--window", "hour", "--backfill", "dynamodb", "--scan-table", table.name,
            "--scan-segments", "4", "--scan-page-size", "200", "--live", "dynamodb-streams",
            "--streams-table", table.name, "--dedup", "--flush-max-age", "1s",
            "--progress", "never", "--stop-after-idle", "15s"]
    log = ctx.work / f"{name}-worker.log"
    worker = Worker(args, log).start()

    def write() -> None:
        # From the moment the worker took the stream's position (before its
        # scan): these changes are in the stream after it, and some in the
        # scan too.
        while "position captured before the scan" not in log.read_text(errors="replace"):
            if worker.proc.poll() is not None or time.monotonic() - started > 120:
                raise Mismatch(f"the worker did not capture the stream position\n{log_tail(log)}")
            time.sleep(0.05)
        put_items(table, during, rate=300.0)
        # A MODIFY of items already counted: their new images come round
        # again, and dedup drops them.
        for e in modified:
            table.update_item(Key={"event_id": e.event_id}, UpdateExpression="SET seen = :t",
                              ExpressionAttributeValues={":t": True})

    started = time.monotonic()
    writer, errors = in_thread(write)
    joined(writer, errors, "the table writer")
    summary = worker.wait(timeout=600)
    truth = Truth(before + during)
    seen = summary["backfill_records"] + summary["live_records"]
    if seen - summary["duplicates"] != truth.events:
        raise Mismatch(f"worker: backfill {summary['backfill_records']} + live {summary['live_records']} "
                       f"- duplicates {summary['duplicates']} != {truth.events} events")
    if summary["duplicates"] < len(modified):
        raise Mismatch(f"only {summary['duplicates']} duplicates dropped; the {len(modified)} modified items "
                       "alone come round again")
    compared = check_stored(ctx, name, pipeline, truth)
    return (f"{len(before)} items before the scan, {len(during)} written during it and after, "
            f"{len(modified)} modified; "
            f"worker: backfill {summary['backfill_records']} + live {summary['live_records']} "
            f"- {summary['duplicates']} duplicates = {truth.events} events; {compared}")


SCENARIOS = {
    "parquet-kafka": lambda ctx: kafka_scenario(ctx, "parquet-kafka", kills=0),
    "jsonl-kinesis": lambda ctx: kinesis_scenario(ctx, "jsonl-kinesis", history_in="jsonl"),
    "dynamodb-kinesis": lambda ctx: kinesis_scenario(ctx, "dynamodb-kinesis", history_in="dynamodb"),
    "dynamodb-streams": lambda ctx: streams_scenario(ctx, "dynamodb-streams"),
    "crash": lambda ctx: kafka_scenario(ctx, "crash", kills=5),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="directory for logs")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=", ".join(SCENARIOS))
    opts = parser.parse_args()
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 32)
    opts.work.mkdir(parents=True, exist_ok=True)
    run = f"e2e{seed:x}"[:12]
    print(f"e2e: seed {seed} (rerun with --seed {seed}); logs in {opts.work}", flush=True)
    failed = 0
    for name in opts.scenarios:
        ctx = Context(opts.work, random.Random(f"{seed}-{name}"), run)
        started = time.monotonic()
        try:
            line = SCENARIOS[name](ctx)
            print(f"PASS {name} ({time.monotonic() - started:.0f} s): {line}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next scenario runs
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - started:.0f} s): {e}", flush=True)
        finally:
            kill_children()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
