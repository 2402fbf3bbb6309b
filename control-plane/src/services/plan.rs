//! What the reconciler does to a service at one moment, as a pure function of what it
//! sees: which tasks to stop and how many of the current revision to start. Rolling
//! deployments follow ECS's rule: no more than `maximumPercent` of `desiredCount` tasks at
//! once (rounded down), no fewer than `minimumHealthyPercent` healthy (rounded up).

use super::model::DeploymentPolicy;

/// A task's health as the reconciler knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Not yet running, or running and not yet passed a check.
    Starting,
    Healthy,
    /// It failed its check `retries` times in a row.
    Unhealthy,
}

/// One unfinished task of the service.
#[derive(Debug, Clone)]
pub struct PlanTask {
    pub id: String,
    pub revision: u64,
    pub health: Health,
    /// Being stopped already (by the reconciler or a user).
    pub stopping: bool,
    /// When it was accepted (ms): the newest go first on a scale-in.
    pub accepted_ms: u64,
}

/// Why a task is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    Unhealthy,
    /// More tasks than desired.
    ScaleIn,
    /// Its revision is not the current one.
    Replaced,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub stop: Vec<(String, StopWhy)>,
    /// Tasks of the current revision to start.
    pub start: u32,
}

/// The decision for a service with `desired` tasks of revision `current`; `may_start` is
/// false while replacements back off after failures.
pub fn plan(
    desired: u32,
    current: u64,
    policy: DeploymentPolicy,
    tasks: &[PlanTask],
    may_start: bool,
) -> Plan {
    let mut out = Plan::default();
    let mut active: Vec<&PlanTask> = Vec::new();
    for t in tasks.iter().filter(|t| !t.stopping) {
        if t.health == Health::Unhealthy {
            out.stop.push((t.id.clone(), StopWhy::Unhealthy));
        } else {
            active.push(t);
        }
    }
    let (mut cur, old): (Vec<&PlanTask>, Vec<&PlanTask>) =
        active.iter().partition(|t| t.revision == current);
    let d = desired as usize;
    // Scale-in: the surplus of the current revision goes, those not yet healthy and the
    // newest first.
    if cur.len() > d {
        cur.sort_by_key(|t| {
            (
                t.health == Health::Healthy,
                std::cmp::Reverse(t.accepted_ms),
            )
        });
        for t in cur.drain(..cur.len() - d) {
            out.stop.push((t.id.clone(), StopWhy::ScaleIn));
        }
    }
    if old.is_empty() {
        if may_start {
            out.start = (d - cur.len()) as u32;
        }
        return out;
    }
    // A deployment: start new tasks within the maximum, stop old ones within the minimum.
    let min_healthy = (d * policy.minimum_healthy_percent as usize).div_ceil(100);
    let mut max_total = (d * policy.maximum_percent as usize / 100).max(d);
    if max_total == d && min_healthy == d && d > 0 {
        // Neither bound leaves room to move: allow one task more than desired.
        max_total = d + 1;
    }
    let total = cur.len() + old.len();
    if may_start {
        out.start = (d - cur.len()).min(max_total.saturating_sub(total)) as u32;
    }
    let healthy = cur
        .iter()
        .chain(&old)
        .filter(|t| t.health == Health::Healthy)
        .count();
    let mut may_lose = healthy.saturating_sub(min_healthy);
    let mut old = old;
    // Old tasks not yet healthy first, then the oldest.
    old.sort_by_key(|t| (t.health == Health::Healthy, t.accepted_ms));
    for t in old {
        if t.health == Health::Healthy {
            if may_lose == 0 {
                break;
            }
            may_lose -= 1;
        }
        out.stop.push((t.id.clone(), StopWhy::Replaced));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn task(id: &str, revision: u64, health: Health) -> PlanTask {
        PlanTask {
            id: id.into(),
            revision,
            health,
            stopping: false,
            accepted_ms: id.bytes().map(u64::from).sum(),
        }
    }

    fn pol(min: u32, max: u32) -> DeploymentPolicy {
        DeploymentPolicy {
            minimum_healthy_percent: min,
            maximum_percent: max,
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.stop.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn steady_state_starts_what_is_missing_and_stops_the_surplus() {
        let p = plan(3, 1, pol(100, 200), &[task("a", 1, Healthy)], true);
        assert_eq!((p.start, p.stop.len()), (2, 0));
        // Backing off: nothing starts.
        assert_eq!(plan(3, 1, pol(100, 200), &[], false).start, 0);
        // Scale 3 -> 1: the starting one and the newest healthy go.
        let ts = [
            task("a", 1, Healthy),
            task("b", 1, Healthy),
            task("c", 1, Starting),
        ];
        let p = plan(1, 1, pol(100, 200), &ts, true);
        assert_eq!(ids(&p), ["c", "b"]);
        assert!(p.stop.iter().all(|(_, w)| *w == StopWhy::ScaleIn));
        // An unhealthy task is stopped and replaced at once.
        let ts = [task("a", 1, Healthy), task("b", 1, Unhealthy)];
        let p = plan(2, 1, pol(100, 200), &ts, true);
        assert_eq!((ids(&p), p.start), (vec!["b"], 1));
        // One being stopped counts for nothing.
        let mut s = task("c", 1, Healthy);
        s.stopping = true;
        assert_eq!(
            plan(2, 1, pol(100, 200), &[task("a", 1, Healthy), s], true).start,
            1
        );
    }

    /// Runs a deployment to its end, making each started task healthy one step later; the
    /// bounds hold at every step.
    fn roll(d: u32, policy: DeploymentPolicy) -> usize {
        let mut tasks: Vec<PlanTask> = (0..d)
            .map(|i| task(&format!("old{i}"), 1, Healthy))
            .collect();
        let min = (d as usize * policy.minimum_healthy_percent as usize).div_ceil(100);
        for step in 0..50 {
            if tasks.iter().all(|t| t.revision == 2 && t.health == Healthy)
                && tasks.len() == d as usize
            {
                return step;
            }
            for t in &mut tasks {
                t.health = Healthy;
            }
            let p = plan(d, 2, policy, &tasks, true);
            tasks.retain(|t| !p.stop.iter().any(|(id, _)| *id == t.id));
            let healthy = tasks.iter().filter(|t| t.health == Healthy).count();
            assert!(healthy >= min, "step {step}: {healthy} healthy < {min}");
            for i in 0..p.start {
                tasks.push(task(&format!("new{step}-{i}"), 2, Starting));
            }
            let max = (d as usize * policy.maximum_percent as usize / 100).max(d as usize + 1);
            assert!(
                tasks.len() <= max,
                "step {step}: {} tasks > {max}",
                tasks.len()
            );
        }
        panic!("the deployment of {d} with {policy:?} never finished");
    }

    #[test]
    fn deployments_finish_within_their_bounds() {
        for d in [1, 2, 3, 5] {
            for (min, max) in [(100, 200), (50, 100), (100, 100), (0, 100), (50, 150)] {
                roll(d, pol(min, max));
            }
        }
    }

    #[test]
    fn old_tasks_stay_while_new_ones_are_not_healthy() {
        let ts = [
            task("o1", 1, Healthy),
            task("o2", 1, Healthy),
            task("n1", 2, Starting),
            task("n2", 2, Starting),
        ];
        let p = plan(2, 2, pol(100, 200), &ts, true);
        assert_eq!(p, Plan::default());
        // A rollback (current is 1 again): the new ones go, no old one started.
        let p = plan(2, 1, pol(100, 200), &ts, true);
        assert_eq!((ids(&p), p.start), (vec!["n1", "n2"], 0));
    }
}
