//! The store's journal: an append-only file of sealed values beside the database.
//!
//! Every write appends one frame per change and `fdatasync`s once for the whole batch (group
//! commit), so a write is durable when it is acknowledged whatever sled's own log does, and
//! costs the size of its records, not of the store. The journal is an independent copy: the
//! store takes the newer of the database's and the journal's copy of each account at open.
//! When it has grown to a few times the number of accounts it is rewritten (compacted) with
//! one frame per account, written temp + fsync + rename, which keeps the cost amortised O(1).
//!
//! A frame is `u32` (big-endian) payload length, then the payload: the account name's length
//! (`u8`), the name, and the sealed value (`schema.rs`), which authenticates itself. Reading
//! stops at a frame that cannot be framed (a torn tail, a damaged length) and reports where.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The journal's file name in the store directory.
pub(super) const FILE: &str = "journal";
const MAGIC: &[u8] = b"tokenbroker-journal-1\n";
/// No frame is larger: a length above this is damage, not a record.
const MAX_FRAME: usize = 1 << 20;

/// One frame as read: where its account name and sealed value are in the file's bytes.
/// (Ranges, not copies: at 100k accounts the copies were 170 MB of small allocations that
/// outlived the open as fragmented heap.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// The journal as found on disk.
#[derive(Debug, Default)]
pub(super) struct Contents {
    /// The file's bytes.
    bytes: Vec<u8>,
    /// Every frame that could be framed, in order.
    frames: Vec<Frame>,
    /// Where reading had to stop, and why; `None` when the whole file was read.
    pub(super) damage: Option<Damage>,
}

/// Where a journal stops making sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// Byte offset of the first unreadable frame.
    pub(super) offset: u64,
    /// What is wrong there.
    pub(super) reason: &'static str,
}

/// Reads the journal at `path`; `None` when there is none.
///
/// # Errors
/// The file exists but cannot be read.
pub(super) fn read(path: &Path) -> io::Result<Option<Contents>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(Some(parse(bytes)))
}

impl Contents {
    /// Every frame that could be framed, in order: the account name's bytes (checked when
    /// the value is opened) and the sealed value.
    pub(super) fn frames(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.frames.iter().map(|frame| {
            (
                &self.bytes[frame.name.clone()],
                &self.bytes[frame.value.clone()],
            )
        })
    }

    /// How many frames could be framed.
    pub(super) fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

fn parse(bytes: Vec<u8>) -> Contents {
    let frames_and_damage = frames(&bytes);
    Contents {
        bytes,
        frames: frames_and_damage.0,
        damage: frames_and_damage.1,
    }
}

fn frames(bytes: &[u8]) -> (Vec<Frame>, Option<Damage>) {
    let mut frames = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        let damage = Damage {
            offset: 0,
            reason: "it does not start as a tokenbroker journal",
        };
        return (frames, Some(damage));
    };
    let mut damage = None;
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let offset = at as u64;
        let stop = |reason| Some(Damage { offset, reason });
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            damage = stop("a frame's length is cut off (a torn write)");
            break;
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_FRAME {
            damage = stop("a frame's length is impossible (damaged)");
            break;
        }
        let Some((payload, tail)) = tail.split_at_checked(len) else {
            damage = stop("a frame is cut off (a torn write)");
            break;
        };
        match payload
            .split_first()
            .and_then(|(&name_len, body)| body.split_at_checked(usize::from(name_len)))
        {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                // The payload starts after the 4-byte length; the name after its length byte.
                let name_at = at + 4 + 1;
                let value_at = name_at + name.len();
                frames.push(Frame {
                    name: name_at..value_at,
                    value: value_at..value_at + value.len(),
                });
            }
            _ => {
                damage = stop("a frame holds no name and value (damaged)");
                break;
            }
        }
        rest = tail;
    }
    (frames, damage)
}

