//! What the daemon is doing while it starts — waiting for Docker, fetching or
//! building the agent image (minutes on a first start), starting the agent —
//! for `connector status`, and, when stderr is a terminal, as a progress bar.
//! Under launchd (no terminal) the same steps are plain log lines.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::control::protocol::PhaseStatus;

/// The steps of a start (and of an agent image fetched again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    WaitingForDocker,
    CheckingImage,
    /// Bytes of the image's layers downloaded so far, of those known.
    Pulling {
        done: u64,
        total: u64,
    },
    /// The classic builder's `Step n/m`; 0/0 before the first step.
    Building {
        step: u32,
        of: u32,
    },
    StartingAgent,
    Ready,
}

impl Phase {
    /// The phase's name in `status --json`.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::WaitingForDocker => "waiting-for-docker",
            Phase::CheckingImage => "checking-image",
            Phase::Pulling { .. } => "pulling",
            Phase::Building { .. } => "building",
            Phase::StartingAgent => "starting-agent",
            Phase::Ready => "ready",
        }
    }

    pub fn detail(&self) -> Option<String> {
        match *self {
            Phase::Pulling { done, total } if total > 0 => Some(format!(
                "{:.1}/{:.1} MB",
                done as f64 / 1e6,
                total as f64 / 1e6
            )),
            Phase::Building { step, of } if of > 0 => Some(format!("step {step}/{of}")),
            _ => None,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Phase::WaitingForDocker => "waiting for Docker",
            Phase::CheckingImage => "checking the agent image",
            Phase::Pulling { .. } => "pulling the agent image",
            Phase::Building { .. } => "building the agent image",
            Phase::StartingAgent => "starting the agent",
            Phase::Ready => "ready",
        };
        match self.detail() {
            Some(d) => write!(f, "{what}, {d}"),
            None => f.write_str(what),
        }
    }
}

/// `Step 3/12 : RUN …`, as the classic builder streams it, gives (3, 12).
pub fn build_step(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim_start().strip_prefix("Step ")?;
    let (n, rest) = rest.split_once('/')?;
    let m: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let (n, m) = (n.parse().ok()?, m.parse().ok()?);
    (n >= 1 && n <= m).then_some((n, m))
}

/// Bytes downloaded per layer, from a pull's progress messages.
#[derive(Debug, Default)]
pub struct PullTally {
    layers: HashMap<String, (u64, u64)>,
}

/// Layers of an image pull, at most (a bound on what a registry may send).
const MAX_LAYERS: usize = 512;

impl PullTally {
    /// One progress message: `status` "Downloading" with current/total bytes
    /// of layer `id`, or "Download complete" / "Pull complete".
    pub fn update(&mut self, id: &str, status: &str, current: Option<i64>, total: Option<i64>) {
        if id.is_empty() || (self.layers.len() >= MAX_LAYERS && !self.layers.contains_key(id)) {
            return;
        }
        let entry = self.layers.entry(id.to_owned()).or_default();
        let total = total.and_then(|t| u64::try_from(t).ok()).unwrap_or(entry.1);
        match status {
            "Downloading" => {
                let current = current.and_then(|c| u64::try_from(c).ok()).unwrap_or(0);
                *entry = (current, total.max(current));
            }
            "Download complete" | "Pull complete" | "Already exists" => *entry = (total, total),
            _ => {}
        }
    }

    pub fn phase(&self) -> Phase {
        let (done, total) = self.layers.values().fold((0u64, 0u64), |(d, t), (a, b)| {
            (d.saturating_add(*a), t.saturating_add(*b))
        });
        Phase::Pulling { done, total }
    }
}

/// The current phase, shared by the start-up code, the control socket and,
/// in a terminal, a progress bar.
pub struct Progress {
    state: Mutex<(Phase, Instant)>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `terminal`: draw a progress bar on stderr (and route log lines around it).
    pub fn new(terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            *bar_slot() = Some(bar.clone());
            bar
        });
        Progress {
            state: Mutex::new((Phase::WaitingForDocker, Instant::now())),
            bar,
        }
    }

    fn state(&self) -> MutexGuard<'_, (Phase, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `phase`; the clock restarts only when the kind of phase
    /// changes (not on every build step).
    pub fn set(&self, phase: Phase) {
        let mut state = self.state();
        if state.0 == phase {
            return;
        }
        if std::mem::discriminant(&state.0) != std::mem::discriminant(&phase) {
            if phase != Phase::Ready {
                tracing::info!(phase = %phase, "start-up");
            }
            state.1 = Instant::now();
        }
        state.0 = phase.clone();
        drop(state);
        if let Some(bar) = &self.bar {
            draw(bar, &phase);
        }
    }

    /// A line of the builder's output (shown under the bar).
    pub fn message(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(line.chars().take(100).collect::<String>());
        }
    }

    pub fn status(&self) -> PhaseStatus {
        let state = self.state();
        PhaseStatus {
            name: state.0.name().to_owned(),
            detail: state.0.detail(),
            secs: state.1.elapsed().as_secs(),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *bar_slot() = None;
        }
    }
}

