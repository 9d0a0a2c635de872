//! The content store: blobs by digest, shared by every image, and one record per pulled image.
//!
//! ```text
//! ROOT/                       0700
//!   lock                      shared by pulls, exclusive for gc (a pull's blobs have no record yet)
//!   blobs/sha256/<hex>        complete, verified blobs only (renamed in from ingest/)
//!   ingest/<hex>.partial      downloads in progress, each flock'ed by its writer
//!   images/<sha256 of the reference>.json    one ImageRecord per normalized reference
//!   layers/                   the CLI's EROFS images per diff id: never touched here
//! ```
//!
//! Directories are 0700 and files 0600 whatever the umask: the store is private to its user (as
//! root it holds what every image contains, setuid binaries included).
//!
//! A reader never sees a partial blob: a download goes to `ingest/` and is renamed into `blobs/`
//! only once its digest and size were checked. Two processes pulling the same blob take turns on
//! the ingest file's lock; the second finds the blob complete and uses it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// How old an ingest file must be before `gc` removes it (if no writer holds its lock either).
pub const INGEST_GRACE: Duration = Duration::from_secs(10 * 60);

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// The content store under a root directory (see the module docs for its layout).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What `msbox run` needs of a pulled image, written once all its blobs are in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The normalized reference it was pulled as (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// What the reference resolved to at the registry: the image index (manifest list) of a
    /// multi-platform image, else the same as `manifest_digest`. Docker's "Digest:".
    pub repo_digest: String,
    /// The image manifest of the chosen platform.
    pub manifest_digest: String,
    /// Its media type (OCI or Docker v2 schema 2).
    pub manifest_media_type: String,
    pub config_digest: String,
    /// `os/arch[/variant]`, from the image config.
    pub platform: String,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    /// The image config; `config.config` holds Entrypoint, Cmd, Env, WorkingDir and User.
    pub config: oci_spec::image::ImageConfiguration,
    /// The compressed layers' sizes added up, as a registry counts them.
    pub size: u64,
    /// When the pull completed, RFC 3339 in UTC.
    pub pulled: String,
}

/// One layer of an [`ImageRecord`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// The blob's digest (of the compressed bytes), in `blobs/`.
    pub digest: String,
    /// tar, tar+gzip or tar+zstd, in OCI or Docker spelling.
    pub media_type: String,
    pub size: u64,
    /// The digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gc {
    pub blobs_removed: usize,
    pub blob_bytes_freed: u64,
    pub ingest_removed: usize,
    pub ingest_bytes_freed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_distribution::ParseError,
    },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("cannot parse the image record {}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Normalizes an image reference as docker does: `busybox` -> `docker.io/library/busybox:latest`.
pub fn normalize_reference(reference: &str) -> Result<String, StoreError> {
    parse_reference(reference).map(|r| r.whole())
}

pub(crate) fn parse_reference(reference: &str) -> Result<oci_distribution::Reference, StoreError> {
    reference
        .parse::<oci_distribution::Reference>()
        .map_err(|source| StoreError::InvalidReference {
            reference: reference.to_owned(),
            source,
        })
}

/// The hex part of a `sha256:<64 lowercase hex>` digest, or `None`: the only digests whose
/// text ever becomes part of a path.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn check_digest(digest: &str) -> Result<&str, StoreError> {
    digest_hex(digest).ok_or_else(|| StoreError::InvalidDigest(digest.to_owned()))
}