/// Appends the frame for `name`'s `value` to `buffer`.
pub(super) fn push_frame(buffer: &mut Vec<u8>, name: &str, value: &[u8]) {
    let name_len = u8::try_from(name.len()).expect("account names are at most 63 bytes");
    let len = u32::try_from(1 + name.len() + value.len()).expect("values are far below 4 GiB");
    buffer.extend_from_slice(&len.to_be_bytes());
    buffer.push(name_len);
    buffer.extend_from_slice(name.as_bytes());
    buffer.extend_from_slice(value);
}

/// The journal open for appending.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes known to be whole frames; a failed append is cut back to this.
    len: u64,
    /// Frames in the file, for deciding when to compact.
    frames: u64,
}

impl Journal {
    /// Writes a new journal holding exactly `frames` (an encoded run of frames, `count` of
    /// them) and makes it the journal: temp file, fsync, rename, fsync of the directory.
    ///
    /// # Errors
    /// Any write, sync or rename failed; the previous journal is then untouched.
    pub(super) fn rewrite(dir: &Path, frames: &[u8], count: u64) -> io::Result<Self> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(frames)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            return Err(error);
        }
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            len: (MAGIC.len() + frames.len()) as u64,
            frames: count,
        })
    }

    /// Opens the whole, undamaged journal in `dir`, holding `frames` frames, for appending.
    ///
    /// # Errors
    /// It cannot be opened.
    pub(super) fn reopen(dir: &Path, frames: u64) -> io::Result<Self> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            path,
            len,
            frames,
        })
    }

    /// Appends `frames` (`count` of them) and syncs them to disk before returning.
    ///
    /// # Errors
    /// The write or the sync failed. The file is cut back to its last whole frame, so that a
    /// later append is not hidden behind a torn one; if even that fails, the error says so
    /// and the journal must be rewritten before it is used again.
    pub(super) fn append(&mut self, frames: &[u8], count: u64) -> io::Result<()> {
        let written = self
            .file
            .write_all(frames)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frames.len() as u64;
                self.frames += count;
                Ok(())
            }
            Err(error) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::error!(journal = %self.path.display(), error = %cut, "cannot cut a failed append back out of the journal");
                }
                Err(error)
            }
        }
    }

    /// Frames in the file.
    pub(super) fn frames(&self) -> u64 {
        self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buffer = Vec::new();
        for (name, value) in entries {
            push_frame(&mut buffer, name, value);
        }
        buffer
    }

    #[test]
    fn appended_frames_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::rewrite(dir.path(), &frames(&[("a", b"one")]), 1).unwrap();
        journal
            .append(&frames(&[("b", b"two"), ("a", b"three")]), 2)
            .unwrap();
        assert_eq!(journal.frames(), 3);
        let contents = read(&dir.path().join(FILE)).unwrap().unwrap();
        assert_eq!(contents.damage, None);
        let read: Vec<_> = contents.frames().collect();
        assert_eq!(
            read,
            [(&b"a"[..], &b"one"[..]), (b"b", b"two"), (b"a", b"three")]
        );
    }

    #[test]
    fn a_torn_or_damaged_tail_stops_reading_and_says_where() {
        let whole = [MAGIC, &frames(&[("a", b"one"), ("b", b"two")])].concat();
        let second = (MAGIC.len() + 4 + 1 + 1 + 3) as u64;
        for cut in 1..(whole.len() as u64 - second) {
            let torn = &whole[..whole.len() - cut as usize];
            let contents = parse(torn.to_vec());
            assert_eq!(contents.frame_count(), 1, "cut {cut}");
            assert_eq!(contents.damage.unwrap().offset, second, "cut {cut}");
        }
        let mut huge = whole.clone();
        huge[second as usize] = 0xff;
        let contents = parse(huge);
        assert_eq!(contents.frame_count(), 1);
        assert!(contents.damage.unwrap().reason.contains("impossible"));
        assert!(parse(b"something else".to_vec()).damage.is_some());
        assert_eq!(parse(MAGIC.to_vec()).frame_count(), 0);
    }

    #[test]
    fn no_journal_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join(FILE)).unwrap().is_none());
    }
}
