//! Admission by capacity: a task waits until its vCPUs and memory fit what the host has
//! left, first come first served, except that while the head of the queue does not fit,
//! smaller tasks behind it that do fit may start ahead of it — at most
//! [`MAX_OVERTAKES`] of them, after which everything waits for the head, so a large task
//! is never starved. Capacity comes back when the task's [`Lease`] is dropped, on
//! whatever path the task ends.

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

/// How many later tasks may start ahead of the queue's head while it does not fit.
pub const MAX_OVERTAKES: u32 = 4;

struct State {
    used: InUse,
    queue: VecDeque<Waiter>,
    /// Tasks that started ahead of the current head.
    head_overtaken: u32,
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
                head_overtaken: 0,
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
                // It may fit behind a head that does not.
                self.admit(&mut st);
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

    /// Grants the queue's head while it fits, then lets waiters behind a head that does
    /// not fit overtake it, up to [`MAX_OVERTAKES`]; waiters that gave up are skipped.
    fn admit(&self, st: &mut State) {
        st.queue.retain(|w| !w.grant.is_closed());
        while let Some(head) = st.queue.front() {
            let at = if self.fits(&st.used, head.cpus, head.memory_mib) {
                st.head_overtaken = 0;
                0
            } else if st.head_overtaken < MAX_OVERTAKES {
                match st
                    .queue
                    .iter()
                    .skip(1)
                    .position(|w| self.fits(&st.used, w.cpus, w.memory_mib))
                {
                    Some(i) => {
                        st.head_overtaken += 1;
                        i + 1
                    }
                    None => break,
                }
            } else {
                break;
            };
            let Some(w) = st.queue.remove(at) else { break };
            self.grant(st, w);
        }
    }

    fn grant(&self, st: &mut State, w: Waiter) {
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
        let s2 = s.clone();
        let first = tokio::spawn(async move { s2.acquire(1, 512).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s3 = s.clone();
        let second = tokio::spawn(async move { s3.acquire(1, 64).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.queued(), 2);
        drop(a);
        let first = first.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        drop(b);
        let second = second.await.unwrap();
        assert_eq!(
            s.in_use(),
            InUse {
                cpus: 2,
                memory_mib: 576,
                tasks: 2
            }
        );
        drop((first, second));
        assert_eq!(s.in_use(), InUse::default());
    }

    #[tokio::test]
    async fn small_tasks_overtake_a_big_one_a_bounded_number_of_times() {
        let s = Scheduler::new(Capacity {
            cpus: 2,
            memory_mib: 1024,
        });
        let held = s.acquire(1, 128).await;
        // The big task needs everything: it waits at the head.
        let s2 = s.clone();
        let mut big = tokio::spawn(async move { s2.acquire(2, 1024).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.queued(), 1);
        // Small ones that fit start ahead of it, one at a time, MAX_OVERTAKES of them.
        for n in 0..MAX_OVERTAKES {
            let small = s.acquire(1, 64).await;
            assert_eq!(s.in_use().tasks, 2, "overtake {n}");
            drop(small);
        }
        // The next small one waits behind the big one, which runs once `held` goes.
        let s3 = s.clone();
        let late = tokio::spawn(async move { s3.acquire(1, 64).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!late.is_finished(), "the big task must not be starved");
        drop(held);
        let b = (&mut big).await.unwrap();
        assert_eq!(s.in_use().cpus, 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!late.is_finished());
        drop(b);
        drop(late.await.unwrap());
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
