//! A sampling profiler for the guest: a timer thread kicks each vCPU out of KVM_RUN with a
//! signal, the vCPU records its RIP, and at exit the samples are named from System.map.
//! On emulating hosts (PVM) this shows where a boot spends its time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::cpu::kick::kick_signal;
use crate::exit::{ExitReason, ExitSignal};
use crate::seccomp::{self, SeccompMode, ThreadKind};

#[derive(Default)]
pub struct Sampler {
    samples: Mutex<HashMap<u64, u64>>,
}

impl Sampler {
    pub fn record(&self, rip: u64) {
        *self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rip)
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Counts per symbol, most frequent first.
    pub fn by_symbol(&self, symbols: &SymbolMap) -> Vec<(String, u64)> {
        let mut per: HashMap<String, u64> = HashMap::new();
        for (rip, n) in self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            *per.entry(symbols.name(*rip)).or_default() += n;
        }
        let mut v: Vec<_> = per.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Starts a thread that kicks every vCPU thread `hz` times a second until `stop` is set.
/// It installs its seccomp filter first; if it cannot, the VM ends through `exit`.
pub fn start_kicker(
    threads: Vec<libc::pthread_t>,
    hz: u32,
    stop: Arc<AtomicBool>,
    seccomp: SeccompMode,
    exit: Arc<ExitSignal>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let period = Duration::from_micros(1_000_000 / u64::from(hz.max(1)));
    std::thread::Builder::new()
        .name("profiler".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(ThreadKind::Profiler, seccomp) {
                exit.signal(ExitReason::VmmError(e.to_string()));
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                for t in &threads {
                    // SAFETY: the pthread ids belong to vCPU threads that live until the
                    // process exits (they are never joined before the profiler stops).
                    unsafe { libc::pthread_kill(*t, kick_signal()) };
                }
            }
        })
}

/// Kernel symbols from System.map, sorted by address.
pub struct SymbolMap {
    syms: Vec<(u64, String)>,
}

impl SymbolMap {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                matches!(kind, "t" | "T" | "w" | "W").then(|| (addr, name.to_owned()))
            })
            .collect();
        syms.sort();
        Self { syms }
    }

    pub fn name(&self, rip: u64) -> String {
        if rip < 0x8000_0000_0000 {
            return "[user]".to_owned();
        }
        match self.syms.partition_point(|(a, _)| *a <= rip) {
            0 => format!("{rip:#x}"),
            i => self.syms[i - 1].1.clone(),
        }
    }
}

/// The report: one line per symbol with its share of samples.
pub fn report(sampler: &Sampler, symbols: &SymbolMap, top: usize) -> String {
    let total = sampler.total().max(1);
    let mut out = format!("# {} samples\n", sampler.total());
    for (name, n) in sampler.by_symbol(symbols).into_iter().take(top) {
        out.push_str(&format!(
            "{:6.2}% {:7} {}\n",
            n as f64 * 100.0 / total as f64,
            n,
            name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_samples_by_nearest_symbol_below() {
        let map = SymbolMap::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t foo\nffffffff81000200 D data\n",
        );
        assert_eq!(map.name(0xffffffff81000150), "foo");
        assert_eq!(map.name(0xffffffff81000010), "_stext");
        assert_eq!(map.name(0x401000), "[user]");
        let s = Sampler::default();
        s.record(0xffffffff81000150);
        s.record(0xffffffff81000160);
        s.record(0x401000);
        let r = report(&s, &map, 10);
        assert!(r.contains("66.67%       2 foo"), "{r}");
    }
}