fn draw(bar: &ProgressBar, phase: &Phase) {
    let style = |template: &str| {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
    };
    match *phase {
        Phase::Building { step, of } if of > 0 => {
            bar.set_style(style(
                "{spinner} building the agent image [{bar:30}] step {pos}/{len} {elapsed} {msg}",
            ));
            bar.set_length(u64::from(of));
            bar.set_position(u64::from(step));
        }
        Phase::Pulling { done, total } if total > 0 => {
            bar.set_style(style(
                "{spinner} pulling the agent image [{bar:30}] {bytes}/{total_bytes} {elapsed}",
            ));
            bar.set_length(total);
            bar.set_position(done);
        }
        Phase::Ready => {
            bar.finish_and_clear();
            *bar_slot() = None;
        }
        _ => {
            bar.set_style(style("{spinner} {msg} {elapsed}"));
            bar.set_message(phase.to_string());
        }
    }
}

/// The bar being drawn, if any: log lines are written around it.
fn bar_slot() -> MutexGuard<'static, Option<ProgressBar>> {
    static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
    BAR.lock().unwrap_or_else(|p| p.into_inner())
}

/// stderr for the log, suspending the progress bar while a line is written
/// so the two never garble each other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = bar_slot().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn build_steps_are_read_from_the_classic_builders_stream() {
        assert_eq!(build_step("Step 3/12 : RUN cargo build"), Some((3, 12)));
        assert_eq!(build_step(" Step 12/12 : CMD [\"run\"]"), Some((12, 12)));
        for line in [
            "Step 0/3 : X",
            "Step 4/3 : X",
            "Step x/3",
            "Steps 1/2",
            " ---> abc",
            "",
        ] {
            assert_eq!(build_step(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_pull_adds_up_its_layers() {
        let mut t = PullTally::default();
        t.update("a", "Pulling fs layer", None, None);
        t.update("a", "Downloading", Some(500_000), Some(1_000_000));
        t.update("b", "Downloading", Some(0), Some(3_000_000));
        assert_eq!(
            t.phase(),
            Phase::Pulling {
                done: 500_000,
                total: 4_000_000
            }
        );
        assert_eq!(t.phase().detail().as_deref(), Some("0.5/4.0 MB"));
        t.update("a", "Download complete", None, None);
        t.update("b", "Pull complete", None, None);
        assert_eq!(
            t.phase(),
            Phase::Pulling {
                done: 4_000_000,
                total: 4_000_000
            }
        );
    }

    #[test]
    fn status_names_the_phase_and_its_detail() {
        let p = Progress::new(false);
        assert_eq!(p.status().name, "waiting-for-docker");
        p.set(Phase::Building { step: 2, of: 5 });
        let s = p.status();
        assert_eq!(
            (s.name.as_str(), s.detail.as_deref()),
            ("building", Some("step 2/5"))
        );
        assert_eq!(
            Phase::Building { step: 2, of: 5 }.to_string(),
            "building the agent image, step 2/5"
        );
        p.set(Phase::Ready);
        assert_eq!(p.status().name, "ready");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The builder's stream is the engine's: any line, no panic, and a
        /// step is never past its total.
        #[test]
        fn build_step_accepts_any_line(line in any::<String>()) {
            if let Some((n, m)) = build_step(&line) {
                prop_assert!(1 <= n && n <= m);
            }
        }

        #[test]
        fn pull_tally_stays_bounded(msgs in prop::collection::vec(
            ("[a-z]{0,3}", "Downloading|Download complete|Pull complete|x", any::<Option<i64>>(), any::<Option<i64>>()),
            0..200,
        )) {
            let mut t = PullTally::default();
            for (id, status, c, total) in &msgs {
                t.update(id, status, *c, *total);
            }
            prop_assert!(t.layers.len() <= MAX_LAYERS);
            if let Phase::Pulling { done, total } = t.phase() {
                prop_assert!(done <= total);
            }
        }
    }
}
