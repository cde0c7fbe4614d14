//! Deterministic assignment of work units to lanes and of lanes to workers.

use murmur_core::LaneId;

use crate::error::{Error, Result};
use crate::source::WorkUnit;

/// The units of one lane, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneAssignment {
    /// The lane id: `<name>:slot-<slot>`.
    pub lane: LaneId,
    /// The slot number, `0..lane_count`.
    pub slot: u32,
    /// The lane's units, ordered by [`WorkUnit::index`].
    pub units: Vec<WorkUnit>,
}

/// Units spread over a fixed number of lanes, deterministically.
///
/// Units are balanced by size: largest first (ties: lower index first), each
/// to the lane with the least bytes so far (ties: fewer units, then lower
/// slot). Within a lane, units are read in index order. The same units and
/// lane count always give the same plan, so a restarted or scaled-out
/// backfill finds its lanes (and their checkpoints) again. Keep the lane
/// count fixed for the life of a run: it is part of the lanes' identity.
///
/// Lanes go to worker processes by slot: worker `i` of `n` runs the lanes
/// whose `slot % n == i` ([`for_worker`](Self::for_worker)).
///
/// ```
/// use murmur_source_snapshot::{LanePlan, WorkUnit};
/// let units: Vec<WorkUnit> = (0..5u64)
///     .map(|i| WorkUnit { index: i, key: format!("part-{i}").into(), size: 100, partitions: Default::default() })
///     .collect();
/// let plan = LanePlan::new("backfill:2026-05-08", units, 2).unwrap();
/// assert_eq!(plan.lanes()[0].lane.as_str(), "backfill:2026-05-08:slot-0");
/// assert_eq!(plan.lanes()[0].units.len() + plan.lanes()[1].units.len(), 5);
/// let mine = plan.for_worker(1, 2).unwrap();
/// assert_eq!(mine.len(), 1);
/// assert_eq!(mine[0].slot, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePlan {
    lanes: Vec<LaneAssignment>,
}

impl LanePlan {
    /// Spreads `units` over `lane_count` lanes named `<name>:slot-<n>`.
    pub fn new(name: &str, units: Vec<WorkUnit>, lane_count: u32) -> Result<Self> {
        if lane_count == 0 {
            return Err(Error::Config {
                reason: "lane count must be at least 1".into(),
            });
        }
        let mut lanes: Vec<LaneAssignment> = (0..lane_count)
            .map(|slot| LaneAssignment {
                lane: LaneId::new(format!("{name}:slot-{slot}")),
                slot,
                units: Vec::new(),
            })
            .collect();
        let mut load = vec![0u64; lanes.len()];
        let mut order = units;
        order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
        for unit in order {
            let target = (0..lanes.len())
                .min_by_key(|&l| (load[l], lanes[l].units.len(), l))
                .expect("at least one lane");
            load[target] = load[target].saturating_add(unit.size);
            lanes[target].units.push(unit);
        }
        for lane in &mut lanes {
            lane.units.sort_by_key(|u| u.index);
        }
        Ok(LanePlan { lanes })
    }

    /// All lanes, by slot.
    pub fn lanes(&self) -> &[LaneAssignment] {
        &self.lanes
    }

    /// The lanes worker `worker_index` of `worker_count` runs (slot modulo
    /// worker count).
    pub fn for_worker(&self, worker_index: u32, worker_count: u32) -> Result<Vec<&LaneAssignment>> {
        if worker_count == 0 || worker_index >= worker_count {
            return Err(Error::Config {
                reason: format!(
                    "worker index {worker_index} is not below worker count {worker_count}"
                ),
            });
        }
        Ok(self
            .lanes
            .iter()
            .filter(|l| l.slot % worker_count == worker_index)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(index: u64, size: u64) -> WorkUnit {
        WorkUnit {
            index,
            key: format!("k{index:03}").into(),
            size,
            partitions: Default::default(),
        }
    }

    #[test]
    fn balances_by_size_and_is_deterministic() {
        let units: Vec<_> = [50, 10, 40, 10, 30, 20]
            .iter()
            .enumerate()
            .map(|(i, s)| unit(i as u64, *s))
            .collect();
        let a = LanePlan::new("r", units.clone(), 3).unwrap();
        let mut reversed = units;
        reversed.reverse();
        let b = LanePlan::new("r", reversed, 3).unwrap();
        assert_eq!(a, b, "input order does not matter");
        let loads: Vec<u64> = a
            .lanes()
            .iter()
            .map(|l| l.units.iter().map(|u| u.size).sum())
            .collect();
        assert_eq!(loads, vec![60, 50, 50]);
        for lane in a.lanes() {
            assert!(lane.units.windows(2).all(|w| w[0].index < w[1].index));
        }
    }

    #[test]
    fn unknown_sizes_go_round_robin() {
        let units: Vec<_> = (0..8).map(|i| unit(i, 0)).collect();
        let plan = LanePlan::new("ddb", units, 4).unwrap();
        let idx: Vec<Vec<u64>> = plan
            .lanes()
            .iter()
            .map(|l| l.units.iter().map(|u| u.index).collect())
            .collect();
        assert_eq!(idx, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    }

    #[test]
    fn workers_split_lanes_disjointly_and_completely() {
        let plan = LanePlan::new("r", (0..10).map(|i| unit(i, i + 1)).collect(), 5).unwrap();
        let mut seen = Vec::new();
        for w in 0..3 {
            for lane in plan.for_worker(w, 3).unwrap() {
                seen.extend(lane.units.iter().map(|u| u.index));
            }
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(plan.for_worker(3, 3).is_err());
        assert!(LanePlan::new("r", vec![], 0).is_err());
    }
}
