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
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The journal's file name in the store directory.
pub(super) const FILE: &str = "journal";
const MAGIC: &[u8] = b"tokenbroker-journal-1\n";
/// No frame is larger: a length above this is damage, not a record.
const MAX_FRAME: usize = 1 << 20;
/// What is read or written at a time. The journal is read and rewritten in pieces of this
/// size, never held whole: at 100k accounts it is 160 MB.
const BUFFER: usize = 1 << 16;

/// What reading a journal found, besides the frames handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    /// How many frames could be framed.
    pub(super) frames: u64,
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

/// Reads the journal at `path` from start to end, handing `each` every frame that can be
/// framed, in order: the account name's bytes (checked when the value is opened) and the
/// sealed value. `None` when there is no journal.
///
/// # Errors
/// The file exists but cannot be read, or `each` failed (its error is returned as is).
pub(super) fn read(
    path: &Path,
    each: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<Option<Found>, StoreError> {
    match File::open(path) {
        Ok(file) => frames(BufReader::with_capacity(BUFFER, file), each).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(read_error(error)),
    }
}

fn read_error(cause: io::Error) -> StoreError {
    StoreError::Io {
        operation: "journal read",
        cause: cause.into(),
    }
}

fn frames(
    mut input: impl Read,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<Found, StoreError> {
    let mut found = Found {
        frames: 0,
        damage: None,
    };
    // The magic line and each frame's length, then each frame's payload, in buffers that
    // are reused.
    let (mut head, mut payload) = (Vec::new(), Vec::new());
    if read_up_to(&mut input, MAGIC.len(), &mut head)? < MAGIC.len() || head != MAGIC {
        found.damage = Some(Damage {
            offset: 0,
            reason: "it does not start as a tokenbroker journal",
        });
        return Ok(found);
    }
    let mut offset = MAGIC.len() as u64;
    loop {
        let stop = |reason| Some(Damage { offset, reason });
        let len = match read_up_to(&mut input, 4, &mut head)? {
            0 => break,
            4 => u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize,
            _ => {
                found.damage = stop("a frame's length is cut off (a torn write)");
                break;
            }
        };
        if len > MAX_FRAME {
            found.damage = stop("a frame's length is impossible (damaged)");
            break;
        }
        if read_up_to(&mut input, len, &mut payload)? < len {
            found.damage = stop("a frame is cut off (a torn write)");
            break;
        }
        match payload
            .split_first()
            .and_then(|(&name_len, body)| body.split_at_checked(usize::from(name_len)))
        {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => each(name, value)?,
            _ => {
                found.damage = stop("a frame holds no name and value (damaged)");
                break;
            }
        }
        found.frames += 1;
        offset += 4 + len as u64;
    }
    Ok(found)
}

/// Reads the next `len` bytes of `input` into `buffer`, or as many as are left; returns how
/// many that was.
fn read_up_to(
    input: &mut impl Read,
    len: usize,
    buffer: &mut Vec<u8>,
) -> Result<usize, StoreError> {
    buffer.clear();
    input
        .take(len as u64)
        .read_to_end(buffer)
        .map_err(read_error)
}

/// Replaces the file at `path` with a journal of `values` (name, sealed value), whole and
/// synced: for small files that are rewritten on every change.
///
/// # Errors
/// The file cannot be written.
pub(super) fn write_whole<'a>(
    path: &Path,
    values: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> io::Result<()> {
    let mut bytes = MAGIC.to_vec();
    for (name, value) in values {
        push_frame(&mut bytes, name, value);
    }
    super::sled::write_atomically(path, &bytes)
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

/// A journal being rewritten: each frame pushed goes to the new file.
pub(super) struct Frames {
    out: BufWriter<File>,
    /// What a failed write is reported as.
    operation: &'static str,
    /// The frame being encoded, reused.
    frame: Vec<u8>,
    len: u64,
    count: u64,
}

impl Frames {
    /// Writes the frame for `name`'s `value`.
    ///
    /// # Errors
    /// `StoreError::Io`: the write failed.
    pub(super) fn push(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.frame.clear();
        push_frame(&mut self.frame, name, value);
        self.out
            .write_all(&self.frame)
            .map_err(|cause| StoreError::Io {
                operation: self.operation,
                cause: cause.into(),
            })?;
        self.len += self.frame.len() as u64;
        self.count += 1;
        Ok(())
    }
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
    /// Writes a new journal holding the frames `fill` pushes and makes it the journal: temp
    /// file, fsync, rename, fsync of the directory. The frames go to the file as they are
    /// pushed, not into memory first.
    ///
    /// # Errors
    /// Any write, sync or rename failed (`StoreError::Io`, doing `operation`), or `fill`
    /// failed; the previous journal is then untouched.
    pub(super) fn rewrite(
        dir: &Path,
        operation: &'static str,
        fill: impl FnOnce(&mut Frames) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let io = |cause: io::Error| StoreError::Io {
            operation,
            cause: cause.into(),
        };
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
        let written = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)
                .map_err(io)?;
            let mut frames = Frames {
                out: BufWriter::with_capacity(BUFFER, file),
                operation,
                frame: Vec::new(),
                len: MAGIC.len() as u64,
                count: 0,
            };
            frames.out.write_all(MAGIC).map_err(io)?;
            fill(&mut frames)?;
            let Frames {
                out, len, count, ..
            } = frames;
            let file = out.into_inner().map_err(|error| io(error.into_error()))?;
            file.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            File::open(dir).and_then(|dir| dir.sync_all()).map_err(io)?;
            Ok((len, count))
        })();
        let (len, count) = match written {
            Ok(written) => written,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                return Err(error);
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            file,
            path,
            len,
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

    /// A frame's name and value, copied out.
    type Copied = (Vec<u8>, Vec<u8>);

    /// Every frame of `bytes`, copied out, and what reading found.
    fn parse(bytes: &[u8]) -> (Vec<Copied>, Found) {
        let mut read = Vec::new();
        let found = super::frames(bytes, |name, value| {
            read.push((name.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
        (read, found)
    }

    fn rewrite(dir: &Path, entries: &[(&str, &[u8])]) -> Journal {
        Journal::rewrite(dir, "journal write", |frames| {
            for (name, value) in entries {
                frames.push(name, value)?;
            }
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn appended_frames_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = rewrite(dir.path(), &[("a", b"one")]);
        journal
            .append(&frames(&[("b", b"two"), ("a", b"three")]), 2)
            .unwrap();
        assert_eq!(journal.frames(), 3);
        let mut read = Vec::new();
        let found = super::read(&dir.path().join(FILE), |name, value| {
            read.push((name.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            found,
            Found {
                frames: 3,
                damage: None
            }
        );
        let read: Vec<(&[u8], &[u8])> = read.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(
            read,
            [(&b"a"[..], &b"one"[..]), (b"b", b"two"), (b"a", b"three")]
        );
    }

    /// A journal rewritten through `Frames` is the same bytes as the frames encoded at once,
    /// and a long one is read back whole across the read buffer's boundaries.
    #[test]
    fn a_rewritten_journal_reads_back_whole_across_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![7u8; 3000];
        let names: Vec<String> = (0..100).map(|i| format!("account-{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &value[..])).collect();
        let journal = rewrite(dir.path(), &entries);
        assert_eq!(journal.frames(), 100);
        let bytes = fs::read(dir.path().join(FILE)).unwrap();
        assert!(bytes.len() > 4 * BUFFER);
        assert_eq!(bytes, [MAGIC, &frames(&entries)].concat());
        assert_eq!(journal.len, bytes.len() as u64);
        let (read, found) = parse(&bytes);
        assert_eq!(found.damage, None);
        assert_eq!(read.len(), 100);
        assert_eq!(read[99], (b"account-99".to_vec(), value));
    }

    #[test]
    fn a_torn_or_damaged_tail_stops_reading_and_says_where() {
        let whole = [MAGIC, &frames(&[("a", b"one"), ("b", b"two")])].concat();
        let second = (MAGIC.len() + 4 + 1 + 1 + 3) as u64;
        for cut in 1..(whole.len() as u64 - second) {
            let torn = &whole[..whole.len() - cut as usize];
            let (read, found) = parse(torn);
            assert_eq!((read.len(), found.frames), (1, 1), "cut {cut}");
            assert_eq!(found.damage.unwrap().offset, second, "cut {cut}");
        }
        let mut huge = whole.clone();
        huge[second as usize] = 0xff;
        let (read, found) = parse(&huge);
        assert_eq!(read.len(), 1);
        assert!(found.damage.unwrap().reason.contains("impossible"));
        assert!(parse(b"something else").1.damage.is_some());
        assert!(parse(b"").1.damage.is_some());
        assert_eq!(parse(&whole[..MAGIC.len() - 1]).1.damage.unwrap().offset, 0);
        assert_eq!(
            parse(MAGIC).1,
            Found {
                frames: 0,
                damage: None
            }
        );
        let mut empty_name = MAGIC.to_vec();
        empty_name.extend_from_slice(&[0, 0, 0, 2, 0, b'x']);
        assert!(parse(&empty_name)
            .1
            .damage
            .unwrap()
            .reason
            .contains("no name"));
    }

    #[test]
    fn a_frame_the_reader_refuses_stops_the_read_with_its_error() {
        let whole = [MAGIC, &frames(&[("a", b"one"), ("b", b"two")])].concat();
        let mut seen = 0;
        let error = super::frames(&whole[..], |_, _| {
            seen += 1;
            Err(StoreError::WrongKey {
                found: "x".into(),
                loaded: "y".into(),
            })
        })
        .unwrap_err();
        assert!(matches!(error, StoreError::WrongKey { .. }));
        assert_eq!(seen, 1);
    }

    #[test]
    fn no_journal_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::read(&dir.path().join(FILE), |_, _| Ok(()))
            .unwrap()
            .is_none());
    }
}
