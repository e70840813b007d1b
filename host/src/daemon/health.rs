//! Is the data path alive? A pure state machine, driven by the daemon's
//! health tick with the time now and the time the agent was last heard from
//! (an authenticated datagram; see `connector_tunnel`).
//!
//! - Silence is measured on one monotonic clock. On a Mac that clock stops
//!   while the machine sleeps, the wall clock does not: a tick that comes
//!   much later than expected on either clock means the daemon itself was
//!   not running (asleep, or frozen), so nothing can be concluded about the
//!   agent. The silence clock restarts and the agent is asked to handshake
//!   again at once (its UDP mapping through Docker Desktop may be gone).
//! - A silent agent is always nudged (asked to handshake again) before it is
//!   replaced, and the nudge gets time to work.
//! - Replacements back off exponentially while the new agents stay silent
//!   too (a VM that cannot reach the host at all is not helped by a new
//!   container every 45 s), and start over once an agent is heard.

use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::control::protocol::HealthStatus;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Silence after which the agent is asked to handshake again (it sends
    /// a keepalive every 20 s).
    pub nudge_after: Duration,
    /// Silence after which the agent is replaced…
    pub replace_after: Duration,
    /// …but never sooner than this after the nudge.
    pub nudge_grace: Duration,
    /// The pauses after each replacement.
    pub backoff: ExponentialBuilder,
    /// How late a tick may be before it means "we were not running".
    pub max_tick_gap: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            nudge_after: Duration::from_secs(25),
            replace_after: Duration::from_secs(45),
            nudge_grace: Duration::from_secs(15),
            backoff: ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(60))
                .with_max_delay(Duration::from_secs(15 * 60))
                .without_max_times(),
            max_tick_gap: Duration::from_secs(15),
        }
    }
}

/// What the daemon should do after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Ask the agent to handshake again (SIGUSR1).
    Nudge(Why),
    /// Remove the agent and create a new one.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Nothing heard for `nudge_after`.
    Silent,
    /// The daemon was not running for a while (sleep, SIGSTOP).
    Resumed,
}

#[derive(Debug, Clone)]
pub struct Health {
    config: HealthConfig,
    /// Silence counts from the later of this and the last datagram.
    since: Instant,
    nudged_at: Option<Instant>,
    last_tick: Option<(Instant, SystemTime)>,
    /// Replacements since the agent was last heard.
    replacements: u32,
    not_before: Option<Instant>,
    last_replaced: Option<Instant>,
    last_resumed: Option<Instant>,
    docker_up: bool,
}

impl Health {
    /// The machine's creation counts as its first tick, so a daemon frozen
    /// before its first health check is noticed too.
    pub fn new(config: HealthConfig, now: Instant, wall: SystemTime) -> Health {
        Health {
            config,
            since: now,
            nudged_at: None,
            last_tick: Some((now, wall)),
            replacements: 0,
            not_before: None,
            last_replaced: None,
            last_resumed: None,
            docker_up: true,
        }
    }

    /// A new or adopted agent: its silence starts now.
    pub fn agent_changed(&mut self, now: Instant) {
        self.since = now;
        self.nudged_at = None;
    }

    fn silence(&self, now: Instant, last_heard: Option<Instant>) -> Duration {
        let from = last_heard.map_or(self.since, |h| h.max(self.since));
        now.saturating_duration_since(from)
    }

