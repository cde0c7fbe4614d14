//! The handoff token: where the live stage starts after a backfill.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the live worker starts after a backfill.
///
/// Stored with the bootstrap run's completion record in the same write, so a
/// completed backfill always has exactly one token. Serialized as tagged JSON,
/// e.g. `{"kind":"kafka","topic":"events","offsets":{"0":42,"1":17}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HandoffToken {
    /// Kafka: the next offset to read, per partition.
    Kafka {
        /// Topic name.
        topic: String,
        /// Next offset to consume, per partition.
        offsets: BTreeMap<i32, i64>,
    },
    /// Kinesis: the last sequence number included in the backfill, per shard
    /// (live reads `AFTER_SEQUENCE_NUMBER`).
    Kinesis {
        /// Stream name.
        stream: String,
        /// Last included sequence number per shard id.
        sequence_numbers: BTreeMap<String, String>,
    },
    /// Event-time cut: the backfill kept events with `event_time < at_ms`; the
    /// live stage starts at the broker position for `at_ms - skew` and drops
    /// events with `event_time < at_ms`.
    EventTimeCut {
        /// The cut, milliseconds since the Unix epoch.
        at_ms: i64,
    },
    /// No handoff: live starts from its own checkpoints or start policy.
    None,
}

impl HandoffToken {
    /// Parses a token from JSON (a manifest object, a flag).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Serializes the token to JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("handoff token serializes")
    }
}
