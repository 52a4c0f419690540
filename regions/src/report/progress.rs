//! A progress bar for long reports, on stderr and only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports over fewer fleet-minutes than this (a day of one fleet) finish too quickly for a bar.
pub const LONG_REPORT_MINUTES: u64 = 1440;

/// A bar counting fleet-minutes read, or None when stderr is not a terminal or the work is short.
pub fn terminal_bar(total_minutes: u64) -> Option<ProgressBar> {
    if total_minutes <= LONG_REPORT_MINUTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total_minutes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} reading the history [{bar:40}] {pos}/{len} fleet-minutes ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}
