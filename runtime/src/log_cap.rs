//! Bounded host logs: a guest decides what its console prints, and a VMM or `virtiofsd` what it
//! logs, so none of these files may grow without bound on the host's disk, nor be read whole
//! into memory.
//!
//! The writers are other processes that opened the files themselves: QEMU's `-serial file:` and
//! libkrun's console output (`File::create`, without `O_APPEND`), `virtiofsd`'s and the VMMs'
//! stderr. Truncating under a writer that does not append would only move its next write to a
//! sparse offset; renaming would leave it writing to the old inode. So the older part of an
//! oversized log is punched out instead (`fallocate(PUNCH_HOLE|KEEP_SIZE)`): the file keeps its
//! size and every writer its offset, but only the last [`LOG_KEEP`] bytes still take disk space;
//! the rest reads as zeros. Readers take the tail ([`read_tail`]), never the whole file.
//!
//! A [`LogCapper`] checks every `*.log` file of a VM's directory (host-private, never
//! guest-writable) every [`CHECK_INTERVAL`] while the VM runs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Disk space a log may take before its older part is dropped (8 MiB).
pub const LOG_CAP: u64 = 8 << 20;

/// What is kept of a log that went over [`LOG_CAP`]: its last 1 MiB.
pub const LOG_KEEP: u64 = 1 << 20;

/// How often a running VM's logs are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Punched ranges are aligned to this (file systems free whole blocks only).
const BLOCK: u64 = 4096;

/// At most the last `max` bytes of the file at `path` (empty when it cannot be read).
pub fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    buf
}

/// When the file at `path` takes more than `cap` bytes of disk, frees all of it but (about)
/// the last `keep` bytes; returns the bytes of the file it punched out (0: nothing to do).
pub fn cap(path: &Path, cap: u64, keep: u64) -> std::io::Result<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let meta = f.metadata()?;
    let allocated = meta.blocks().saturating_mul(512);
    if allocated <= cap {
        return Ok(0);
    }
    let len = meta.len().saturating_sub(keep) / BLOCK * BLOCK;
    if len == 0 {
        return Ok(0);
    }
    let len_off = i64::try_from(len).map_err(std::io::Error::other)?;
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        len_off,
    )?;
    Ok(len)
}

/// Caps the `*.log` files of a VM's directory until dropped.
#[derive(Debug)]
pub struct LogCapper {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LogCapper {
    /// Starts checking `dir` (a no-op outside a tokio runtime: nothing would drive it).
    pub fn start(dir: PathBuf) -> LogCapper {
        let task = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(async move {
                let mut warned = std::collections::HashSet::new();
                loop {
                    tokio::time::sleep(CHECK_INTERVAL).await;
                    let d = dir.clone();
                    let punched = tokio::task::spawn_blocking(move || cap_dir(&d))
                        .await
                        .unwrap_or_default();
                    for (path, bytes) in punched {
                        if warned.insert(path.clone()) {
                            tracing::warn!(log = %path.display(), bytes,
                                "log over {LOG_CAP} bytes: its older part was dropped (only the \
                                 last {LOG_KEEP} bytes are kept)");
                        }
                    }
                }
            })
        });
        LogCapper { task }
    }
}

impl Drop for LogCapper {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// One round over `dir`: the logs punched, with the bytes dropped.
fn cap_dir(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter_map(|p| match cap(&p, LOG_CAP, LOG_KEEP) {
            Ok(0) => None,
            Ok(n) => Some((p, n)),
            Err(e) => {
                tracing::debug!(log = %p.display(), "cap the log: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_oversized_log_keeps_its_tail_its_size_and_its_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        // A writer that does not append, as libkrun's console and QEMU's serial file are.
        let mut w = File::create(&path).unwrap();
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\n";
        for _ in 0..(12 << 20) / line.len() {
            w.write_all(line).unwrap();
        }
        w.write_all(b"the last line\n").unwrap();
        w.flush().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let punched = cap(&path, 8 << 20, 1 << 20).unwrap();
        assert!(punched > 10 << 20, "punched {punched}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size, "the size stays");
        assert!(
            meta.blocks() * 512 <= (1 << 20) + 2 * BLOCK,
            "{} bytes still allocated",
            meta.blocks() * 512
        );
        assert!(read_tail(&path, 64).ends_with(b"the last line\n"));
        // The writer goes on at its own offset, and its output is there.
        w.write_all(b"after the cap\n").unwrap();
        w.flush().unwrap();
        let tail = read_tail(&path, 100);
        assert!(
            tail.ends_with(b"the last line\nafter the cap\n"),
            "{tail:?}"
        );
        // A log under the cap is left alone.
        assert_eq!(cap(&path, 8 << 20, 1 << 20).unwrap(), 0);
    }

    #[test]
    fn the_tail_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.log");
        std::fs::write(&path, vec![b'a'; 100_000]).unwrap();
        assert_eq!(read_tail(&path, 1000).len(), 1000);
        assert_eq!(read_tail(&tmp.path().join("missing"), 10), b"");
    }
}
