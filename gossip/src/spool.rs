//! The sender's bounded on-disk spool of unacknowledged sketches.
//!
//! A directory holding one file per sketch, `SEQUENCE.sketch` (20-digit zero-padded, so names
//! sort by sequence), each an encoded frame, plus `next-sequence`, the next sequence number to
//! assign. Files are written to a temporary name, synced, renamed, and the directory synced, so a
//! crash or power loss leaves either the whole sketch or none of it, and never an older
//! `next-sequence`. Sequence numbers survive restarts: `next-sequence` is advanced (and synced)
//! before a sketch is written under it, and on open it is never below the highest spooled
//! sequence + 1 and is stored at once, so a restarted node never reuses a sequence the receiver
//! has seen. Sequences end at `u64::MAX`: an append past the last is refused with an error.
//!
//! A spool without a readable `next-sequence` — new, wiped, or corrupted — starts a new epoch:
//! its first sequence is the current time in microseconds since the Unix epoch (or the highest
//! spooled + 1, when larger). A node sends at most a few sketches a second, so every sequence it
//! used before is below that, and the receiver (which takes a sequence above the last it stored
//! as new) stores the new sketches rather than acknowledging them as duplicates.
//!
//! One sender at a time: the spool holds an advisory `flock` on `DIR/lock` while open, and a
//! second open of the directory (another node configured with the same `spool_dir`, whose
//! sequences and acknowledgements would interleave with this one's) is refused with
//! [`Error::SpoolInUse`].
//!
//! Invariants: at most `capacity` sketches are held; when a new one arrives at capacity, the
//! oldest is deleted and counted in [`Spool::dropped`] (never silently); sketches leave the spool
//! in sequence order, only when acknowledged ([`Spool::remove`]); nothing read from the
//! directory is taken in whole before its size is checked: a sketch file larger than the
//! largest frame the sender writes (the spool's `max_file`), or a `next-sequence` longer than a
//! number, is damage, removed and counted in [`Spool::corrupt`].

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const SUFFIX: &str = ".sketch";
const NEXT_SEQUENCE: &str = "next-sequence";
const LOCK: &str = "lock";
/// Longest `next-sequence` content read: a `u64` in decimal, with room for leading zeros and
/// whitespace (a longer file is damage, and starts a new epoch).
pub(crate) const MAX_NEXT_SEQUENCE_LEN: u64 = 4096;

