//! When the daemon does what: one deadline per kind of work, each
//! independent of the others, as a pure type driven by the caller's clock.
//!
//! A burst of Docker events is handled together (debounce), a kind cluster
//! that is still starting is looked at again later (retry), everything is
//! reconciled now and then even without events (resync), and the data path is
//! checked every few seconds (health). A deadline of one kind never moves
//! another: a network created while a cluster is still starting is routed
//! after the debounce, not after the cluster's next retry.

use std::time::{Duration, Instant};

/// The kinds of work the daemon's loop schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// Make sure the agent container runs with our configuration.
    Agent,
    /// Re-plan the host and VM routes (Docker networks, kind CIDRs).
    Routes,
    /// Look at kind clusters again (one is still starting).
    KindRescan,
    /// Reconcile everything even without events.
    Resync,
    /// Check the data path.
    Health,
}

const JOBS: usize = 5;

impl Job {
    const ALL: [Job; JOBS] = [
        Job::Agent,
        Job::Routes,
        Job::KindRescan,
        Job::Resync,
        Job::Health,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Deadlines, at most one per [`Job`].
#[derive(Debug, Clone)]
pub struct Scheduler {
    due: [Option<Instant>; JOBS],
    every: [Option<Duration>; JOBS],
}

impl Scheduler {
    /// `periodic` jobs first run one period after `now`, then one period
    /// after each run (not after each deadline: a daemon that was frozen for
    /// a minute runs a missed periodic job once, not thirty times).
    pub fn new(now: Instant, periodic: &[(Job, Duration)]) -> Scheduler {
        let mut s = Scheduler {
            due: [None; JOBS],
            every: [None; JOBS],
        };
        for &(job, period) in periodic {
            s.every[job.index()] = Some(period);
            s.due[job.index()] = Some(now + period);
        }
        s
    }

    /// Work wanted soon: `delay` after `now`, or earlier if it is already
    /// due earlier. A burst of requests is handled together, and never later
    /// than `delay` after the first.
    pub fn soon(&mut self, job: Job, now: Instant, delay: Duration) {
        let at = now + delay;
        let slot = &mut self.due[job.index()];
        *slot = Some(slot.map_or(at, |d| d.min(at)));
    }

    /// Sets the deadline, earlier or later than before (retries, backoff).
    pub fn at(&mut self, job: Job, when: Instant) {
        self.due[job.index()] = Some(when);
    }

    pub fn cancel(&mut self, job: Job) {
        self.due[job.index()] = None;
    }

    pub fn deadline(&self, job: Job) -> Option<Instant> {
        self.due[job.index()]
    }

    /// The earliest deadline, if any work is scheduled.
    pub fn next(&self) -> Option<Instant> {
        self.due.iter().flatten().min().copied()
    }

    /// Every job due at `now`, in [`Job`] order; periodic ones are scheduled
    /// again one period from `now`, the others are done.
    pub fn take_due(&mut self, now: Instant) -> Vec<Job> {
        let mut jobs = Vec::new();
        for job in Job::ALL {
            let i = job.index();
            if self.due[i].is_some_and(|d| d <= now) {
                jobs.push(job);
                self.due[i] = self.every[i].map(|period| now + period);
            }
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn scheduler(t0: Instant) -> Scheduler {
        Scheduler::new(t0, &[(Job::Resync, 30 * S), (Job::Health, 2 * S)])
    }

    #[test]
    fn a_pending_kind_retry_does_not_hold_back_a_network_event() {
        let t0 = Instant::now();
        let mut s = scheduler(t0);
        // A cluster still starting, looked at again in 24 s…
        s.at(Job::KindRescan, t0 + 24 * S);
        // …and a network created now: routed after the debounce.
        s.soon(Job::Routes, t0, 100 * MS);
        assert_eq!(s.next(), Some(t0 + 100 * MS));
        assert_eq!(s.take_due(t0 + 100 * MS), vec![Job::Routes]);
        assert_eq!(s.deadline(Job::KindRescan), Some(t0 + 24 * S));
        assert_eq!(s.deadline(Job::Routes), None);
    }

    #[test]
    fn a_burst_is_handled_together_and_never_postponed() {
        let t0 = Instant::now();
        let mut s = scheduler(t0);
        s.soon(Job::Routes, t0, 100 * MS);
        s.soon(Job::Routes, t0 + 60 * MS, 100 * MS);
        s.soon(Job::Agent, t0 + 90 * MS, 100 * MS);
        assert_eq!(s.take_due(t0 + 99 * MS), Vec::<Job>::new());
        assert_eq!(s.take_due(t0 + 100 * MS), vec![Job::Routes]);
        assert_eq!(s.take_due(t0 + 190 * MS), vec![Job::Agent]);
    }

    #[test]
    fn periodic_jobs_run_once_after_a_freeze_then_keep_their_period() {
        let t0 = Instant::now();
        let mut s = scheduler(t0);
        assert_eq!(s.next(), Some(t0 + 2 * S));
        // The daemon was stopped for 50 s: one health check, one resync.
        let t = t0 + 50 * S;
        assert_eq!(s.take_due(t), vec![Job::Resync, Job::Health]);
        assert_eq!(s.deadline(Job::Health), Some(t + 2 * S));
        assert_eq!(s.deadline(Job::Resync), Some(t + 30 * S));
        assert_eq!(s.take_due(t + S), Vec::<Job>::new());
    }

    #[test]
    fn retries_move_both_ways_and_can_be_cancelled() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(t0, &[]);
        assert_eq!(s.next(), None);
        s.at(Job::KindRescan, t0 + 3 * S);
        s.at(Job::KindRescan, t0 + 6 * S);
        assert_eq!(s.next(), Some(t0 + 6 * S));
        s.at(Job::KindRescan, t0 + S);
        assert_eq!(s.next(), Some(t0 + S));
        s.cancel(Job::KindRescan);
        assert_eq!(s.next(), None);
        assert!(s.take_due(t0 + 60 * S).is_empty());
    }
}
