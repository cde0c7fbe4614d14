//! Shared test setup: service endpoints (or a skip), clients, and a small
//! runner that drives any `LiveSource` through the checkpoint protocol.

use murmur_core::{BatchIntent, CheckpointStore, LaneId, MemoryStore, Position, Record};
use murmur_source_live::{LiveSource, SourceEvent, Start};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The endpoint in `var`, or `None` after a skip notice.
///
/// When it is unset the test fails if `CI=true`, and otherwise prints a
/// skip notice and the caller returns: this is the one place that decides.
pub fn service_endpoint(test: &str, var: &str, service: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
                panic!(
                    "{test}: {var} is not set but CI=true: this test needs {service} \
                     (run `cargo xtask test`, or start `cargo xtask services` and export its lines)"
                );
            }
            eprintln!(
                "SKIPPED {test}: {var} is not set, so {service} is not available (run `cargo xtask test`, \
                 or `cargo xtask services` and export its lines)"
            );
            None
        }
    }
}

async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await
}

/// A Kinesis client for kinesalite (real 56-digit sequence numbers).
pub async fn kinesalite(test: &str) -> Option<aws_sdk_kinesis::Client> {
    let endpoint = service_endpoint(test, "MURMUR_KINESALITE_ENDPOINT", "kinesalite")?;
    Some(aws_sdk_kinesis::Client::new(&sdk(&endpoint).await))
}

/// A DynamoDB client for moto.
pub async fn moto_dynamodb(test: &str) -> Option<aws_sdk_dynamodb::Client> {
    let endpoint = service_endpoint(test, "AWS_ENDPOINT_URL", "moto (DynamoDB)")?;
    Some(aws_sdk_dynamodb::Client::new(&sdk(&endpoint).await))
}

/// Runs `runner` until `done` or the deadline.
pub async fn drive<S: LiveSource<T>, T: Clone + Send + 'static>(
    runner: &mut Runner<S, T>,
    secs: u64,
    done: impl Fn(&Runner<S, T>) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !done(runner) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: timed out",
            runner.name
        );
        runner.step(Duration::from_millis(200)).await;
    }
}

/// Runs `runner` until its source fails (the error) or `secs` pass (`None`).
pub async fn drive_to_error<S: LiveSource<T>, T: Clone + Send + 'static>(
    runner: &mut Runner<S, T>,
    secs: u64,
) -> Option<murmur_source_live::Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Err(e) = runner.try_step(Duration::from_millis(200)).await {
            return Some(e);
        }
    }
    None
}

/// The JSON records of a one-shard Kinesis stream (a dead-letter stream),
/// from its trim horizon.
pub async fn stream_json(k: &aws_sdk_kinesis::Client, stream: &str) -> Vec<serde_json::Value> {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let shards = k.list_shards().stream_name(stream).send().await.unwrap();
    let it = k
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shards.shards()[0].shard_id())
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let out = k
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    out.records()
        .iter()
        .map(|r| serde_json::from_slice(r.data().as_ref()).unwrap())
        .collect()
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Records with their lanes, shared between a runner and the test.
pub type Acked<T> = Arc<Mutex<Vec<(LaneId, Record<T>)>>>;

/// An open (not yet durable) batch of one lane.
struct Open<T> {
    start: Position,
    end: Position,
    records: Vec<Record<T>>,
    chunks: usize,
}

/// Drives a source like the live runner will: checkpoint or resolved start
/// persisted before consuming, replay of a pending batch, batches of
/// `chunks_per_batch` chunks made durable (`begin_batch` + `commit_batch`)
/// and then acknowledged. Checks that chunks tile their lanes.
pub struct Runner<S, T> {
    pub name: &'static str,
    pub source: S,
    pub checkpoints: Arc<MemoryStore>,
    pub start: Start,
    pub chunks_per_batch: usize,
    open: HashMap<LaneId, Open<T>>,
    /// Lane position as this runner last knew it (durable + open chunks).
    tip: HashMap<LaneId, Position>,
    /// Records of acknowledged batches, in acknowledgement order.
    pub acked: Acked<T>,
    /// Records delivered in chunks, in delivery order.
    pub delivered: Vec<(LaneId, Record<T>)>,
    /// Lanes currently started.
    pub lanes: Vec<LaneId>,
    pub assigned_events: usize,
    pub revoked_events: usize,
    /// Lanes the source reported finished, in order.
    pub finished: Vec<LaneId>,
    /// Ends of every acknowledged batch, per lane.
    pub acked_ends: HashMap<LaneId, Vec<Position>>,
}