/// See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    capacity: usize,
    /// Largest sketch file read back, in bytes.
    max_file: u64,
    seqs: BTreeSet<u64>,
    next: u64,
    dropped: u64,
    corrupt: u64,
    /// Held while the spool is open (see the module docs).
    _lock: fs::File,
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`, holding at most `capacity` sketches.
    /// Leftover temporary files are removed; unreadable sketch names are counted as corrupt and
    /// removed. If the directory holds more than `capacity` sketches, the oldest are dropped.
    /// Sketch files up to the default frame limit are read back; see [`Spool::open_with_max_file`].
    pub fn open(dir: &Path, capacity: usize) -> Result<Self> {
        let limits = crate::codec::Limits::default();
        Self::open_with_max_file(dir, capacity, crate::codec::HEADER_LEN + limits.max_frame)
    }

    /// [`Spool::open`] for a writer whose frames are at most `max_file` bytes: a sketch file
    /// larger than that is damage, never read in whole.
    pub fn open_with_max_file(dir: &Path, capacity: usize, max_file: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Argument("spool capacity must be at least 1".into()));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("creating spool directory", dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock_path = dir.join(LOCK);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("opening spool lock", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::SpoolInUse {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                })
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("locking spool", &lock_path, e))
            }
        }
        let mut spool = Self {
            dir: dir.to_path_buf(),
            capacity,
            max_file: u64::try_from(max_file).unwrap_or(u64::MAX),
            seqs: BTreeSet::new(),
            next: 1,
            dropped: 0,
            corrupt: 0,
            _lock: lock,
        };
        let entries = fs::read_dir(dir).map_err(|e| Error::io("listing spool", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing spool", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(stem) = name.strip_suffix(SUFFIX) {
                // Only names this spool writes: `+5.sketch` or `5.sketch` would parse, yet
                // never be found again under `path_of`; nothing can follow `u64::MAX`.
                match stem.parse::<u64>() {
                    Ok(seq) if seq < u64::MAX && format!("{seq:020}") == stem => {
                        spool.seqs.insert(seq);
                    }
                    _ => {
                        spool.corrupt += 1;
                        tracing::warn!(file = %name, "spool file with a name it does not write removed");
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        let next_path = dir.join(NEXT_SEQUENCE);
        let stored_next = match read_at_most(&next_path, MAX_NEXT_SEQUENCE_LEN) {
            Ok(bytes) => match bytes
                .as_deref()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .and_then(|text| text.trim().parse::<u64>().ok())
            {
                Some(next) if next > 0 => Some(next),
                _ => {
                    spool.corrupt += 1;
                    tracing::warn!(
                        path = %next_path.display(),
                        "spool next-sequence file is unreadable; starting a new sequence epoch"
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading", next_path, e)),
        };
        let after_spooled = spool.seqs.last().map_or(1, |s| s.saturating_add(1));
        spool.next = stored_next.unwrap_or_else(epoch_start).max(after_spooled);
        if stored_next != Some(spool.next) {
            // Stored now, not at the first append: a later open must never start below a
            // sequence this one derived (from the spooled files or a new epoch), and damage is
            // counted once, not on every open.
            write_synced(&next_path, spool.next.to_string().as_bytes())?;
        }
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
            let read = read_at_most(&path, self.max_file).and_then(|bytes| {
                bytes.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("larger than the largest frame, {} bytes", self.max_file),
                    )
                })
            });
            match read {
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

/// The first sequence of a new epoch: microseconds since the Unix epoch (at least 1).
fn epoch_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| (d.as_micros() as u64).max(1))
}

/// The whole content of `path` if it is at most `max` bytes, `None` if it is longer (only
/// `max + 1` bytes are read to tell).
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))?;
    // The rename is durable only once the directory entry is.
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sender_holds_a_spool_directory_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Spool::open(dir.path(), 10).unwrap();
        let seq = first.append(|_| Ok(vec![1; 4])).unwrap();
        let refused = Spool::open(dir.path(), 10).unwrap_err();
        assert!(matches!(refused, Error::SpoolInUse { .. }), "{refused}");
        assert!(refused.to_string().contains("a spool directory of its own"));
        drop(first);
        let mut again = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(again.oldest().unwrap(), Some((seq, vec![1; 4])));
        assert_eq!(again.corrupt(), 0, "the lock file is not a sketch");
    }

    #[test]
    fn oversized_files_are_damage_never_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open_with_max_file(dir.path(), 10, 8).unwrap();
        let big = s.append(|_| Ok(vec![7; 9])).unwrap();
        let fits = s.append(|_| Ok(vec![7; 8])).unwrap();
        assert_eq!(s.oldest().unwrap(), Some((fits, vec![7; 8])));
        assert_eq!(s.corrupt(), 1);
        assert!(!s.path_of(big).exists());
        drop(s);
        // A next-sequence longer than any number starts a new epoch instead of being read.
        fs::write(dir.path().join(NEXT_SEQUENCE), vec![b'9'; 4097]).unwrap();
        let s = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(s.corrupt(), 1);
        assert!(s.next_sequence() > fits);
    }

    #[test]
    fn appends_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        let first = s.next_sequence();
        for i in 0..3u8 {
            let seq = s.append(|seq| Ok(vec![i, seq as u8])).unwrap();
            assert_eq!(seq, first + u64::from(i));
        }
        assert_eq!(s.oldest().unwrap(), Some((first, vec![0, first as u8])));
        s.remove(first).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(s.sequences(), vec![first + 1, first + 2]);
        assert_eq!(s.next_sequence(), first + 3);
        assert_eq!(s.oldest().unwrap().map(|x| x.0), Some(first + 1));
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
        let first = s.next_sequence();
        for _ in 0..5 {
            s.append(|seq| Ok(vec![seq as u8])).unwrap();
        }
        assert_eq!(s.sequences(), vec![first + 2, first + 3, first + 4]);
        assert_eq!(s.dropped(), 2);
        drop(s);
        // Reopening with a smaller capacity drops (and counts) the excess too.
        let s = Spool::open(dir.path(), 2).unwrap();
        assert_eq!(s.sequences(), vec![first + 3, first + 4]);
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn failed_encode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 3).unwrap();
        let first = s.next_sequence();
        assert!(s.append(|_| Err(Error::Argument("no".into()))).is_err());
        assert!(s.is_empty());
        assert_eq!(s.next_sequence(), first);
    }

    #[test]
    fn junk_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("abc.sketch"), b"x").unwrap();
        fs::write(dir.path().join("00000000000000000001.tmp"), b"x").unwrap();
        fs::write(dir.path().join("next-sequence"), b"garbage").unwrap();
        let before = epoch_start();
        let s = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(s.corrupt(), 2, "the sketch name and next-sequence");
        assert!(
            s.next_sequence() >= before,
            "a new epoch, above any sequence sent before"
        );
        assert!(!dir.path().join("abc.sketch").exists());
    }

    #[test]
    fn a_wiped_or_corrupted_spool_never_goes_back_to_sequences_already_sent() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let mut s = Spool::open(&spool_dir, 10).unwrap();
        let mut sent = 0;
        for _ in 0..3 {
            sent = s.append(|_| Ok(vec![1])).unwrap();
            s.remove(sent).unwrap();
        }
        drop(s);
        // Wiped: a new epoch starts above everything sent.
        fs::remove_dir_all(&spool_dir).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut s = Spool::open(&spool_dir, 10).unwrap();
        let after_wipe = s.append(|_| Ok(vec![1])).unwrap();
        assert!(after_wipe > sent, "{after_wipe} after {sent}");
        drop(s);
        // Corrupted next-sequence, with a sketch still spooled: above both.
        fs::write(spool_dir.join("next-sequence"), b"\xff\xfe").unwrap();
        let s = Spool::open(&spool_dir, 10).unwrap();
        assert!(s.next_sequence() > after_wipe);
        assert_eq!(s.corrupt(), 1);
    }
}
