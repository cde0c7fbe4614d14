//! `Start::Latest` is fixed when the live stage starts: a lane assigned
//! later (a partition added, a child shard) starts at that same time.

use murmur_bootstrap::{LiveOptions, live};
use murmur_core::monoid::Sum;
use murmur_core::{CountEvent, HandoffToken, LaneId, MemoryStore, Pipeline, Position, Record};
use murmur_source_live::{LeaseGuard, LiveSource, Metrics, SourceEvent, Start};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Assigns lanes at set times and records the start each is resolved
/// with; delivers no records.
struct Assigning {
    events: VecDeque<(tokio::time::Instant, LaneId)>,
    starts: Arc<Mutex<Vec<(LaneId, Start)>>>,
}

#[async_trait::async_trait]
impl LiveSource<CountEvent> for Assigning {
    fn name(&self) -> &str {
        "assigning"
    }
    async fn resolve_start(
        &self,
        lane: &LaneId,
        start: &Start,
    ) -> murmur_source_live::Result<Position> {
        self.starts
            .lock()
            .unwrap()
            .push((lane.clone(), start.clone()));
        Ok(Position::Offset { offset: 0 })
    }
    async fn start_lane(
        &self,
        _lane: &LaneId,
        at: &Position,
    ) -> murmur_source_live::Result<Position> {
        Ok(at.clone())
    }
    async fn next(&mut self) -> murmur_source_live::Result<SourceEvent<CountEvent>> {
        // Cancel-safe, as the trait asks: an event is taken only once due.
        match self.events.front() {
            Some(&(at, _)) => {
                tokio::time::sleep_until(at).await;
                let (_, lane) = self.events.pop_front().expect("peeked");
                Ok(SourceEvent::Assigned(vec![lane]))
            }
            None => std::future::pending().await,
        }
    }
    async fn read_range(
        &self,
        _lane: &LaneId,
        _start: &Position,
        _end: &Position,
    ) -> murmur_source_live::Result<Vec<Record<CountEvent>>> {
        Ok(Vec::new())
    }
    async fn ack(&self, _lane: &LaneId, _end: &Position) -> murmur_source_live::Result<()> {
        Ok(())
    }
    fn guard(&self, lane: &LaneId) -> murmur_source_live::Result<LeaseGuard> {
        Ok(LeaseGuard::unconditional(lane.clone()))
    }
    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}

#[tokio::test]
async fn latest_is_fixed_when_live_starts_for_lanes_assigned_later() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut source = Assigning {
        events: VecDeque::from([
            (tokio::time::Instant::now(), LaneId::new("p0")),
            (
                tokio::time::Instant::now() + Duration::from_millis(300),
                LaneId::new("p1"),
            ),
        ]),
        starts: starts.clone(),
    };
    let pipeline = Pipeline::builder("latest", Sum)
        .key_by_str(|e: &CountEvent| &e.entity_id)
        .value(|e| e.count)
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let options = LiveOptions {
        start: Start::Latest,
        ..LiveOptions::from_token(HandoffToken::None)
    };
    let before = murmur_core::store::now_ms();
    live(
        &pipeline,
        &mut source,
        Arc::new(store.clone()),
        Arc::new(store),
        &options,
        tokio::time::sleep(Duration::from_millis(600)),
    )
    .await
    .unwrap();
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "{starts:?}");
    let Start::Timestamp(at) = starts[0].1 else {
        panic!("{starts:?}")
    };
    assert!((before..before + 200).contains(&at), "{at} vs {before}");
    assert_eq!(
        starts[1],
        (LaneId::new("p1"), Start::Timestamp(at)),
        "the lane assigned 300 ms later starts at the same time"
    );
}
