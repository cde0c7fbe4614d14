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
/// Each lane gets one contiguous run of the units in index order, and the
/// runs are balanced by size: a unit goes to the lane whose share of the
/// total bytes holds the unit's midpoint (its place in the count when no
/// size is known), so lane loads differ by about one unit at most.
/// Contiguous runs keep locality: a listing sorted by key is sorted by time
/// for Hive partitions, so each lane reads its own stretch of time and a
/// window bucket (an hour, a day) is folded by one lane, not by all of
/// them. Its rows then get a delta from one lane's batches only: on
/// day-partitioned history that is about half the store writes of spreading
/// units by size alone. The same units and lane count always give the same
/// plan, so a restarted or scaled-out backfill finds its lanes (and their
/// checkpoints) again. Keep the lane count fixed for the life of a run: it
/// is part of the lanes' identity.
///
/// Lanes go to worker processes by slot: worker `i` of `n` runs the lanes
/// whose `slot % n == i` ([`for_worker`](Self::for_worker)).
///
/// ```
/// use murmur_source_snapshot::{LanePlan, WorkUnit};
/// let units: Vec<WorkUnit> = (0..5u64)
///     .map(|i| WorkUnit { index: i, key: format!("part-{i}").into(), size: 100, partitions: Default::default(), e_tag: None })
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
        let mut order = units;
        order.sort_by_key(|u| u.index);
        // Weights in u128 so no sum of u64 sizes overflows; with no size
        // known every unit weighs one.
        let sized = order.iter().any(|u| u.size > 0);
        let weight = |u: &WorkUnit| u128::from(if sized { u.size } else { 1 });
        let total: u128 = order.iter().map(weight).sum();
        let count = u128::from(lane_count);
        let mut before = 0u128;
        for unit in order {
            let w = weight(&unit);
            // The lane whose share [slot, slot + 1) * total / count holds
            // the unit's midpoint, before + w / 2 (doubled to stay whole).
            let slot = ((2 * before + w) * count / (2 * total).max(1)).min(count - 1);
            before += w;
            lanes[slot as usize].units.push(unit);
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
            e_tag: None,
        }
    }

    fn indexes(plan: &LanePlan) -> Vec<Vec<u64>> {
        plan.lanes()
            .iter()
            .map(|l| l.units.iter().map(|u| u.index).collect())
            .collect()
    }

    #[test]
    fn contiguous_runs_balanced_by_size_and_deterministic() {
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
        // Total 160, shares of 53.3: midpoints 25, 55, 80, 105, 125, 150.
        assert_eq!(indexes(&a), vec![vec![0], vec![1, 2, 3], vec![4, 5]]);
        let loads: Vec<u64> = a
            .lanes()
            .iter()
            .map(|l| l.units.iter().map(|u| u.size).sum())
            .collect();
        assert_eq!(loads, vec![50, 60, 50]);
    }

    #[test]
    fn equal_units_split_evenly_in_order() {
        // 720 hourly objects of one size over 2 lanes: days 1-15 and 16-30.
        let plan = LanePlan::new("r", (0..720).map(|i| unit(i, 400_000)).collect(), 2).unwrap();
        assert_eq!(
            indexes(&plan),
            vec![(0..360).collect::<Vec<_>>(), (360..720).collect()]
        );
        // More lanes than units: no lane gets two.
        let plan = LanePlan::new("r", (0..3).map(|i| unit(i, 7)).collect(), 5).unwrap();
        let lens: Vec<usize> = plan.lanes().iter().map(|l| l.units.len()).collect();
        assert_eq!(lens, vec![1, 0, 1, 0, 1]);
    }

    #[test]
    fn unknown_sizes_split_by_count() {
        let units: Vec<_> = (0..8).map(|i| unit(i, 0)).collect();
        let plan = LanePlan::new("ddb", units, 4).unwrap();
        assert_eq!(
            indexes(&plan),
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
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