impl<S: LiveSource<T>, T: Clone + Send + 'static> Runner<S, T> {
    pub fn new(name: &'static str, source: S, checkpoints: Arc<MemoryStore>, start: Start) -> Self {
        Runner {
            name,
            source,
            checkpoints,
            start,
            chunks_per_batch: 1,
            open: HashMap::new(),
            tip: HashMap::new(),
            acked: Arc::new(Mutex::new(Vec::new())),
            delivered: Vec::new(),
            lanes: Vec::new(),
            assigned_events: 0,
            revoked_events: 0,
            finished: Vec::new(),
            acked_ends: HashMap::new(),
        }
    }

    /// Handles one event, or flushes everything open after `idle` without one.
    pub async fn step(&mut self, idle: Duration) {
        if let Err(e) = self.try_step(idle).await {
            panic!("{}: next failed: {e}", self.name);
        }
    }

    /// [`step`](Self::step), returning the source's error.
    pub async fn try_step(&mut self, idle: Duration) -> murmur_source_live::Result<()> {
        let event = match tokio::time::timeout(idle, self.source.next()).await {
            Err(_) => {
                self.flush_all().await;
                return Ok(());
            }
            Ok(ev) => ev?,
        };
        match event {
            SourceEvent::Assigned(lanes) => {
                self.assigned_events += 1;
                for lane in lanes {
                    self.start_lane(lane).await;
                }
            }
            SourceEvent::Finished(lanes) => {
                for lane in lanes {
                    self.lanes.retain(|l| *l != lane);
                    self.tip.remove(&lane);
                    self.finished.push(lane);
                }
            }
            SourceEvent::Revoked(lanes) => {
                self.revoked_events += 1;
                for lane in lanes {
                    self.flush(&lane).await;
                    self.lanes.retain(|l| *l != lane);
                    self.tip.remove(&lane);
                }
            }
            SourceEvent::Chunk(c) => {
                let tip = self
                    .tip
                    .get(&c.lane)
                    .unwrap_or_else(|| panic!("{}: chunk of unstarted lane {}", self.name, c.lane));
                assert_eq!(
                    &c.start, tip,
                    "{}: chunks must tile lane {}",
                    self.name, c.lane
                );
                self.tip.insert(c.lane.clone(), c.end.clone());
                self.delivered
                    .extend(c.records.iter().map(|r| (c.lane.clone(), r.clone())));
                let o = self.open.entry(c.lane.clone()).or_insert_with(|| Open {
                    start: c.start.clone(),
                    end: c.start.clone(),
                    records: Vec::new(),
                    chunks: 0,
                });
                o.end = c.end.clone();
                o.records.extend(c.records);
                o.chunks += 1;
                if o.chunks >= self.chunks_per_batch || c.end == Position::End {
                    self.flush(&c.lane).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn start_lane(&mut self, lane: LaneId) {
        let state = match self.checkpoints.lane(&lane).await.unwrap() {
            Some(s) => s,
            None => {
                let at = self
                    .source
                    .resolve_start(&lane, &self.start)
                    .await
                    .unwrap_or_else(|e| panic!("{}: resolve {lane}: {e}", self.name));
                self.checkpoints.init_lane(&lane, &at).await.unwrap()
            }
        };
        if let Some(intent) = &state.pending {
            let records = self
                .source
                .read_range(&lane, &intent.start, &intent.end)
                .await
                .unwrap();
            self.checkpoints
                .commit_batch(&lane, intent.seq)
                .await
                .unwrap();
            self.source.ack(&lane, &intent.end).await.unwrap();
            self.acked
                .lock()
                .unwrap()
                .extend(records.into_iter().map(|r| (lane.clone(), r)));
        }
        let position = self
            .checkpoints
            .lane(&lane)
            .await
            .unwrap()
            .unwrap()
            .position;
        let started = self
            .source
            .start_lane(&lane, &position)
            .await
            .unwrap_or_else(|e| panic!("{}: start {lane} at {position}: {e}", self.name));
        self.tip.insert(lane.clone(), started);
        self.lanes.push(lane);
    }

    /// Makes the lane's open batch durable and acknowledges it (or abandons
    /// it when the guard says the lane is no longer ours).
    pub async fn flush(&mut self, lane: &LaneId) {
        let Some(o) = self.open.remove(lane) else {
            return;
        };
        if !self.source.guard(lane).is_ok_and(|g| g.check().is_ok()) {
            return;
        }
        let state = self.checkpoints.lane(lane).await.unwrap().unwrap();
        let intent = BatchIntent {
            lane: lane.clone(),
            seq: state.committed_seq + 1,
            start: o.start,
            end: o.end.clone(),
            bad_records: 0,
        };
        assert_eq!(
            intent.start, state.position,
            "{}: batch must start at the checkpoint",
            self.name
        );
        self.checkpoints.begin_batch(&intent).await.unwrap();
        self.checkpoints
            .commit_batch(lane, intent.seq)
            .await
            .unwrap();
        self.source.ack(lane, &o.end).await.unwrap();
        self.acked_ends.entry(lane.clone()).or_default().push(o.end);
        self.acked
            .lock()
            .unwrap()
            .extend(o.records.into_iter().map(|r| (lane.clone(), r)));
    }

    pub async fn flush_all(&mut self) {
        let lanes: Vec<LaneId> = self.open.keys().cloned().collect();
        for lane in lanes {
            self.flush(&lane).await;
        }
    }

    /// Records delivered but not acknowledged yet.
    pub fn open_records(&self) -> usize {
        self.open.values().map(|o| o.records.len()).sum()
    }
}
