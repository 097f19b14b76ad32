//! Bounds on what one configuration may make lb do. Past any of them the file is an
//! error naming it (and the line, inside a file), and the running configuration stays.
//! They keep a hostile or broken file — an alias bomb, deep nesting, a huge file, a
//! FIFO — from taking lb's memory, stack or time, far above any real configuration
//! (10,000 services with 10 endpoints each are a 12 MB file).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use yaml_rust2::parser::Event;

use super::LoadError;

/// Bytes one file may have.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Bytes all files together may have.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// YAML documents in one file.
pub const MAX_DOCUMENTS: usize = 100_000;
/// Nesting of mappings and sequences (an Istio object needs about 12).
pub const MAX_DEPTH: usize = 64;
/// Aliases may add to a document at most as many bytes as it has itself, or this
/// many if more: reuse of a block is fine, a "billion laughs" is not.
pub const ALIAS_FLOOR: u64 = 1 << 20;

/// A bound a file's YAML went past.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("more than {MAX_DOCUMENTS} documents in one file")]
    Documents,
    #[error("nested deeper than {MAX_DEPTH} levels")]
    Depth,
    #[error(
        "aliases expand the document by more than it has itself ({added} bytes added, at most {allowed})"
    )]
    Aliases { added: u64, allowed: u64 },
}

/// What one document's aliases expand to, counted as it is parsed (an alias adds the
/// bytes of the node it names, that node's own aliases included).
#[derive(Default)]
pub struct Aliases {
    /// Expanded size of each anchored node so far.
    sizes: HashMap<usize, u64>,
    /// Collections open: their anchor (0: none), where they started, and what aliases
    /// had added before them.
    open: Vec<(usize, usize, u64)>,
    /// Bytes the aliases add to this document.
    added: u64,
    doc_start: usize,
}

impl Aliases {
    /// Follows one event at character `at`.
    pub fn on_event(&mut self, ev: &Event, at: usize) -> Result<(), Exceeded> {
        match ev {
            Event::DocumentStart => {
                *self = Aliases {
                    doc_start: at,
                    ..Aliases::default()
                };
            }
            Event::Scalar(value, _, anchor, _) if *anchor != 0 => {
                self.sizes.insert(*anchor, value.len() as u64);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.open.push((*anchor, at, self.added));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((anchor, start, added_before)) = self.open.pop()
                    && anchor != 0
                {
                    let own = at.saturating_sub(start) as u64;
                    self.sizes.insert(anchor, own + (self.added - added_before));
                }
            }
            Event::Alias(anchor) => {
                self.added += self.sizes.get(anchor).copied().unwrap_or(0);
                let allowed = (at.saturating_sub(self.doc_start) as u64).max(ALIAS_FLOOR);
                if self.added > allowed {
                    return Err(Exceeded::Aliases {
                        added: self.added,
                        allowed,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads a configuration file: a regular file (not a FIFO, which would block the
/// reader; opened non-blocking, so one put in a file's place cannot), at most
/// `MAX_FILE_BYTES`, UTF-8.
pub fn read(path: &Path) -> Result<String, LoadError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile(path.to_path_buf()));
    }
    // Sized once (a 12 MB file read into a growing Vec was copied ~5 times over).
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_BYTES) as usize + 1);
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_FILE_BYTES,
        });
    }
    // A byte-order mark may open a YAML stream; serde_yaml takes one inside a
    // document (lb parses each on its own) for a second document.
    if bytes.starts_with("\u{feff}".as_bytes()) {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        LoadError::NotUtf8 {
            path: path.to_path_buf(),
            line: 1 + memchr::memchr_iter(b'\n', valid).count(),
        }
    })
}

#[cfg(test)]
mod tests;
