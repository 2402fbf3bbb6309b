//! Prometheus metrics at `GET /metrics`: tasks by state, phase latency histograms, stop
//! codes, and the host capacity in use.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::snapshots::{WarmCounters, WarmUsage};
use crate::scheduler::{Capacity, InUse};

/// The snapshots' gauges at one moment.
pub struct SnapshotFigures {
    /// Shapes with a base snapshot ready.
    pub ready: usize,
    pub warm: WarmUsage,
    pub warm_budget: u64,
}
use crate::tasks::{Task, TaskState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StopLabel {
    pub stop_code: String,
}

pub struct Metrics {
    registry: Registry,
    pub submitted: Counter,
    /// Stopped tasks pruned after their retention.
    pub pruned: Counter,
    stopped: Family<StopLabel, Counter>,
    tasks: Family<StateLabel, Gauge>,
    phases: Family<PhaseLabel, Histogram>,
    capacity_vcpus: Gauge,
    capacity_memory: Gauge,
    used_vcpus: Gauge,
    used_memory: Gauge,
    queued: Gauge,
    snapshots: Gauge,
    warm_snapshots: Gauge,
    warm_snapshot_bytes: Gauge,
    warm_snapshot_budget: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn phase_histogram() -> Histogram {
    // 1 ms to ~9 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("skiff");
        let submitted = Counter::default();
        let stopped = Family::<StopLabel, Counter>::default();
        let tasks = Family::<StateLabel, Gauge>::default();
        let phases = Family::<PhaseLabel, Histogram>::new_with_constructor(
            phase_histogram as fn() -> Histogram,
        );
        let (capacity_vcpus, capacity_memory, used_vcpus, used_memory, queued) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register("tasks_submitted", "Tasks accepted", submitted.clone());
        let pruned = Counter::default();
        registry.register(
            "tasks_pruned",
            "Stopped tasks deleted after their retention",
            pruned.clone(),
        );
        registry.register(
            "tasks_stopped",
            "Tasks stopped, by stop code",
            stopped.clone(),
        );
        registry.register("tasks", "Tasks by state", tasks.clone());
        registry.register(
            "task_phase_seconds",
            "Time each task spent in each phase",
            phases.clone(),
        );
        registry.register(
            "capacity_vcpus",
            "vCPUs tasks may use",
            capacity_vcpus.clone(),
        );
        registry.register(
            "capacity_memory_mib",
            "Memory (MiB) tasks may use",
            capacity_memory.clone(),
        );
        registry.register("used_vcpus", "vCPUs held by tasks", used_vcpus.clone());
        registry.register(
            "used_memory_mib",
            "Memory (MiB) held by tasks",
            used_memory.clone(),
        );
        registry.register(
            "tasks_queued",
            "Tasks accepted and not yet admitted (image being prepared or waiting for capacity)",
            queued.clone(),
        );
        let snapshots = Gauge::default();
        registry.register(
            "snapshots_ready",
            "VM shapes with a snapshot ready for the fast path",
            snapshots.clone(),
        );
        let (warm_snapshots, warm_snapshot_bytes, warm_snapshot_budget) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "warm_snapshots",
            "Per-image warm snapshots on disk",
            warm_snapshots.clone(),
        );
        registry.register(
            "warm_snapshot_bytes",
            "Disk the warm snapshots take (blocks in use)",
            warm_snapshot_bytes.clone(),
        );
        registry.register(
            "warm_snapshot_budget_bytes",
            "Disk the warm snapshots may take (--warm-snapshot-budget)",
            warm_snapshot_budget.clone(),
        );
        Self {
            registry,
            submitted,
            pruned,
            stopped,
            tasks,
            phases,
            capacity_vcpus,
            capacity_memory,
            used_vcpus,
            used_memory,
            queued,
            snapshots,
            warm_snapshots,
            warm_snapshot_bytes,
            warm_snapshot_budget,
        }
    }

    /// Adds the warm snapshots' counters (kept by the snapshots themselves).
    pub fn register_warm(&mut self, c: &WarmCounters) {
        for (name, help, counter) in [
            (
                "warm_snapshot_hits",
                "Tasks started from their image's warm snapshot",
                &c.hits,
            ),
            (
                "warm_snapshot_misses",
                "Tasks started from a base snapshot because their image had no warm one yet",
                &c.misses,
            ),
            ("warm_snapshot_builds", "Warm snapshots built", &c.builds),
            (
                "warm_snapshot_build_failures",
                "Warm snapshot builds that failed",
                &c.build_failures,
            ),
            (
                "warm_snapshot_evictions",
                "Warm snapshots deleted to keep within the disk budget",
                &c.evictions,
            ),
        ] {
            self.registry.register(name, help, counter.clone());
        }
    }

    /// Adds the services' series (kept by the services themselves).
    pub fn register_services(&mut self, m: &super::services::ServiceMetrics) {
        m.register(&mut self.registry);
    }

    /// Records one phase that the task's timestamps do not show (`network_attach`,
    /// `network_detach`).
    pub fn observe_phase(&self, phase: &str, seconds: f64) {
        self.phases
            .get_or_create(&PhaseLabel {
                phase: phase.into(),
            })
            .observe(seconds);
    }

    /// Records a stopped task's phase durations and stop code.
    pub fn observe_stopped(&self, t: &Task) {
        if let Some(code) = t.stop_code {
            self.stopped
                .get_or_create(&StopLabel {
                    stop_code: format!("{code:?}"),
                })
                .inc();
        }
        let p = &t.phases;
        let spans = [
            ("image", Some(p.accepted_ms), p.image_ready_ms),
            ("queue", p.image_ready_ms, p.vm_started_ms),
            ("boot", p.vm_started_ms, p.agent_ready_ms),
            ("exec", p.agent_ready_ms, p.process_started_ms),
            ("submit_to_exec", Some(p.accepted_ms), p.process_started_ms),
            ("run", p.process_started_ms, p.process_exited_ms),
            ("teardown", p.process_exited_ms, p.stopped_ms),
        ];
        for (phase, from, to) in spans {
            if let (Some(a), Some(b)) = (from, to) {
                self.phases
                    .get_or_create(&PhaseLabel {
                        phase: phase.into(),
                    })
                    .observe(b.saturating_sub(a) as f64 / 1000.0);
            }
        }
    }

    /// The Prometheus text exposition, with the gauges brought up to date.
    pub fn render(
        &self,
        counts: &[(TaskState, u64)],
        capacity: Capacity,
        used: InUse,
        queued: usize,
        snapshots: SnapshotFigures,
    ) -> String {
        self.snapshots.set(snapshots.ready as i64);
        self.warm_snapshots.set(snapshots.warm.count as i64);
        self.warm_snapshot_bytes.set(snapshots.warm.bytes as i64);
        self.warm_snapshot_budget.set(snapshots.warm_budget as i64);
        for (state, n) in counts {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(*n as i64);
        }
        self.capacity_vcpus.set(capacity.cpus as i64);
        self.capacity_memory.set(capacity.memory_mib as i64);
        self.used_vcpus.set(used.cpus as i64);
        self.used_memory.set(used.memory_mib as i64);
        self.queued.set(queued as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
