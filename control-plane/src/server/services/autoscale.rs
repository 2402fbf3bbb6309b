//! Autoscaling on measured CPU (target tracking, as ECS and Kubernetes' HPA do it): the
//! count that would bring the tasks' average CPU use to the target is
//! `ceil(tasks × average / target)`, within `minCount`..`maxCount`. A scale-out needs the
//! average 10 % above the target and its cooldown past; a scale-in needs it 10 % below,
//! every desired task measured, and the scale-in cooldown past since any scaling.

use crate::services::Autoscaling;

/// When the service last scaled (ms since the epoch; in memory: a restart forgets it).
#[derive(Debug, Default, Clone, Copy)]
pub struct LastScaled {
    pub out_ms: u64,
    pub in_ms: u64,
}

/// How far from the target the average must be before the count changes.
const TOLERANCE: f64 = 0.1;

/// The new desired count, if it should change. `samples`: each measured task's CPU use, %
/// of its vCPUs.
pub fn decide(
    a: &Autoscaling,
    desired: u32,
    samples: &[f64],
    now_ms: u64,
    last: LastScaled,
) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    let avg = samples.iter().sum::<f64>() / samples.len() as f64;
    let target = f64::from(a.target_cpu_percent);
    let want =
        ((samples.len() as f64 * avg / target).ceil() as u32).clamp(a.min_count, a.max_count);
    let out_ready = now_ms >= last.out_ms + a.scale_out_cooldown_seconds * 1000;
    let in_ready = now_ms >= last.out_ms.max(last.in_ms) + a.scale_in_cooldown_seconds * 1000;
    if want > desired && avg > target * (1.0 + TOLERANCE) && out_ready {
        return Some(want);
    }
    if want < desired
        && avg < target * (1.0 - TOLERANCE)
        && samples.len() >= desired as usize
        && in_ready
    {
        return Some(want);
    }
    // Outside the bounds (they changed): back within them.
    let bounded = desired.clamp(a.min_count, a.max_count);
    (bounded != desired).then_some(bounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Autoscaling = Autoscaling {
        min_count: 1,
        max_count: 4,
        target_cpu_percent: 50,
        scale_out_cooldown_seconds: 10,
        scale_in_cooldown_seconds: 30,
    };

    #[test]
    fn the_count_tracks_the_target_within_bounds_and_cooldowns() {
        let never = LastScaled::default();
        // One task at 100 %: two would make it 50 %.
        assert_eq!(decide(&A, 1, &[100.0], 100_000, never), Some(2));
        // Two at 100 %: four (the max), not more.
        assert_eq!(decide(&A, 2, &[100.0, 100.0], 100_000, never), Some(4));
        assert_eq!(decide(&A, 4, &[100.0; 4], 100_000, never), None);
        // Near the target: nothing.
        assert_eq!(decide(&A, 2, &[52.0, 50.0], 100_000, never), None);
        // Within the scale-out cooldown: nothing yet.
        let just = LastScaled {
            out_ms: 95_000,
            in_ms: 0,
        };
        assert_eq!(decide(&A, 2, &[100.0, 100.0], 100_000, just), None);
        assert_eq!(decide(&A, 2, &[100.0, 100.0], 105_000, just), Some(4));
        // Idle: down to the min, once every task is measured and the cooldown is past.
        assert_eq!(decide(&A, 3, &[0.0, 0.0, 0.0], 200_000, just), Some(1));
        assert_eq!(decide(&A, 3, &[0.0, 0.0], 200_000, just), None);
        assert_eq!(decide(&A, 3, &[0.0; 3], 120_000, just), None);
        // No measure, no change.
        assert_eq!(decide(&A, 3, &[], 200_000, never), None);
        // Bounds that moved bring the count back within them.
        assert_eq!(decide(&A, 6, &[50.0; 6], 200_000, never), Some(4));
    }
}
