//! The write mark: a durable count of acknowledged group commits kept outside sled's
//! log, so that a log that recovers shorter than what was acknowledged is noticed.
//!
//! Every group commit writes the next mark into sled (in the same flush as the writes
//! it acknowledges) and then, once sled's flush is done, into this file. The file is two
//! 512-byte slots written in turn (mark `n` goes to slot `n % 2`) with `pwrite` and
//! `fdatasync`; each slot carries a checksum, so a write torn by a crash spoils only the
//! slot being written and the other still holds the mark before. The file never runs
//! ahead of sled: a mark in the file is always in sled too, unless sled lost it.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use ring::digest;

/// The file's name, inside sled's directory (so that a fresh directory, as a restore
/// makes, starts with no mark).
pub const FILE_NAME: &str = "credvault-write-mark";
const MAGIC: &[u8; 8] = b"CVMARK01";
const SLOT: u64 = 512;
const RECORD: usize = 24;

pub struct MarkFile {
    file: File,
    path: PathBuf,
}

impl MarkFile {
    /// Opens (or creates) the mark file in `dir`; answers it and the highest mark it
    /// holds (0 for a new file).
    pub fn open(dir: &Path) -> io::Result<(Self, u64)> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mark = (0..2)
            .filter_map(|slot| read_slot(&file, slot).transpose())
            .collect::<io::Result<Vec<u64>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        Ok((Self { file, path }, mark))
    }

    /// Makes `mark` durable in its slot.
    pub fn write(&self, mark: u64) -> io::Result<()> {
        self.file.write_all_at(&record(mark), (mark % 2) * SLOT)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn record(mark: u64) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&mark.to_be_bytes());
    let sum = digest::digest(&digest::SHA256, &out[..16]);
    out[16..].copy_from_slice(&sum.as_ref()[..8]);
    out
}

/// The mark a slot holds, `None` when it is empty or torn.
fn read_slot(file: &File, slot: u64) -> io::Result<Option<u64>> {
    let mut buf = [0u8; RECORD];
    match file.read_exact_at(&mut buf, slot * SLOT) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mark = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    Ok((buf == record(mark)).then_some(mark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_whole_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (file, mark) = MarkFile::open(dir.path()).unwrap();
        assert_eq!(mark, 0);
        file.write(1).unwrap();
        file.write(2).unwrap();
        file.write(3).unwrap();
        drop(file);
        assert_eq!(MarkFile::open(dir.path()).unwrap().1, 3);
        // A crash tore the write of mark 3 (slot 1): mark 2 (slot 0) still stands.
        let raw = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        raw.write_all_at(&[0xff; 4], SLOT + 10).unwrap();
        assert_eq!(MarkFile::open(dir.path()).unwrap().1, 2);
    }
}
