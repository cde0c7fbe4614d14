//! The handoff token: where the live stage starts after a backfill.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the live worker starts after a backfill.
///
/// Stored with the bootstrap run's record when the run begins and kept to its
/// completion, so every resume and worker of a backfill, and the live stage
/// after it, use exactly one token. Serialized as tagged JSON,
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
        #[serde(with = "partition_map")]
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
    /// DynamoDB Streams: where each shard of a table's stream stood when the
    /// backfill's scan began (captured *before* it), so live replays every
    /// change the scan may have missed. Changes the scan saw too come round
    /// again: run live with per-event dedup.
    #[serde(rename = "dynamodb_streams")]
    DynamoDbStreams {
        /// The table whose stream is read.
        table: String,
        /// Per shard id: the last sequence number at capture time (live
        /// reads `AFTER_SEQUENCE_NUMBER`), or `null` to read the shard from
        /// its beginning (it was empty, or the capture fell back to the
        /// trim horizon).
        shards: BTreeMap<String, Option<String>>,
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

/// JSON object keys are strings; an internally tagged enum cannot parse
/// them back into integers on its own, so partitions go through strings.
mod partition_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(map: &BTreeMap<i32, i64>, s: S) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(p, o)| (p.to_string(), *o))
            .collect::<BTreeMap<String, i64>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i32, i64>, D::Error> {
        BTreeMap::<String, i64>::deserialize(d)?
            .into_iter()
            .map(|(p, o)| {
                p.parse::<i32>()
                    .map(|p| (p, o))
                    .map_err(|e| D::Error::custom(format!("partition {p:?} is not an i32: {e}")))
            })
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_json() {
        let tokens = [
            HandoffToken::Kafka {
                topic: "events".into(),
                offsets: BTreeMap::from([(0, 42), (1, 17), (12, 0)]),
            },
            HandoffToken::Kinesis {
                stream: "clicks".into(),
                sequence_numbers: BTreeMap::from([(
                    "shardId-000000000000".into(),
                    "49590338271490256608559692538361571095921575989136588898".into(),
                )]),
            },
            HandoffToken::DynamoDbStreams {
                table: "events".into(),
                shards: BTreeMap::from([
                    ("shardId-1".into(), Some("4100000000000000000001".into())),
                    ("shardId-2".into(), None),
                ]),
            },
            HandoffToken::EventTimeCut { at_ms: -5 },
            HandoffToken::None,
        ];
        for t in tokens {
            assert_eq!(HandoffToken::from_json(&t.to_json()).unwrap(), t);
        }
        let streams = r#"{"kind":"dynamodb_streams","table":"t","shards":{"s1":"7","s2":null}}"#;
        assert!(matches!(
            HandoffToken::from_json(streams).unwrap(),
            HandoffToken::DynamoDbStreams { shards, .. } if shards["s1"].as_deref() == Some("7") && shards["s2"].is_none()
        ));
        let doc = r#"{"kind":"kafka","topic":"events","offsets":{"0":42,"1":17}}"#;
        let parsed = HandoffToken::from_json(doc).unwrap();
        assert_eq!(
            parsed,
            HandoffToken::Kafka {
                topic: "events".into(),
                offsets: BTreeMap::from([(0, 42), (1, 17)])
            }
        );
        let bad = HandoffToken::from_json(r#"{"kind":"kafka","topic":"t","offsets":{"x":1}}"#)
            .unwrap_err();
        assert!(
            bad.to_string().contains("partition \"x\" is not an i32"),
            "{bad}"
        );
    }
}
