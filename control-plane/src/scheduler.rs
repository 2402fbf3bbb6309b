//! Admission by capacity: a task waits until its vCPUs and memory fit what the host has
//! left, first come first served (the head of the queue is never overtaken). Capacity
//! comes back when the task's [`Lease`] is dropped, on whatever path the task ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What the host offers to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InUse {
    pub cpus: u32,
    pub memory_mib: u64,
    pub tasks: u32,
}

struct Waiter {
    cpus: u32,
    memory_mib: u64,
    /// The lease travels in the channel: if the waiter gives up after the grant, dropping
    /// the unreceived lease gives the capacity back.
    grant: oneshot::Sender<Lease>,
}

struct State {
    used: InUse,
    queue: VecDeque<Waiter>,
}

struct Inner {
    capacity: Capacity,
    state: Mutex<State>,
}

#[derive(Clone)]
pub struct Scheduler(Arc<Inner>);

/// Held while a task uses capacity; dropping it gives the capacity back.
pub struct Lease {
    sched: Scheduler,
    cpus: u32,
    memory_mib: u64,
    armed: bool,
}

impl Scheduler {
    pub fn new(capacity: Capacity) -> Self {
        Self(Arc::new(Inner {
            capacity,
            state: Mutex::new(State {
                used: InUse::default(),
                queue: VecDeque::new(),
            }),
        }))
    }

    pub fn capacity(&self) -> Capacity {
        self.0.capacity
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn in_use(&self) -> InUse {
        self.state().used
    }

    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    fn fits(&self, used: &InUse, cpus: u32, memory_mib: u64) -> bool {
        used.cpus + cpus <= self.0.capacity.cpus
            && used.memory_mib + memory_mib <= self.0.capacity.memory_mib
    }

    /// Waits for room. Dropping the future gives up the place in the queue.
    pub async fn acquire(&self, cpus: u32, memory_mib: u64) -> Lease {
        let rx = {
            let mut st = self.state();
            if st.queue.is_empty() && self.fits(&st.used, cpus, memory_mib) {
                st.used.cpus += cpus;
                st.used.memory_mib += memory_mib;
                st.used.tasks += 1;
                return Lease {
                    sched: self.clone(),
                    cpus,
                    memory_mib,
                    armed: true,
                };
            } else {
                let (tx, rx) = oneshot::channel();
                st.queue.push_back(Waiter {
                    cpus,
                    memory_mib,
                    grant: tx,
                });
                rx
            }
        };
        match rx.await {
            Ok(lease) => lease,
            // Unreachable: a waiter's sender stays queued until it is granted.
            Err(_) => Box::pin(self.acquire(cpus, memory_mib)).await,
        }
    }

    fn release(&self, cpus: u32, memory_mib: u64) {
        let mut st = self.state();
        st.used.cpus -= cpus;
        st.used.memory_mib -= memory_mib;
        st.used.tasks -= 1;
        self.admit(&mut st);
    }

    /// Grants the queue's head while it fits; waiters that gave up are skipped.
    fn admit(&self, st: &mut State) {
        st.queue.retain(|w| !w.grant.is_closed());
        while let Some(w) = st.queue.front() {
            if !self.fits(&st.used, w.cpus, w.memory_mib) {
                break;
            }
            let Some(w) = st.queue.pop_front() else { break };
            st.used.cpus += w.cpus;
            st.used.memory_mib += w.memory_mib;
            st.used.tasks += 1;
            let lease = Lease {
                sched: self.clone(),
                cpus: w.cpus,
                memory_mib: w.memory_mib,
                armed: true,
            };
            if let Err(mut lease) = w.grant.send(lease) {
                // The waiter gave up just now: undo here (an armed drop would take our lock).
                lease.armed = false;
                st.used.cpus -= w.cpus;
                st.used.memory_mib -= w.memory_mib;
                st.used.tasks -= 1;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.sched.release(self.cpus, self.memory_mib);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn first_come_first_served_and_capacity_returns() {
        let s = Scheduler::new(Capacity {
            cpus: 2,
            memory_mib: 1024,
        });
        let a = s.acquire(1, 512).await;
        let b = s.acquire(1, 256).await;
        assert_eq!(s.in_use().cpus, 2);
        // A big task waits at the head; a small one behind it must not overtake it.
        let s2 = s.clone();
        let big = tokio::spawn(async move { s2.acquire(2, 512).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s3 = s.clone();
        let small = tokio::spawn(async move { s3.acquire(1, 64).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.queued(), 2);
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!big.is_finished() && !small.is_finished());
        drop(b);
        let big = big.await.unwrap();
        assert_eq!(s.in_use().cpus, 2);
        drop(big);
        let small = small.await.unwrap();
        assert_eq!(
            s.in_use(),
            InUse {
                cpus: 1,
                memory_mib: 64,
                tasks: 1
            }
        );
        drop(small);
        assert_eq!(s.in_use(), InUse::default());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_block_the_queue() {
        let s = Scheduler::new(Capacity {
            cpus: 1,
            memory_mib: 1024,
        });
        let a = s.acquire(1, 100).await;
        let s2 = s.clone();
        let gave_up = tokio::spawn(async move { s2.acquire(1, 100).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gave_up.abort();
        let s3 = s.clone();
        let next = tokio::spawn(async move { s3.acquire(1, 100).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let n = next.await.unwrap();
        assert_eq!(s.in_use().tasks, 1);
        drop(n);
        assert_eq!(s.in_use(), InUse::default());
    }
}