impl Store {
    /// `/var/lib/msbox` as root, else `$XDG_DATA_HOME/msbox` or `$HOME/.local/share/msbox`.
    pub fn default_root() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/msbox");
        }
        let absolute = |v: std::ffi::OsString| {
            let p = PathBuf::from(v);
            p.is_absolute().then_some(p)
        };
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").and_then(absolute) {
            return xdg.join("msbox");
        }
        let home = std::env::var_os("HOME")
            .and_then(absolute)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".local/share/msbox")
    }

    /// Opens the store at `root`, creating it, its parents and its layout (0700 directories) as
    /// needed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_owned(),
        };
        // `~/.local/share` may not exist yet: its parents get the usual modes, the store 0700.
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        for dir in [
            store.root.clone(),
            store.root.join("blobs"),
            store.blobs_dir(),
            store.ingest_dir(),
            store.images_dir(),
        ] {
            make_private_dir(&dir)?;
        }
        let lock = store.lock_path();
        private_file(&lock, false).map_err(io_err("create", &lock))?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the CLI keeps its per-layer EROFS images; the store itself never touches it.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The path of a complete blob, if the store has it. `None` for a digest that is not
    /// `sha256:<64 lowercase hex>`, so no unchecked text becomes a path.
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        let path = self.blobs_dir().join(digest_hex(digest)?);
        path.is_file().then_some(path)
    }

    /// The blob's size, if the store has it.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        Some(fs::metadata(self.blob(digest)?).ok()?.len())
    }

    /// Reads a whole blob (a manifest or config: small), if the store has it.
    pub fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = self.blob(digest) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Adds bytes already verified against `digest` (a manifest), atomically.
    pub(crate) fn put_blob(&self, digest: &str, data: &[u8]) -> Result<(), StoreError> {
        let Some(mut ingest) = self.begin_ingest(digest)? else {
            return Ok(());
        };
        let path = ingest.path().to_owned();
        ingest
            .file()
            .write_all(data)
            .map_err(io_err("write", &path))?;
        ingest.commit(&sha256_digest(data))
    }

    /// Starts writing a blob: `None` when the store has it already (perhaps written meanwhile by
    /// another process that held the ingest lock). Blocks while another process writes the same
    /// blob. The returned file is empty: a partial from an earlier pull is never trusted.
    pub(crate) fn begin_ingest(&self, digest: &str) -> Result<Option<Ingest>, StoreError> {
        let hex = check_digest(digest)?;
        let path = self.ingest_dir().join(format!("{hex}.partial"));
        let dest = self.blobs_dir().join(hex);
        loop {
            if dest.is_file() {
                return Ok(None);
            }
            let file = private_file(&path, false).map_err(io_err("create", &path))?;
            let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| {
                StoreError::Lock {
                    path: path.clone(),
                    source,
                }
            })?;
            // The writer before us may have renamed or removed the file we waited on: start over
            // on whatever is at the path now.
            let ours = lock.metadata().map_err(io_err("stat", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
            let ingest = Ingest {
                file: Some(lock),
                path,
                dest,
                digest: digest.to_owned(),
                committed: false,
            };
            if ingest.dest.is_file() {
                return Ok(None); // Dropping it removes the file we created.
            }
            ingest
                .file_ref()
                .set_len(0)
                .map_err(io_err("truncate", &ingest.path))?;
            return Ok(Some(ingest));
        }
    }

    /// The record of a pulled image, by any spelling of its reference.
    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(&normalize_reference(reference)?);
        read_record(&path)
    }

    /// Every record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // A record being written.
            }
            if let Some(record) = read_record(&entry.path())? {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Writes the record of a pulled image, replacing the reference's previous one atomically.
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.reference);
        let data = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &data)
    }

    /// Removes the record of an image (its blobs stay until [`Store::gc`]). `false` if there
    /// was none.
    pub fn remove_image(&self, reference: &str) -> Result<bool, StoreError> {
        let path = self.record_path(&normalize_reference(reference)?);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Holds off [`Store::gc`] while it lives: a pull takes it before its first blob, since the
    /// record that keeps its blobs is written last. Blocks while a gc runs.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockShared)
    }

    fn lock(&self, how: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.lock_path();
        let file = private_file(&path, false).map_err(io_err("open", &path))?;
        let lock =
            Flock::lock(file, how).map_err(|(_, source)| StoreError::Lock { path, source })?;
        Ok(StoreLock { _lock: lock })
    }

    /// Removes the blobs that no record references and the ingest files that nobody writes and
    /// that are older than [`INGEST_GRACE`]. Waits for running pulls to finish first. Leaves
    /// `layers/` alone.
    pub fn gc(&self) -> Result<Gc, StoreError> {
        self.gc_with_grace(INGEST_GRACE)
    }

    /// [`Store::gc`] with another grace period for ingest files.
    pub fn gc_with_grace(&self, ingest_grace: Duration) -> Result<Gc, StoreError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let mut keep = std::collections::HashSet::new();
        for record in self.images()? {
            keep.insert(record.repo_digest);
            keep.insert(record.manifest_digest);
            keep.insert(record.config_digest);
            keep.extend(record.layers.into_iter().map(|l| l.digest));
        }
        let mut gc = Gc::default();

        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).map_err(io_err("read directory", &blobs))? {
            let entry = entry.map_err(io_err("read directory", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    gc.blobs_removed += 1;
                    gc.blob_bytes_freed += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }

        let ingest = self.ingest_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(&ingest).map_err(io_err("read directory", &ingest))? {
            let entry = entry.map_err(io_err("read directory", &ingest))?;
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < ingest_grace {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // A writer holds the lock for as long as it writes: leave its file alone.
            let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            match fs::remove_file(&path) {
                Ok(()) => {
                    gc.ingest_removed += 1;
                    gc.ingest_bytes_freed += meta.len();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(gc)
    }

    /// A name for the reference's record that is safe whatever the reference holds.
    fn record_path(&self, normalized: &str) -> PathBuf {
        let hex = format!("{:x}", Sha256::digest(normalized.as_bytes()));
        self.images_dir().join(format!("{hex}.json"))
    }
}

/// A shared lock on the store that keeps [`Store::gc`] out (see [`Store::lock_shared`]).
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

/// A blob being written to `ingest/<hex>.partial`, locked; removed on drop unless committed.
#[derive(Debug)]
pub(crate) struct Ingest {
    file: Option<Flock<File>>,
    path: PathBuf,
    dest: PathBuf,
    digest: String,
    committed: bool,
}

impl Ingest {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn file_ref(&self) -> &File {
        self.file.as_ref().expect("the file lives until drop")
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file lives until drop")
    }

    /// A second handle on the file for async writes (the lock stays with this `Ingest`).
    pub(crate) fn tokio_file(&self) -> Result<tokio::fs::File, StoreError> {
        let clone = self
            .file_ref()
            .try_clone()
            .map_err(io_err("duplicate", &self.path))?;
        Ok(tokio::fs::File::from_std(clone))
    }

    /// Renames the written bytes into `blobs/`. `actual` is the digest of what the caller wrote,
    /// which it hashed while writing and already compared with what the manifest promised.
    pub(crate) fn commit(mut self, actual: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        if actual != self.digest {
            return Err(io_err("commit", &path)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("wrote {actual}, expected {}", self.digest),
            )));
        }
        self.file().sync_all().map_err(io_err("sync", &path))?;
        fs::rename(&self.path, &self.dest).map_err(io_err("rename into blobs/", &path))?;
        self.committed = true;
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
            // Still under our lock: a writer waiting for it sees the path gone and starts anew.
            let _ = fs::remove_file(&self.path);
        }
        drop(self.file.take());
    }
}

fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create directory", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if !meta.is_dir() {
        return Err(io_err("use as a directory", dir)(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "not a directory",
        )));
    }
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err("chmod", dir))?;
    }
    Ok(())
}

