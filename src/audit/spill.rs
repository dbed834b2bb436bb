//! The spill file of `audit.sync = "os"`: each hand-out's audit event, sealed as the
//! one-event block the trail would store, appended with one `write(2)` before the
//! secret is answered, and not synced. A process that dies keeps what it wrote (the OS
//! has it); at the next start the events the store lost are put back from here.
//!
//! The spill is segments `audit-spill.N` in the data directory. A flush round starts a
//! new segment, writes the queued events and debits into the store, flushes it, and
//! then deletes the segments before the new one: everything in them was queued before
//! the round began, so the flush covered it.
//!
//! A record is `len: u32 | seq: u64 | block` (big-endian; `block` as sealed for the
//! trail's key `seq`). A record cut short by an OS crash ends the segment's replay.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

const PREFIX: &str = "audit-spill.";

pub struct Spill {
    dir: PathBuf,
    current: Mutex<Segment>,
    /// Set once a round could not write its events into the store: from then on no
    /// segment is deleted until the next start has put them back.
    keep: std::sync::atomic::AtomicBool,
    /// Fault injection for tests: every append fails, as on a full disk.
    full: std::sync::atomic::AtomicBool,
}

struct Segment {
    number: u64,
    file: File,
    /// Whether anything was written to it (a round with nothing to flush is skipped).
    written: bool,
}

/// A spilled event: the trail's key and its sealed block.
pub struct Spilled {
    pub seq: u64,
    pub block: Vec<u8>,
}

impl Spill {
    /// The spilled events left by the last run, in order, and a spill that continues
    /// after them (the old segments are deleted by the first round).
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Spilled>)> {
        let numbers = segments(dir)?;
        let mut left = Vec::new();
        for number in &numbers {
            left.extend(read_segment(&segment_path(dir, *number))?);
        }
        let next = numbers.last().map_or(0, |n| n + 1);
        let spill = Self {
            dir: dir.to_owned(),
            current: Mutex::new(Segment {
                number: next,
                file: create(&segment_path(dir, next))?,
                written: !numbers.is_empty(),
            }),
            keep: std::sync::atomic::AtomicBool::new(false),
            full: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((spill, left))
    }

    /// Appends one event's block, in one `write(2)`.
    pub fn append(&self, seq: u64, block: &[u8]) -> io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::ErrorKind::StorageFull.into());
        }
        let len = u32::try_from(block.len()).map_err(io::Error::other)?;
        let mut record = Vec::with_capacity(12 + block.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&seq.to_be_bytes());
        record.extend_from_slice(block);
        let mut segment = self.lock();
        segment.file.write_all(&record)?;
        segment.written = true;
        Ok(())
    }

    /// Starts a new segment when the current one holds anything; answers the number of
    /// the last segment a flush that begins now covers.
    pub fn start_round(&self) -> io::Result<Option<u64>> {
        let mut segment = self.lock();
        if !segment.written {
            return Ok(None);
        }
        let next = segment.number + 1;
        *segment = Segment {
            number: next,
            file: create(&segment_path(&self.dir, next))?,
            written: false,
        };
        Ok(Some(next - 1))
    }

    /// Fault injection for tests: every later append fails as on a full disk.
    pub fn fail_appends(&self) {
        self.full.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps every segment from now on (a round lost events the spill still holds).
    pub fn keep_all(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Deletes the segments up to `through` (their events are durable in the store).
    pub fn covered(&self, through: u64) -> io::Result<()> {
        if self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        for number in segments(&self.dir)? {
            if number <= through {
                std::fs::remove_file(segment_path(&self.dir, number))?;
            }
        }
        Ok(())
    }

    /// Deletes every segment, the current one too (shutdown, after the final flush:
    /// nothing more is spilled).
    pub fn finish(&self) -> io::Result<()> {
        let _segment = self.lock();
        self.covered(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segment> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{number}"))
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The segment numbers in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix(PREFIX)?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

fn read_segment(path: &Path) -> io::Result<Vec<Spilled>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 12 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_be_bytes(rest[4..12].try_into().expect("8 bytes"));
        let Some(block) = rest.get(12..12 + len) else {
            break;
        };
        out.push(Spilled {
            seq,
            block: block.to_vec(),
        });
        rest = &rest[12 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_rounds_delete_what_they_covered() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, left) = Spill::open(dir.path()).unwrap();
        assert!(left.is_empty());
        assert_eq!(spill.start_round().unwrap(), None, "nothing to cover");
        spill.append(7, b"seven").unwrap();
        spill.append(8, b"eight").unwrap();
        let covers = spill.start_round().unwrap().unwrap();
        spill.append(9, b"nine").unwrap();
        drop(spill);

        // A crash before the round's flush: every record is still there.
        let (spill, left) = Spill::open(dir.path()).unwrap();
        let seqs: Vec<u64> = left.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert_eq!(left[2].block, b"nine");
        // The round after a restart covers the old segments.
        let covers_all = spill.start_round().unwrap().unwrap();
        assert!(covers_all > covers);
        spill.covered(covers_all).unwrap();
        drop(spill);
        let (_, left) = Spill::open(dir.path()).unwrap();
        assert!(left.is_empty());
    }

    #[test]
    fn once_told_to_keep_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, _) = Spill::open(dir.path()).unwrap();
        spill.append(1, b"lost by the store").unwrap();
        let covers = spill.start_round().unwrap().unwrap();
        spill.keep_all();
        spill.append(2, b"next").unwrap();
        let next = spill.start_round().unwrap().unwrap();
        assert!(next > covers);
        spill.covered(next).unwrap();
        spill.finish().unwrap();
        drop(spill);
        let (_, left) = Spill::open(dir.path()).unwrap();
        assert_eq!(left.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_record_cut_short_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, _) = Spill::open(dir.path()).unwrap();
        spill.append(1, b"whole").unwrap();
        spill.append(2, b"torn record").unwrap();
        drop(spill);
        let path = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_, left) = Spill::open(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].block, b"whole");
    }
}
