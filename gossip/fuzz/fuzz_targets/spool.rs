//! Fuzz the spool's recovery from whatever is on disk: the input becomes the files of a spool
//! directory, which is opened, drained and reopened (`prescale_gossip::fuzz_checks::spool`,
//! which `tests/spool_corpus.rs` replays).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

/// One scratch directory per fuzzing process (parallel jobs are separate processes).
fn scratch() -> &'static PathBuf {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("prescale-spool-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    fuzz_checks::spool(data, scratch());
});
