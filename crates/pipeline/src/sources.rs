//! Reading messages from files for `mailroom ingest PATH...`.
//!
//! A PATH may be:
//! - a message file (`.eml` or any name): one message; a leading mbox `From ` line is
//!   dropped;
//! - an mbox: a file that starts with a `From ` line and has further `From ` lines after a blank
//!   line. It is split on those lines, and mboxrd quoting (`>From `, `>>From `, ...) loses
//!   one `>`;
//! - a maildir (a directory with `cur/`, `new/` and `tmp/`): the files in `cur/` and `new/`;
//! - any other directory: every regular file in it, recursively, in sorted order (symbolic
//!   links inside directories are not followed).
//!
//! Memory is bounded per message: a message over `max_size` bytes is not kept in memory but
//! yields a [`SourceError::TooLarge`] naming its origin, and reading goes on.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One message read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    /// Where it came from: the file's path, with `#N` (1-based) for the N-th message of an
    /// mbox.
    pub origin: String,
    /// The raw message.
    pub raw: Vec<u8>,
}

/// A message or file that could not be read. Reading goes on with the next one.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("{origin}: {source}")]
    Io {
        /// The file or directory.
        origin: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A message is larger than the limit.
    #[error("{origin}: message larger than {limit} bytes")]
    TooLarge {
        /// The message (file, or `file#N` in an mbox).
        origin: String,
        /// The limit in bytes.
        limit: usize,
    },
}

impl SourceError {
    /// The file, directory or message this error is about.
    pub fn origin(&self) -> &str {
        match self {
            SourceError::Io { origin, .. } | SourceError::TooLarge { origin, .. } => origin,
        }
    }
}

/// Read every message under `paths`, in order; each message at most `max_size` bytes.
pub fn read<P: AsRef<Path>>(paths: &[P], max_size: usize) -> Sources {
    Sources {
        files: Files::new(paths),
        current: None,
        max_size,
    }
}

/// How many items [`read`] will yield for `paths` (messages, plus one per unreadable file), for
/// progress bars. Cheap: it lists directories and scans mbox files for separator lines without
/// keeping them in memory. `max_size` is accepted for symmetry with [`read`]; an over-large
/// message still counts as one item.
pub fn count<P: AsRef<Path>>(paths: &[P], max_size: usize) -> usize {
    let _ = max_size;
    Files::new(paths)
        .map(|f| match f {
            Ok(path) => match scan(&path) {
                Ok(Scan {
                    starts_with_from: true,
                    separators,
                }) if separators >= 2 => separators,
                _ => 1,
            },
            Err(_) => 1,
        })
        .sum()
}

/// The iterator returned by [`read`].
pub struct Sources {
    files: Files,
    current: Option<MboxReader>,
    max_size: usize,
}

impl Iterator for Sources {
    type Item = Result<SourceMessage, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(mbox) = &mut self.current {
                match mbox.next_message() {
                    Some(item) => return Some(item),
                    None => self.current = None,
                }
            }
            let path = match self.files.next()? {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let origin = path.display().to_string();
            let io_err = |source| SourceError::Io {
                origin: origin.clone(),
                source,
            };
            let scanned = match scan(&path) {
                Ok(s) => s,
                Err(e) => return Some(Err(io_err(e))),
            };
            if scanned.starts_with_from && scanned.separators >= 2 {
                match File::open(&path) {
                    Ok(f) => {
                        self.current = Some(MboxReader {
                            reader: BufReader::new(f),
                            origin,
                            index: 0,
                            max: self.max_size,
                            prev_blank: true,
                            eof: false,
                            line: Vec::new(),
                        })
                    }
                    Err(e) => return Some(Err(io_err(e))),
                }
                continue;
            }
            return Some(read_single(
                &path,
                origin.clone(),
                self.max_size,
                scanned.starts_with_from,
            ));
        }
    }
}

/// Walks the paths given, yielding message files in order.
struct Files {
    /// Paths still to visit, the next one last; `true` for paths given on the command line
    /// (symbolic links followed).
    stack: Vec<(PathBuf, bool)>,
}

impl Files {
    fn new<P: AsRef<Path>>(paths: &[P]) -> Files {
        Files {
            stack: paths
                .iter()
                .rev()
                .map(|p| (p.as_ref().to_path_buf(), true))
                .collect(),
        }
    }

    fn expand(&mut self, dir: &Path) -> io::Result<()> {
        let mut found = Vec::new();
        if is_maildir(dir) {
            for sub in ["cur", "new"] {
                let mut files = Vec::new();
                for entry in std::fs::read_dir(dir.join(sub))? {
                    let entry = entry?;
                    if entry.file_type()?.is_file() {
                        files.push(entry.path());
                    }
                }
                files.sort();
                found.extend(files);
            }
        } else {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_file() || kind.is_dir() {
                    found.push(entry.path());
                }
            }
            found.sort();
        }
        self.stack
            .extend(found.into_iter().rev().map(|p| (p, false)));
        Ok(())
    }
}

impl Iterator for Files {
    type Item = Result<PathBuf, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (path, top) = self.stack.pop()?;
            let meta = if top {
                std::fs::metadata(&path)
            } else {
                std::fs::symlink_metadata(&path)
            };
            let meta = match meta {
                Ok(m) => m,
                Err(source) => {
                    return Some(Err(SourceError::Io {
                        origin: path.display().to_string(),
                        source,
                    }))
                }
            };
            if meta.is_dir() {
                if let Err(source) = self.expand(&path) {
                    return Some(Err(SourceError::Io {
                        origin: path.display().to_string(),
                        source,
                    }));
                }
                continue;
            }
            if meta.is_file() {
                return Some(Ok(path));
            }
            if top {
                return Some(Err(SourceError::Io {
                    origin: path.display().to_string(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "not a file or directory"),
                }));
            }
        }
    }
}