    pub fn tick(
        &mut self,
        now: Instant,
        wall: SystemTime,
        last_heard: Option<Instant>,
        docker_up: bool,
    ) -> Action {
        let previous = self.last_tick.replace((now, wall));
        self.docker_up = docker_up;
        if let Some((mono, then)) = previous {
            let gap = now
                .saturating_duration_since(mono)
                .max(wall.duration_since(then).unwrap_or_default());
            if gap > self.config.max_tick_gap {
                self.since = now;
                self.last_resumed = Some(now);
                self.nudged_at = docker_up.then_some(now);
                return if docker_up {
                    Action::Nudge(Why::Resumed)
                } else {
                    Action::Nothing
                };
            }
        }
        if !docker_up {
            // Nothing can be done about the agent; judge it once Docker is back.
            self.since = now;
            self.nudged_at = None;
            return Action::Nothing;
        }
        if last_heard.is_some_and(|h| h > self.since) {
            // Heard since the last (re)start: whatever replaced it works.
            self.replacements = 0;
            self.not_before = None;
        }
        let silence = self.silence(now, last_heard);
        if silence < self.config.nudge_after {
            self.nudged_at = None;
            return Action::Nothing;
        }
        let Some(nudged) = self.nudged_at else {
            self.nudged_at = Some(now);
            return Action::Nudge(Why::Silent);
        };
        if silence < self.config.replace_after
            || now.saturating_duration_since(nudged) < self.config.nudge_grace
            || self.not_before.is_some_and(|t| now < t)
        {
            return Action::Nothing;
        }
        self.replacements += 1;
        // The n-th pause of the sequence; past 16 it is at the cap anyway.
        let nth = (self.replacements - 1).min(16) as usize;
        let pause = self.config.backoff.build().nth(nth).unwrap_or_default();
        self.not_before = Some(now + pause);
        self.last_replaced = Some(now);
        self.since = now;
        self.nudged_at = None;
        Action::Replace
    }

    /// The `health` section of `connector status`.
    pub fn status(&self, now: Instant, last_heard: Option<Instant>) -> HealthStatus {
        let silence = self.silence(now, last_heard);
        let backing_off = self.not_before.filter(|t| now < *t);
        let state = if !self.docker_up {
            "docker-unreachable"
        } else if silence < self.config.nudge_after {
            "ok"
        } else if backing_off.is_some() && silence >= self.config.replace_after {
            "backing-off"
        } else if self.nudged_at.is_some() {
            "nudged"
        } else {
            "silent"
        };
        let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs());
        HealthStatus {
            state: state.to_owned(),
            silence_secs: silence.as_secs(),
            replacements: self.replacements,
            last_replacement_secs: ago(self.last_replaced),
            next_replacement_in_secs: backing_off.map(|t| (t - now).as_secs()),
            last_resume_secs: ago(self.last_resumed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clock: both clocks start together, in seconds after t0.
    struct Clock {
        t0: Instant,
        w0: SystemTime,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                t0: Instant::now(),
                w0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }
        }
        fn mono(&self, s: u64) -> Instant {
            self.t0 + Duration::from_secs(s)
        }
        fn wall(&self, s: u64) -> SystemTime {
            self.w0 + Duration::from_secs(s)
        }
        /// Ticks every 2 s on both clocks from `from` to `to`, with the agent
        /// last heard at `heard`; the actions, with the second they happened.
        fn run(
            &self,
            h: &mut Health,
            from: u64,
            to: u64,
            heard: Option<u64>,
        ) -> Vec<(u64, Action)> {
            let mut out = Vec::new();
            for s in (from..=to).step_by(2) {
                let a = h.tick(
                    self.mono(s),
                    self.wall(s),
                    heard.map(|x| self.mono(x)),
                    true,
                );
                if a != Action::Nothing {
                    out.push((s, a));
                }
            }
            out
        }
    }

    #[test]
    fn a_live_agent_is_left_alone() {
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        for s in (0..300).step_by(2) {
            // A keepalive every 20 s.
            let heard = c.mono(s - s % 20);
            assert_eq!(
                h.tick(c.mono(s), c.wall(s), Some(heard), true),
                Action::Nothing
            );
        }
        assert_eq!(h.status(c.mono(300), Some(c.mono(300))).state, "ok");
    }

    #[test]
    fn silence_nudges_first_then_replaces_after_the_grace() {
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        let actions = c.run(&mut h, 0, 60, Some(0));
        assert_eq!(
            actions,
            vec![(26, Action::Nudge(Why::Silent)), (46, Action::Replace)]
        );
        let st = h.status(c.mono(60), Some(c.mono(0)));
        assert_eq!(st.replacements, 1);
        assert_eq!(st.last_replacement_secs, Some(14));
    }

