//! A progress bar for long replays, shown on stderr only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Traces shorter than this many simulated minutes finish too quickly to need a bar.
const LONG_REPLAY_MINUTES: u64 = 20_000;

/// A bar counting simulated minutes, or None when stderr is not a terminal or the work is short.
pub fn terminal_bar(total_minutes: u64) -> Option<ProgressBar> {
    if total_minutes < LONG_REPLAY_MINUTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total_minutes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} replaying [{bar:40}] {pos}/{len} minutes ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

/// A replay's progress as its callback reports it: the terminal bar when there is one.
pub struct ReplayProgress(Option<ProgressBar>);

impl ReplayProgress {
    /// Progress over `total_minutes` simulated minutes (a bar only where [`terminal_bar`] draws
    /// one).
    pub fn new(total_minutes: u64) -> Self {
        ReplayProgress(terminal_bar(total_minutes))
    }

    /// `done` minutes have been simulated (redrawn every 256).
    pub fn update(&self, done: u64) {
        if let Some(bar) = &self.0 {
            if done.is_multiple_of(256) {
                bar.set_position(done);
            }
        }
    }

    /// The replay is over: the bar is cleared.
    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