/// Opens (creating) a file with mode 0600 set explicitly, so the umask cannot change it.
fn private_file(path: &Path, truncate: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(FILE_MODE)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("records live in images/");
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = private_file(&tmp, true).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_record(path: &Path) -> Result<Option<ImageRecord>, StoreError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| StoreError::Record {
            path: path.to_owned(),
            source,
        })
}

/// RFC 3339 in UTC, to the second, for [`ImageRecord::pulled`].
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (no dates before it here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_layout_under_missing_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("home/.local/share/msbox");
        let store = Store::open(&root).unwrap();
        for dir in ["", "blobs", "blobs/sha256", "ingest", "images"] {
            let meta = fs::metadata(root.join(dir)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{dir}");
        }
        let lock = fs::metadata(root.join("lock")).unwrap();
        assert_eq!(lock.permissions().mode() & 0o7777, 0o600);
        assert!(!store.layers_dir().exists());
        assert_eq!(store.images().unwrap(), vec![]);
        assert_eq!(store.blob(&format!("sha256:{}", "a".repeat(64))), None);
        assert_eq!(store.blob("sha256:../../lock"), None);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(Store::default_root(), PathBuf::from("/var/lib/msbox"));
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn digests_that_become_paths() {
        let hex = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        for bad in [
            "sha256:".to_owned(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{hex}"),
            format!("sha256:../{}", "a".repeat(61)),
            hex.clone(),
        ] {
            assert_eq!(digest_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn references_normalize_like_docker() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            (
                "docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
        ] {
            assert_eq!(normalize_reference(given).unwrap(), want, "{given}");
        }
        for bad in ["Busybox", "a b", "", "busybox:", "busybox@sha256:12"] {
            assert!(normalize_reference(bad).is_err(), "{bad}");
        }
    }
}
