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
