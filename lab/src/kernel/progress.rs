//! Progress of `up` and `down`: a bar per phase on a terminal, nothing when
//! stderr is not one, and the phase timings either way for the summary.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Phases with fewer steps than this pass without a bar: a handful of
/// nodes is built before a bar would be read.
const DRAW_FROM: usize = 8;

/// Reports phases of a long operation.
pub struct Progress {
    draw: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    bar: Option<ProgressBar>,
    phase: Option<(String, Instant)>,
    timings: Vec<(String, Duration)>,
}

impl Progress {
    /// Draws bars when `draw` and stderr is a terminal.
    pub fn new(draw: bool) -> Self {
        use std::io::IsTerminal;
        Progress {
            draw: draw && std::io::stderr().is_terminal(),
            inner: Mutex::new(Inner {
                bar: None,
                phase: None,
                timings: Vec::new(),
            }),
        }
    }

    /// Reports nothing, times everything.
    pub fn quiet() -> Self {
        Self::new(false)
    }

    fn close(inner: &mut Inner) {
        if let Some((name, at)) = inner.phase.take() {
            inner.timings.push((name, at.elapsed()));
        }
        if let Some(bar) = inner.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Starts a phase of `total` steps.
    pub fn phase(&self, name: &str, total: usize) {
        let mut inner = self.inner.lock().expect("progress lock");
        Self::close(&mut inner);
        inner.phase = Some((name.to_string(), Instant::now()));
        if self.draw && total >= DRAW_FROM {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {elapsed}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            inner.bar = Some(bar);
        }
    }

    /// One step of the current phase done.
    pub fn step(&self) {
        if let Some(bar) = &self.inner.lock().expect("progress lock").bar {
            bar.inc(1);
        }
    }

    /// Ends the last phase.
    pub fn finish(&self) {
        Self::close(&mut self.inner.lock().expect("progress lock"));
    }

    /// The phases so far with their durations.
    pub fn timings(&self) -> Vec<(String, Duration)> {
        let mut inner = self.inner.lock().expect("progress lock");
        Self::close(&mut inner);
        inner.timings.clone()
    }
}

/// A table's text with no trailing blanks.
pub fn text(t: &comfy_table::Table) -> String {
    t.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// A borderless table with a header, as status and doctor print them.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    t
}