    #[test]
    fn a_late_nudge_still_gets_its_grace() {
        let c = Clock::new();
        let cfg = HealthConfig::default();
        let mut h = Health::new(cfg.clone(), c.mono(0), c.wall(0));
        // Docker was down until 40 s: silence restarts then.
        for s in (0..=40).step_by(2) {
            assert_eq!(h.tick(c.mono(s), c.wall(s), None, false), Action::Nothing);
        }
        assert_eq!(h.status(c.mono(40), None).state, "docker-unreachable");
        let actions = c.run(&mut h, 42, 120, None);
        assert_eq!(actions[0], (66, Action::Nudge(Why::Silent)));
        assert_eq!(actions[1], (86, Action::Replace));
    }

    #[test]
    fn sleep_seen_on_the_wall_clock_restarts_the_silence_clock() {
        // macOS: the monotonic clock stops during sleep, the wall clock does not.
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        assert!(c.run(&mut h, 0, 10, Some(10)).is_empty());
        // Asleep for an hour: the next tick is 2 s later on the monotonic
        // clock, an hour later on the wall clock.
        let a = h.tick(c.mono(12), c.wall(3612), Some(c.mono(10)), true);
        assert_eq!(a, Action::Nudge(Why::Resumed));
        // The agent answers the nudge within seconds: nothing else happens.
        let mut actions = Vec::new();
        for s in (14..120).step_by(2) {
            let heard = if s < 16 { 10 } else { (s - s % 20).max(16) };
            let a = h.tick(c.mono(s), c.wall(s + 3600), Some(c.mono(heard)), true);
            if a != Action::Nothing {
                actions.push((s, a));
            }
        }
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(
            h.status(c.mono(120), Some(c.mono(116))).last_resume_secs,
            Some(108)
        );
    }

    #[test]
    fn a_freeze_before_the_first_tick_is_noticed_too() {
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        let a = h.tick(c.mono(57), c.wall(57), None, true);
        assert_eq!(a, Action::Nudge(Why::Resumed));
        assert_eq!(c.run(&mut h, 59, 80, Some(60)), vec![]);
    }

    #[test]
    fn a_frozen_daemon_does_not_blame_the_agent() {
        // SIGSTOP for 50 s (Linux, or a debugger): both clocks moved on.
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        assert!(c.run(&mut h, 0, 20, Some(20)).is_empty());
        let a = h.tick(c.mono(72), c.wall(72), Some(c.mono(20)), true);
        assert_eq!(a, Action::Nudge(Why::Resumed));
        // Before the datagrams queued during the freeze are read, the next
        // ticks see a long silence, but it counts from the resume.
        for s in (74..=96).step_by(2) {
            assert_eq!(
                h.tick(c.mono(s), c.wall(s), Some(c.mono(20)), true),
                Action::Nothing,
                "at {s}"
            );
        }
    }

    #[test]
    fn replacements_back_off_while_agents_stay_silent_and_reset_when_heard() {
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        let replaced: Vec<u64> = c
            .run(&mut h, 0, 1200, None)
            .into_iter()
            .filter(|(_, a)| *a == Action::Replace)
            .map(|(s, _)| s)
            .collect();
        // 46 s, then pauses of 60, 120, 240, 480 s at least.
        assert_eq!(replaced[0], 46);
        let gaps: Vec<u64> = replaced.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![60, 120, 240, 480], "replaced at {replaced:?}");
        let st = h.status(c.mono(1000), None);
        assert_eq!(st.state, "backing-off");
        assert!(st.next_replacement_in_secs.is_some());
        // An agent heard again clears the back-off.
        h.tick(c.mono(1202), c.wall(1202), Some(c.mono(1201)), true);
        assert_eq!(h.status(c.mono(1202), Some(c.mono(1201))).replacements, 0);
        let after: Vec<_> = c.run(&mut h, 1204, 1260, Some(1201));
        assert_eq!(
            after,
            vec![(1226, Action::Nudge(Why::Silent)), (1246, Action::Replace)]
        );
    }

    #[test]
    fn a_new_agent_gets_its_own_silence_budget() {
        let c = Clock::new();
        let mut h = Health::new(HealthConfig::default(), c.mono(0), c.wall(0));
        assert_eq!(c.run(&mut h, 0, 24, None), vec![]);
        h.agent_changed(c.mono(24));
        assert_eq!(c.run(&mut h, 26, 48, None), vec![]);
        assert_eq!(
            c.run(&mut h, 50, 70, None),
            vec![(50, Action::Nudge(Why::Silent)), (70, Action::Replace)]
        );
    }
}
