//! The sender's bounded on-disk spool of unacknowledged sketches.
//!
//! A directory holding one file per sketch, `SEQUENCE.sketch` (20-digit zero-padded, so names
//! sort by sequence), each an encoded frame, plus `next-sequence`, the next sequence number to
//! assign. Files are written to a temporary name, synced, then renamed, so a crash leaves either
//! the whole sketch or none of it. Sequence numbers survive restarts: `next-sequence` is advanced
//! (and synced) before a sketch is written under it, and on open it is never below the highest
//! spooled sequence + 1, so a restarted node never reuses a sequence the receiver has seen.
//!
//! Invariants: at most `capacity` sketches are held; when a new one arrives at capacity, the
//! oldest is deleted and counted in [`Spool::dropped`] (never silently); sketches leave the spool
//! in sequence order, only when acknowledged ([`Spool::remove`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const SUFFIX: &str = ".sketch";
const NEXT_SEQUENCE: &str = "next-sequence";

/// See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    capacity: usize,
    seqs: BTreeSet<u64>,
    next: u64,
    dropped: u64,
    corrupt: u64,
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`, holding at most `capacity` sketches.
    /// Leftover temporary files are removed; unreadable sketch names are counted as corrupt and
    /// removed. If the directory holds more than `capacity` sketches, the oldest are dropped.
    pub fn open(dir: &Path, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Argument("spool capacity must be at least 1".into()));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("creating spool directory", dir, e))?;
        let mut spool = Self {
            dir: dir.to_path_buf(),
            capacity,
            seqs: BTreeSet::new(),
            next: 1,
            dropped: 0,
            corrupt: 0,
        };
        let entries = fs::read_dir(dir).map_err(|e| Error::io("listing spool", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing spool", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(stem) = name.strip_suffix(SUFFIX) {
                match stem.parse::<u64>() {
                    Ok(seq) => {
                        spool.seqs.insert(seq);
                    }
                    Err(_) => {
                        spool.corrupt += 1;
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        let stored_next = match fs::read_to_string(dir.join(NEXT_SEQUENCE)) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(Error::io("reading", dir.join(NEXT_SEQUENCE), e)),
        };
        let after_spooled = spool.seqs.last().map_or(1, |s| s.saturating_add(1));
        spool.next = stored_next.max(after_spooled).max(1);
        while spool.seqs.len() > spool.capacity {
            spool.drop_oldest()?;
        }
        Ok(spool)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// The sequence the next [`Spool::append`] will use.
    pub fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Assign the next sequence, let `encode` build the frame for it, and store it durably.
    /// Drops (and counts) the oldest sketch first if the spool is full. Returns the sequence.
    pub fn append(&mut self, encode: impl FnOnce(u64) -> Result<Vec<u8>>) -> Result<u64> {
        let seq = self.next;
        let frame = encode(seq)?;
        self.next = seq
            .checked_add(1)
            .ok_or_else(|| Error::Argument("sequence numbers exhausted".into()))?;
        write_synced(
            &self.dir.join(NEXT_SEQUENCE),
            self.next.to_string().as_bytes(),
        )?;
        while self.seqs.len() >= self.capacity {
            self.drop_oldest()?;
        }
        write_synced(&self.path_of(seq), &frame)?;
        self.seqs.insert(seq);
        Ok(seq)
    }

    fn drop_oldest(&mut self) -> Result<()> {
        if let Some(seq) = self.seqs.pop_first() {
            let path = self.path_of(seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("dropping spooled sketch", path, e)),
            }
            self.dropped += 1;
            tracing::warn!(
                sequence = seq,
                dropped_total = self.dropped,
                "spool full: dropped the oldest unacknowledged sketch"
            );
        }
        Ok(())
    }

    /// The oldest spooled sketch: its sequence and frame. A file that cannot be read is removed
    /// and counted as corrupt, and the next one is tried.
    pub fn oldest(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        while let Some(&seq) = self.seqs.first() {
            let path = self.path_of(seq);
            match fs::read(&path) {
                Ok(bytes) => return Ok(Some((seq, bytes))),
                Err(e) => {
                    tracing::warn!(sequence = seq, error = %e, "unreadable spooled sketch removed");
                    self.seqs.remove(&seq);
                    self.corrupt += 1;
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(None)
    }

    /// Forget `seq` after its acknowledgement (no-op if it was dropped meanwhile).
    pub fn remove(&mut self, seq: u64) -> Result<()> {
        if self.seqs.remove(&seq) {
            let path = self.path_of(seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing acknowledged sketch", path, e)),
            }
        }
        Ok(())
    }

    /// Mark a spooled sketch as undeliverable (the receiver rejected it as malformed): removed
    /// and counted as corrupt rather than retried forever.
    pub fn discard(&mut self, seq: u64) -> Result<()> {
        if self.seqs.contains(&seq) {
            self.corrupt += 1;
        }
        self.remove(seq)
    }

    /// Sketches waiting.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sketches dropped because the spool was full, since this spool was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Spooled files found unreadable or rejected by the receiver, since opened.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// Spooled sequences, oldest first.
    pub fn sequences(&self) -> Vec<u64> {
        self.seqs.iter().copied().collect()
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        for i in 0..3u8 {
            let seq = s.append(|seq| Ok(vec![i, seq as u8])).unwrap();
            assert_eq!(seq, u64::from(i) + 1);
        }
        assert_eq!(s.oldest().unwrap(), Some((1, vec![0, 1])));
        s.remove(1).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(s.sequences(), vec![2, 3]);
        assert_eq!(s.next_sequence(), 4);
        assert_eq!(s.oldest().unwrap().map(|x| x.0), Some(2));
    }

    #[test]
    fn sequence_never_reused_after_everything_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        let a = s.append(|_| Ok(vec![1])).unwrap();
        s.remove(a).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 10).unwrap();
        assert!(s.is_empty());
        assert!(s.append(|_| Ok(vec![1])).unwrap() > a);
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 3).unwrap();
        for _ in 0..5 {
            s.append(|seq| Ok(vec![seq as u8])).unwrap();
        }
        assert_eq!(s.sequences(), vec![3, 4, 5]);
        assert_eq!(s.dropped(), 2);
        drop(s);
        // Reopening with a smaller capacity drops (and counts) the excess too.
        let s = Spool::open(dir.path(), 2).unwrap();
        assert_eq!(s.sequences(), vec![4, 5]);
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn failed_encode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 3).unwrap();
        assert!(s.append(|_| Err(Error::Argument("no".into()))).is_err());
        assert!(s.is_empty());
        assert_eq!(s.next_sequence(), 1);
    }

    #[test]
    fn junk_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("abc.sketch"), b"x").unwrap();
        fs::write(dir.path().join("00000000000000000001.tmp"), b"x").unwrap();
        fs::write(dir.path().join("next-sequence"), b"garbage").unwrap();
        let s = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(s.corrupt(), 1);
        assert_eq!(s.next_sequence(), 1);
        assert!(!dir.path().join("abc.sketch").exists());
    }
}