fn is_maildir(dir: &Path) -> bool {
    ["cur", "new", "tmp"].iter().all(|d| dir.join(d).is_dir())
}

/// What a quick pass over a file found.
struct Scan {
    /// The file starts with a `From ` line.
    starts_with_from: bool,
    /// `From ` lines at the start or after a blank line.
    separators: usize,
}

fn scan(path: &Path) -> io::Result<Scan> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut prev_blank = true;
    let mut first = true;
    let mut starts_with_from = false;
    let mut separators = 0;
    loop {
        line.clear();
        let (n, truncated) = read_line_capped(&mut reader, &mut line, 8)?;
        if n == 0 {
            break;
        }
        let is_from = line.starts_with(b"From ");
        if first {
            starts_with_from = is_from;
            first = false;
            if !is_from {
                // Not an mbox: no need to read on.
                break;
            }
        }
        if is_from && prev_blank {
            separators += 1;
        }
        prev_blank = !truncated && is_blank(&line);
    }
    Ok(Scan {
        starts_with_from,
        separators,
    })
}

/// One message file (a leading `From ` line dropped).
fn read_single(
    path: &Path,
    origin: String,
    max: usize,
    strip_from: bool,
) -> Result<SourceMessage, SourceError> {
    let io_err = |source| SourceError::Io {
        origin: origin.clone(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    if strip_from {
        read_line_capped(&mut reader, &mut Vec::new(), 0).map_err(io_err)?;
    }
    let mut raw = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(io_err)?;
    if raw.len() > max {
        return Err(SourceError::TooLarge { origin, limit: max });
    }
    Ok(SourceMessage { origin, raw })
}

/// Splits an mbox into messages, one at a time.
struct MboxReader {
    reader: BufReader<File>,
    origin: String,
    /// Messages read so far.
    index: usize,
    max: usize,
    prev_blank: bool,
    eof: bool,
    line: Vec<u8>,
}

impl MboxReader {
    fn next_message(&mut self) -> Option<Result<SourceMessage, SourceError>> {
        loop {
            if self.eof {
                return None;
            }
            let mut msg = Vec::new();
            let mut too_large = false;
            let mut seen_separator = false;
            loop {
                self.line.clear();
                let cap = if too_large {
                    8
                } else {
                    (self.max + 2).saturating_sub(msg.len()).max(8)
                };
                let (n, truncated) = match read_line_capped(&mut self.reader, &mut self.line, cap) {
                    Ok(r) => r,
                    Err(source) => {
                        self.eof = true;
                        return Some(Err(SourceError::Io {
                            origin: self.origin.clone(),
                            source,
                        }));
                    }
                };
                if n == 0 {
                    self.eof = true;
                    break;
                }
                let separator = self.line.starts_with(b"From ") && self.prev_blank;
                self.prev_blank = !truncated && is_blank(&self.line);
                if separator {
                    if seen_separator || !msg.is_empty() || too_large {
                        // The next message starts here; its separator line is consumed.
                        self.prev_blank = false;
                        break;
                    }
                    seen_separator = true;
                    continue;
                }
                if too_large {
                    continue;
                }
                if truncated || msg.len() + self.line.len() > self.max + 2 {
                    too_large = true;
                    msg = Vec::new();
                    continue;
                }
                let line = unescape_from(&self.line);
                msg.extend_from_slice(line);
            }
            if !too_large && msg.iter().all(u8::is_ascii_whitespace) {
                if self.eof {
                    return None;
                }
                continue;
            }
            self.index += 1;
            let origin = format!("{}#{}", self.origin, self.index);
            strip_trailing_blank_line(&mut msg);
            if too_large || msg.len() > self.max {
                return Some(Err(SourceError::TooLarge {
                    origin,
                    limit: self.max,
                }));
            }
            return Some(Ok(SourceMessage { origin, raw: msg }));
        }
    }
}

/// mboxrd: `>From `, `>>From `, ... lose one `>`.
fn unescape_from(line: &[u8]) -> &[u8] {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    if quotes > 0 && line[quotes..].starts_with(b"From ") {
        &line[1..]
    } else {
        line
    }
}

/// Drop the blank line that precedes the next `From ` separator.
fn strip_trailing_blank_line(msg: &mut Vec<u8>) {
    if msg.ends_with(b"\r\n\r\n") {
        msg.truncate(msg.len() - 2);
    } else if msg.ends_with(b"\n\n") {
        msg.truncate(msg.len() - 1);
    }
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, b"\n" | b"\r\n")
}

/// Read one line (through `\n`), appending at most `cap` bytes of it to `out`; the rest of a
/// longer line is consumed and dropped. Returns the bytes consumed (0 at the end) and whether
/// the line was cut.
fn read_line_capped<R: BufRead>(
    reader: &mut R,
    out: &mut Vec<u8>,
    cap: usize,
) -> io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut appended = 0;
    let mut truncated = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((consumed, truncated));
        }
        let (len, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (buf.len(), false),
        };
        let take = len.min(cap - appended);
        out.extend_from_slice(&buf[..take]);
        appended += take;
        if take < len {
            truncated = true;
        }
        reader.consume(len);
        consumed += len;
        if done {
            return Ok((consumed, truncated));
        }
    }
}
