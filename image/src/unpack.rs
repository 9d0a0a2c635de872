//! One image layer unpacked into a directory, in overlayfs' on-disk format.
//!
//! Each unpacked layer becomes a read-only EROFS image (`mkfs.erofs IMG DIR`) that the guest
//! stacks as an overlayfs lower, so the layer's deletions must already be what overlayfs reads:
//! a whiteout `DIR/.wh.NAME` becomes a character device 0/0 `DIR/NAME`, an opaque marker
//! `DIR/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on `DIR`, and no other `.wh.`
//! name is created. Everything else keeps what the image says: numeric owners, modes with the
//! setuid/setgid/sticky bits, mtimes, device nodes, FIFOs, hard links, symlinks and the
//! `SCHILY.xattr.*` xattrs, except those of overlayfs' namespaces, which would steer the guest's
//! overlayfs and are dropped.
//!
//! The layer is untrusted and this runs as root on the host, so nothing is created by path.
//! Every entry is created relative to a descriptor of the destination: its parents are opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, and its last component
//! is only ever created anew (`O_EXCL`, `mknodat`, `symlinkat`, `linkat`) or looked at without
//! following it (`AT_SYMLINK_NOFOLLOW`, `O_NOFOLLOW`). Entries named by `..` or an absolute path,
//! entries below a symlink (including one this layer made), and hard links to anything but an
//! existing non-directory of this layer are refused with an error naming the layer and the entry.
//!
//! The tar stream is walked here block by block, each header decoded by [`tar::Header`], instead
//! of through `tar::Archive`: the latter splits PAX records on newlines, so a binary xattr (a
//! file capability holding the byte 0x0a) fails the layer or, crafted, makes it see a `path`,
//! `linkpath` or `size` record that other readers do not; and it reads extension headers into
//! memory without a bound. PAX records are read here by their length prefix, extension headers
//! up to [`META_LIMIT`], file data through one fixed buffer.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use tar::EntryType;

/// What a layer held: its diff id is checked by the caller against the image config's
/// `rootfs.diff_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream, every byte of it up to its end of file
    /// (what follows the end-of-archive blocks too), as the image config records it.
    pub diff_id: String,
    /// How many members the tar stream held (extension headers not counted).
    pub entries: u64,
    /// Bytes of the uncompressed tar stream (what `docker images` counts as a layer's size).
    pub size: u64,
}

/// Why a layer was not (completely) unpacked. `dest` may hold a partial unpack: the caller
/// removes it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The blob could not be opened or its compression not read.
    #[error("layer {layer}: open the blob {path}")]
    OpenBlob {
        /// The layer, as the caller names it.
        layer: String,
        /// The blob file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The destination directory could not be opened.
    #[error("layer {layer}: open the destination directory {path}")]
    OpenDest {
        /// The layer, as the caller names it.
        layer: String,
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing the stream failed, or it ended inside a header or a file.
    #[error("layer {layer}: read the uncompressed tar stream (member at byte {offset})")]
    Read {
        /// The layer, as the caller names it.
        layer: String,
        /// Where the member being read starts in the uncompressed stream.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stream is not a well-formed tar archive.
    #[error("layer {layer}: malformed tar stream at byte {offset}: {what}")]
    Malformed {
        /// The layer, as the caller names it.
        layer: String,
        /// Where the bad header starts in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// An entry would act outside the destination, or names something it must not.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Refused {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// Why.
        reason: Refusal,
    },
    /// A hard link's target is refused.
    #[error("layer {layer}: entry {entry:?}: hard link target {target:?}: {reason}")]
    RefusedLink {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// The link's target as the archive has it.
        target: String,
        /// Why.
        reason: Refusal,
    },
    /// An entry's header holds a value that cannot be applied.
    #[error("layer {layer}: entry {entry:?}: {what}")]
    Invalid {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// What is wrong.
        what: String,
    },
    /// An entry of a kind this unpacker cannot create faithfully.
    #[error("layer {layer}: entry {entry:?}: {what} is not supported")]
    Unsupported {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// What kind of entry.
        what: String,
    },
    /// The kernel refused an operation with `EPERM`: creating device nodes, owners and
    /// `trusted.*` xattrs needs root.
    #[error(
        "layer {layer}: entry {entry:?}: {op}: not permitted; unpacking a layer needs root \
         (CAP_MKNOD, CAP_CHOWN, CAP_FOWNER, CAP_SYS_ADMIN for trusted.* xattrs)"
    )]
    NeedsRoot {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// The operation.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating an entry failed.
    #[error("layer {layer}: entry {entry:?}: {op}")]
    Io {
        /// The layer, as the caller names it.
        layer: String,
        /// The entry's path as the archive has it.
        entry: String,
        /// The operation.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why an entry (or a hard link's target) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A `..` component.
    #[error("path leaves the layer's root ('..')")]
    DotDot,
    /// A leading `/`.
    #[error("absolute path")]
    Absolute,
    /// A parent on the way is a symbolic link (the kernel refused to follow it).
    #[error("parent path goes through a symbolic link")]
    ThroughSymlink,
    /// A parent on the way is not a directory.
    #[error("a parent in the path is not a directory")]
    ParentNotDirectory,
    /// A parent on the way is a mount point.
    #[error("path crosses a mount point")]
    CrossesMount,
    /// A NUL byte (only possible in PAX records).
    #[error("path holds a NUL byte")]
    Nul,
    /// Longer than `PATH_MAX`.
    #[error("path longer than {PATH_LIMIT} bytes")]
    TooLong,
    /// The entry names the layer's root itself with a type other than directory.
    #[error("names the layer's root itself")]
    Root,
    /// A whiteout name used as a directory (`.wh.x/y`).
    #[error("a whiteout name ('.wh.') used as a directory")]
    WhiteoutParent,
    /// A whiteout of no name, `.` or `..`.
    #[error("whiteout of an invalid name")]
    BadWhiteout,
    /// A hard link's target that this layer did not create (before the link).
    #[error("does not exist in this layer")]
    Missing,
    /// A hard link to a directory.
    #[error("is a directory")]
    Directory,
    /// A hard link to itself.
    #[error("is the link itself")]
    Itself,
}

/// Largest extension header (PAX records, GNU long name) read into memory.
pub const META_LIMIT: u64 = 1 << 20;

/// Longest entry path accepted: Linux's `PATH_MAX` (`libc::PATH_MAX`, an `i32`). It also bounds
/// how deep a layer's tree can be.
pub const PATH_LIMIT: usize = 4096;

/// The tar block size.
const BLOCK: usize = 512;

/// The tar block size, to count bytes of the stream.
const BLOCK_BYTES: u64 = 512;

/// Buffer for file data.
const COPY_BUFFER: usize = 64 * 1024;

/// Prefix of whiteout names.
const WHITEOUT: &[u8] = b".wh.";

/// Prefix of whiteout metadata names (aufs'), of which only [`OPAQUE`] has a meaning.
const WHITEOUT_META: &[u8] = b".wh..wh.";

/// The opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The xattr overlayfs reads an opaque directory from.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// Xattr namespaces of overlayfs (`userxattr` mounts read the second): never taken from an image.
const OVERLAY_XATTRS: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Unpacks the layer `blob` (tar, gzip'd tar or zstd'd tar, told apart by their magic bytes)
/// into the existing empty directory `dest`. `layer` names the layer in errors (its digest).
pub fn unpack_layer(blob: &Path, dest: &Path, layer: &str) -> Result<Unpacked, UnpackError> {
    let input = open_blob(blob).map_err(|source| UnpackError::OpenBlob {
        layer: layer.to_owned(),
        path: blob.to_owned(),
        source,
    })?;
    let root = open_dest(dest).map_err(|source| UnpackError::OpenDest {
        layer: layer.to_owned(),
        path: dest.to_owned(),
        source,
    })?;
    let mut stream = Stream::new(input);
    let mut tree = Tree::new(root, layer);
    let entries = walk(&mut stream, &mut tree)?;
    tree.set_directory_times()?;
    let offset = stream.offset;
    let (diff_id, size) = stream.finish().map_err(|source| UnpackError::Read {
        layer: layer.to_owned(),
        offset,
        source,
    })?;
    tracing::debug!(layer, %diff_id, entries, size, dest = %dest.display(), "unpacked a layer");
    Ok(Unpacked {
        diff_id,
        entries,
        size,
    })
}

/// The blob, decompressed as its first bytes say: gzip `1f 8b`, zstd `28 b5 2f fd`, else tar.
fn open_blob(blob: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = File::open(blob)?;
    let mut magic = [0u8; 4];
    let mut len = 0;
    while len < magic.len() {
        match file.read(&mut magic[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let file = BufReader::with_capacity(COPY_BUFFER, file);
    Ok(match &magic[..len] {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        _ => Box::new(file),
    })
}

/// A descriptor of the destination, everything's anchor.
fn open_dest(dest: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(owned(fd))
}

/// Takes ownership of a descriptor a successful system call returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open (nix 0.29 hands descriptors out as
    // `RawFd`); nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The uncompressed tar stream: hashed as it is read (for the diff id), counted (for errors).
struct Stream {
    reader: BufReader<Hashing>,
    offset: u64,
}

/// Feeds every byte read through it to SHA-256.
struct Hashing {
    inner: Box<dyn Read>,
    sha: Sha256,
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.offset += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }
}

impl Stream {
    fn new(inner: Box<dyn Read>) -> Stream {
        Stream {
            reader: BufReader::with_capacity(
                COPY_BUFFER,
                Hashing {
                    inner,
                    sha: Sha256::new(),
                },
            ),
            offset: 0,
        }
    }

    /// The next 512-byte block; `None` at the end of the stream before its first byte.
    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut len = 0;
        while len < BLOCK {
            match self.read(&mut block[len..]) {
                Ok(0) if len == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ends inside a header",
                    ))
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(block))
    }

    /// Reads and drops `len` bytes, which must be there.
    fn skip(&mut self, len: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut *self).take(len), &mut io::sink())?;
        if skipped < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends inside a member",
            ));
        }
        Ok(())
    }

    /// Reads the rest of the stream, to its end of file; returns the digest of all of it and
    /// its length.
    fn finish(mut self) -> io::Result<(String, u64)> {
        let rest = io::copy(&mut self, &mut io::sink())?;
        debug_assert!(rest <= self.offset);
        let digest = self.reader.into_inner().sha.finalize();
        Ok((format!("sha256:{digest:x}"), self.offset))
    }
}

/// Bytes to the next block boundary after `size` bytes of data.
fn padding(size: u64) -> u64 {
    (BLOCK_BYTES - size % BLOCK_BYTES) % BLOCK_BYTES
}

/// What extension headers said about the next member.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// The PAX records of one member that matter here.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<TimeSpec>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A `GNU.sparse.*` record: the data is a sparse map, not the file.
    sparse: bool,
}

/// A PAX record's key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits PAX records (`<len> <key>=<value>\n`, `len` counting the whole record) by their
/// length, so values may hold any byte.
fn pax_records(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .filter(|&i| i > 0 && rest[..i].iter().all(u8::is_ascii_digit))
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&len| len > space + 1 && len <= rest.len())
            .ok_or("a PAX record's length is out of bounds")?;
        let record = &rest[space + 1..len];
        let (&last, key_value) = record.split_last().ok_or("an empty PAX record")?;
        if last != b'\n' {
            return Err("a PAX record does not end with a newline".to_owned());
        }
        let equals = key_value
            .iter()
            .position(|&b| b == b'=')
            .filter(|&i| i > 0)
            .ok_or("a PAX record without a key")?;
        records.push((&key_value[..equals], &key_value[equals + 1..]));
        rest = &rest[len..];
    }
    Ok(records)
}

impl Pax {
    /// The records of a local (`x`) extension header; the last of a repeated key wins.
    fn parse(data: &[u8]) -> Result<Pax, String> {
        let mut pax = Pax::default();
        for (key, value) in pax_records(data)? {
            // An empty value removes the key (the header's field applies).
            let set = (!value.is_empty()).then(|| value.to_vec());
            let number = |what: &str| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| format!("PAX {what} {:?}", String::from_utf8_lossy(value)))
            };
            match key {
                b"path" => pax.path = set,
                b"linkpath" => pax.linkpath = set,
                b"size" => pax.size = set.map(|_| number("size")).transpose()?,
                b"uid" => pax.uid = set.map(|_| number("uid")).transpose()?,
                b"gid" => pax.gid = set.map(|_| number("gid")).transpose()?,
                b"mtime" => {
                    pax.mtime = set
                        .map(|_| {
                            pax_time(value).ok_or_else(|| {
                                format!("PAX mtime {:?}", String::from_utf8_lossy(value))
                            })
                        })
                        .transpose()?;
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        pax.xattrs.insert(name.to_vec(), value.to_vec());
                    } else if key.starts_with(b"GNU.sparse.") {
                        pax.sparse = true;
                    } else if key.starts_with(b"LIBARCHIVE.xattr.") {
                        tracing::warn!(
                            key = %String::from_utf8_lossy(key),
                            "libarchive's xattr records are not applied (only SCHILY.xattr.*)"
                        );
                    }
                }
            }
        }
        Ok(pax)
    }
}

/// A PAX time: decimal seconds, maybe negative, maybe with a fraction.
fn pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for i in 0..9 {
        let digit = fraction.as_bytes().get(i).map_or(0, |b| b - b'0');
        nanos = nanos * 10 + i64::from(digit);
    }
    let (secs, nanos) = match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, _) => (-secs - 1, 1_000_000_000 - nanos),
    };
    Some(TimeSpec::new(secs, nanos))
}

/// A header's checksum: the unsigned sum of its bytes with the checksum field as spaces (some
/// old writers summed signed bytes; accepted too).
fn checksum_ok(header: &tar::Header) -> Result<(), String> {
    let bytes = header.as_bytes();
    let stored = header.cksum().map_err(|e| e.to_string())?;
    let field = 148..156;
    let mut unsigned: u32 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i64::from(i8::from_ne_bytes([b]));
    }
    if stored == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err(format!(
            "header checksum {stored} does not match the header ({unsigned})"
        ))
    }
}

/// A numeric header field as Go's `archive/tar` (so Docker) reads it: a blank one (NULs and
/// spaces, as some writers leave fields they do not use) is 0, where the tar crate refuses it.
fn number<T: Default>(
    field: &[u8],
    what: &str,
    parse: impl FnOnce() -> io::Result<T>,
) -> Result<T, String> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(T::default());
    }
    parse().map_err(|e| format!("header field {what}: {e}"))
}

/// One member of the archive, its extension headers applied.
struct Member {
    path: Vec<u8>,
    kind: EntryType,
    link: Option<Vec<u8>>,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    major: u32,
    minor: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: bool,
}

impl Member {
    fn new(header: &tar::Header, ext: Extensions, header_size: u64) -> Result<Member, Fail> {
        let mut pax = ext.pax.unwrap_or_default();
        let path = pax
            .path
            .take()
            .or(ext.long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = pax
            .linkpath
            .take()
            .or(ext.long_link)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let old = header.as_old();
        let id = |what: &str, value: u64| {
            u32::try_from(value).map_err(|_| Fail::Invalid(format!("{what} {value} out of range")))
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => {
                let secs = number(&old.mtime, "mtime", || header.mtime()).map_err(Fail::Invalid)?;
                let secs = i64::try_from(secs)
                    .map_err(|_| Fail::Invalid(format!("mtime {secs} out of range")))?;
                TimeSpec::new(secs, 0)
            }
        };
        let mut kind = header.entry_type();
        // An old (pre-POSIX) regular file whose name ends in '/' is a directory.
        if old.linkflag[0] == 0 && path.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let (major, minor) = if matches!(kind, EntryType::Char | EntryType::Block) {
            // Where ustar and GNU headers both have them (an old header has zeros there).
            let bytes = header.as_bytes();
            (
                number(&bytes[329..337], "devmajor", || header.device_major())
                    .map_err(Fail::Invalid)?,
                number(&bytes[337..345], "devminor", || header.device_minor())
                    .map_err(Fail::Invalid)?,
            )
        } else {
            (None, None)
        };
        let uid = match pax.uid {
            Some(uid) => uid,
            None => number(&old.uid, "uid", || header.uid()).map_err(Fail::Invalid)?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => number(&old.gid, "gid", || header.gid()).map_err(Fail::Invalid)?,
        };
        let mode = number(&old.mode, "mode", || header.mode()).map_err(Fail::Invalid)?;
        Ok(Member {
            kind,
            link,
            size: pax.size.unwrap_or(header_size),
            mode: mode & 0o7777,
            uid: id("uid", uid)?,
            gid: id("gid", gid)?,
            mtime,
            major: major.unwrap_or(0),
            minor: minor.unwrap_or(0),
            xattrs: pax.xattrs,
            sparse: pax.sparse || kind == EntryType::GNUSparse,
            path,
        })
    }
}

/// Walks the archive, handing each member to `tree`; returns how many there were.
fn walk(stream: &mut Stream, tree: &mut Tree) -> Result<u64, UnpackError> {
    let layer = tree.layer.clone();
    let mut entries = 0u64;
    let mut ext = Extensions::default();
    loop {
        let at = stream.offset;
        let read = |source| UnpackError::Read {
            layer: layer.clone(),
            offset: at,
            source,
        };
        let malformed = |what: String| UnpackError::Malformed {
            layer: layer.clone(),
            offset: at,
            what,
        };
        let block = stream.block().map_err(read)?;
        // The end: end of file, or the first zero block (the rest is only hashed).
        let Some(block) = block.filter(|b| b.iter().any(|&x| x != 0)) else {
            if !ext.is_empty() {
                return Err(malformed(
                    "the archive ends after an extension header, before its member".to_owned(),
                ));
            }
            return Ok(entries);
        };
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        checksum_ok(&header).map_err(malformed)?;
        let header_size =
            number(&header.as_old().size, "size", || header.entry_size()).map_err(malformed)?;
        let kind = header.entry_type();
        let extension = matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        );
        if extension {
            if header_size > META_LIMIT {
                return Err(malformed(format!(
                    "an extension header of {header_size} bytes (at most {META_LIMIT})"
                )));
            }
            let mut data = Vec::new();
            (&mut *stream)
                .take(header_size)
                .read_to_end(&mut data)
                .map_err(read)?;
            if u64::try_from(data.len()).unwrap_or(u64::MAX) < header_size {
                return Err(read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ends inside an extension header",
                )));
            }
            stream.skip(padding(header_size)).map_err(read)?;
            let twice = || {
                malformed(format!(
                    "two extension headers of type {kind:?} for one member"
                ))
            };
            match kind {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    // NUL-terminated.
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    data.truncate(end);
                    let slot = if kind == EntryType::GNULongName {
                        &mut ext.long_name
                    } else {
                        &mut ext.long_link
                    };
                    if slot.replace(data).is_some() {
                        return Err(twice());
                    }
                }
                EntryType::XHeader => {
                    let pax = Pax::parse(&data).map_err(malformed)?;
                    if ext.pax.replace(pax).is_some() {
                        return Err(twice());
                    }
                }
                _ => global_header(&data, &header, &layer, at)?,
            }
            continue;
        }
        entries += 1;
        let ext = std::mem::take(&mut ext);
        let member = match Member::new(&header, ext, header_size) {
            Ok(member) => member,
            Err(fail) => {
                return Err(fail.into_error(&layer, &header.path_bytes(), at));
            }
        };
        let mut data = (&mut *stream).take(member.size);
        tree.apply(&member, &mut data)
            .map_err(|fail| fail.into_error(&layer, &member.path, at))?;
        let left = data.limit();
        stream.skip(left).map_err(read)?;
        stream.skip(padding(member.size)).map_err(read)?;
    }
}

/// A global PAX header: only a `comment` (as `git archive` writes) is harmless to ignore; any
/// other record would change every following member.
fn global_header(
    data: &[u8],
    header: &tar::Header,
    layer: &str,
    at: u64,
) -> Result<(), UnpackError> {
    let records = pax_records(data).map_err(|what| UnpackError::Malformed {
        layer: layer.to_owned(),
        offset: at,
        what,
    })?;
    match records.iter().find(|(key, _)| *key != b"comment") {
        None => Ok(()),
        Some((key, _)) => Err(UnpackError::Unsupported {
            layer: layer.to_owned(),
            entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
            what: format!(
                "a PAX global header with a {:?} record",
                String::from_utf8_lossy(key)
            ),
        }),
    }
}

/// Why an entry failed, before the layer and the entry are put to it.
#[derive(Debug)]
enum Fail {
    Refused(Refusal),
    Link { target: Vec<u8>, reason: Refusal },
    Invalid(String),
    Unsupported(String),
    Read(io::Error),
    Io { op: String, source: io::Error },
}

impl Fail {
    fn io(op: impl Into<String>) -> impl FnOnce(Errno) -> Fail {
        let op = op.into();
        move |errno| Fail::Io {
            op,
            source: io::Error::from(errno),
        }
    }

    fn into_error(self, layer: &str, entry: &[u8], offset: u64) -> UnpackError {
        let layer = layer.to_owned();
        let entry = String::from_utf8_lossy(entry).into_owned();
        match self {
            Fail::Refused(reason) => UnpackError::Refused {
                layer,
                entry,
                reason,
            },
            Fail::Link { target, reason } => UnpackError::RefusedLink {
                layer,
                entry,
                target: String::from_utf8_lossy(&target).into_owned(),
                reason,
            },
            Fail::Invalid(what) => UnpackError::Invalid { layer, entry, what },
            Fail::Unsupported(what) => UnpackError::Unsupported { layer, entry, what },
            Fail::Read(source) => UnpackError::Read {
                layer,
                offset,
                source,
            },
            Fail::Io { op, source } if source.raw_os_error() == Some(libc::EPERM) => {
                UnpackError::NeedsRoot {
                    layer,
                    entry,
                    op,
                    source,
                }
            }
            Fail::Io { op, source } => UnpackError::Io {
                layer,
                entry,
                op,
                source,
            },
        }
    }
}

/// An entry path's components: no `.`, refused if absolute, with `..`, a NUL or too long.
fn components(path: &[u8]) -> Result<Vec<CString>, Refusal> {
    if path.starts_with(b"/") {
        return Err(Refusal::Absolute);
    }
    if path.len() >= PATH_LIMIT {
        return Err(Refusal::TooLong);
    }
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| match c {
            b".." => Err(Refusal::DotDot),
            c => CString::new(c).map_err(|_| Refusal::Nul),
        })
        .collect()
}

/// The destination being filled.
struct Tree {
    root: OwnedFd,
    layer: String,
    /// Directory mtimes, set at the end: adding children changes them. By path, the last
    /// entry of a path wins.
    directory_times: BTreeMap<Vec<CString>, TimeSpec>,
    buffer: Vec<u8>,
}

/// Where an entry is: its parent directory, opened beneath the root, and its name there.
struct At<'a> {
    dir: &'a OwnedFd,
    name: &'a CStr,
}

impl Tree {
    fn new(root: OwnedFd, layer: &str) -> Tree {
        Tree {
            root,
            layer: layer.to_owned(),
            directory_times: BTreeMap::new(),
            buffer: vec![0; COPY_BUFFER],
        }
    }

    /// Creates `member` (its data read from `data`).
    fn apply(&mut self, member: &Member, data: &mut impl Read) -> Result<(), Fail> {
        let path = components(&member.path).map_err(Fail::Refused)?;
        let Some((name, parents)) = path.split_last() else {
            // The layer's root itself: only its metadata.
            if member.kind != EntryType::Directory {
                return Err(Fail::Refused(Refusal::Root));
            }
            let root = self.root.try_clone().map_err(|source| Fail::Io {
                op: "duplicate the root's descriptor".to_owned(),
                source,
            })?;
            self.metadata(&Node::Fd(&root), member, true)?;
            self.directory_times.insert(Vec::new(), member.mtime);
            return Ok(());
        };
        if parents
            .iter()
            .any(|p| p.to_bytes().starts_with(WHITEOUT_META))
        {
            tracing::debug!(layer = %self.layer, entry = %lossy(&member.path), "skipping an entry below a whiteout metadata directory");
            return Ok(());
        }
        if parents.iter().any(|p| p.to_bytes().starts_with(WHITEOUT)) {
            return Err(Fail::Refused(Refusal::WhiteoutParent));
        }
        let name_bytes = name.to_bytes();
        if name_bytes == OPAQUE {
            let dir = self.directory(parents, Some(member.mtime))?;
            return set_xattr(&Node::Fd(&dir), OPAQUE_XATTR, b"y");
        }
        if name_bytes.starts_with(WHITEOUT_META) {
            tracing::debug!(layer = %self.layer, entry = %lossy(&member.path), "skipping a whiteout metadata entry");
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Fail::Refused(Refusal::BadWhiteout));
            }
            let hidden = CString::new(hidden).map_err(|_| Fail::Refused(Refusal::Nul))?;
            let dir = self.directory(parents, Some(member.mtime))?;
            let at = At {
                dir: &dir,
                name: &hidden,
            };
            remove(&at)?;
            nix::sys::stat::mknodat(
                Some(dir.as_raw_fd()),
                at.name,
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(Fail::io("create the whiteout device"))?;
            let node = Node::At(at);
            node.chown(member.uid, member.gid)?;
            return node.set_times(member.mtime);
        }
        if member.sparse {
            return Err(Fail::Unsupported("a GNU sparse file".to_owned()));
        }
        let dir = self.directory(parents, Some(member.mtime))?;
        let at = At { dir: &dir, name };
        match member.kind {
            EntryType::Directory => self.make_directory(at, &path, member),
            EntryType::Regular | EntryType::Continuous => self.make_file(at, member, data),
            EntryType::Symlink => {
                let target = member
                    .link
                    .as_deref()
                    .ok_or_else(|| Fail::Invalid("a symbolic link without a target".to_owned()))?;
                let target = CString::new(target).map_err(|_| {
                    Fail::Invalid("a symbolic link target holds a NUL byte".to_owned())
                })?;
                remove(&at)?;
                nix::unistd::symlinkat(target.as_c_str(), Some(dir.as_raw_fd()), name.as_c_str())
                    .map_err(Fail::io("create the symbolic link"))?;
                let node = Node::At(at);
                self.metadata(&node, member, false)?;
                node.set_times(member.mtime)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (kind, what) = match member.kind {
                    EntryType::Char => (SFlag::S_IFCHR, "create the character device"),
                    EntryType::Block => (SFlag::S_IFBLK, "create the block device"),
                    _ => (SFlag::S_IFIFO, "create the FIFO"),
                };
                remove(&at)?;
                let dev = nix::sys::stat::makedev(member.major.into(), member.minor.into());
                nix::sys::stat::mknodat(
                    Some(dir.as_raw_fd()),
                    name.as_c_str(),
                    kind,
                    Mode::empty(),
                    dev,
                )
                .map_err(Fail::io(what))?;
                let node = Node::At(at);
                self.metadata(&node, member, true)?;
                node.set_times(member.mtime)
            }
            EntryType::Link => self.make_hard_link(at, &path, member),
            other => Err(Fail::Unsupported(format!(
                "entry type {:?}",
                char::from(other.as_byte())
            ))),
        }
    }

    /// A directory entry: made (replacing a non-directory), or only its metadata updated.
    fn make_directory(
        &mut self,
        at: At<'_>,
        path: &[CString],
        member: &Member,
    ) -> Result<(), Fail> {
        match kind_of(&at)? {
            Some(kind) if kind == SFlag::S_IFDIR => {}
            existing => {
                if existing.is_some() {
                    remove(&at)?;
                }
                nix::sys::stat::mkdirat(Some(at.dir.as_raw_fd()), at.name, Mode::S_IRWXU)
                    .map_err(Fail::io("create the directory"))?;
            }
        }
        let dir = open_child_directory(&at).map_err(Fail::io("open the directory"))?;
        self.metadata(&Node::Fd(&dir), member, true)?;
        self.directory_times.insert(path.to_vec(), member.mtime);
        Ok(())
    }

    /// A regular file: always created anew (`O_EXCL`, never through what was there).
    fn make_file(&mut self, at: At<'_>, member: &Member, data: &mut impl Read) -> Result<(), Fail> {
        remove(&at)?;
        let fd = nix::fcntl::openat(
            Some(at.dir.as_raw_fd()),
            at.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(Fail::io("create the file"))?;
        let mut file = File::from(owned(fd));
        let mut written: u64 = 0;
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Read(e)),
            };
            file.write_all(&self.buffer[..n])
                .map_err(|source| Fail::Io {
                    op: "write the file".to_owned(),
                    source,
                })?;
            written += u64::try_from(n).unwrap_or(u64::MAX);
        }
        if written < member.size {
            return Err(Fail::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends inside a file's data",
            )));
        }
        let fd = OwnedFd::from(file);
        let node = Node::Fd(&fd);
        self.metadata(&node, member, true)?;
        node.set_times(member.mtime)
    }

    /// A hard link to an existing non-directory of this layer, its target resolved as strictly
    /// as an entry's path.
    fn make_hard_link(
        &mut self,
        at: At<'_>,
        path: &[CString],
        member: &Member,
    ) -> Result<(), Fail> {
        let raw = member
            .link
            .clone()
            .ok_or_else(|| Fail::Invalid("a hard link without a target".to_owned()))?;
        let refuse = |reason| Fail::Link {
            target: raw.clone(),
            reason,
        };
        let target = components(&raw).map_err(refuse)?;
        if target == path {
            return Err(refuse(Refusal::Itself));
        }
        let Some((target_name, target_parents)) = target.split_last() else {
            return Err(refuse(Refusal::Directory));
        };
        let target_dir = match self.directory(target_parents, None) {
            Ok(dir) => dir,
            Err(Fail::Refused(reason)) => return Err(refuse(reason)),
            Err(other) => return Err(other),
        };
        let target_at = At {
            dir: &target_dir,
            name: target_name,
        };
        match kind_of(&target_at)? {
            None => return Err(refuse(Refusal::Missing)),
            Some(kind) if kind == SFlag::S_IFDIR => return Err(refuse(Refusal::Directory)),
            Some(_) => {}
        }
        remove(&at)?;
        match nix::unistd::linkat(
            Some(target_dir.as_raw_fd()),
            target_name.as_c_str(),
            Some(at.dir.as_raw_fd()),
            at.name,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            // Removed with the link's old self (a directory holding the target).
            Err(Errno::ENOENT) => Err(refuse(Refusal::Missing)),
            Err(e) => Err(Fail::io("create the hard link")(e)),
        }
    }

    /// Owner, xattrs and (unless a symlink) mode, in the order that keeps them all: chown
    /// clears setuid/setgid and `security.capability`, so it goes first.
    fn metadata(&self, node: &Node<'_>, member: &Member, chmod: bool) -> Result<(), Fail> {
        node.chown(member.uid, member.gid)?;
        for (name, value) in &member.xattrs {
            if OVERLAY_XATTRS.iter().any(|ns| name.starts_with(ns)) {
                tracing::warn!(
                    layer = %self.layer,
                    entry = %lossy(&member.path),
                    xattr = %lossy(name),
                    "dropping an overlayfs xattr from the image"
                );
                continue;
            }
            let name = CString::new(name.as_slice()).map_err(|_| {
                Fail::Invalid(format!("xattr name {:?} holds a NUL byte", lossy(name)))
            })?;
            set_xattr(node, &name, value)?;
        }
        if chmod {
            node.chmod(member.mode)?;
        }
        Ok(())
    }

    /// The directory `path` beneath the root, opened without following any symlink. With
    /// `create`, the directories missing on the way are made (0755, root's, as containerd
    /// does), with `create`'s time as their mtime so that unpacking is reproducible.
    fn directory(&mut self, path: &[CString], create: Option<TimeSpec>) -> Result<OwnedFd, Fail> {
        let dup = |root: &OwnedFd| {
            root.try_clone().map_err(|source| Fail::Io {
                op: "duplicate the root's descriptor".to_owned(),
                source,
            })
        };
        if path.is_empty() {
            return dup(&self.root);
        }
        let joined = join(path);
        match open_beneath(&self.root, &joined) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) if create.is_some() => {}
            Err(e) => return Err(resolve_failure(e)),
        }
        // Made one component at a time, each opened the same way.
        let mut dir = dup(&self.root)?;
        for (i, name) in path.iter().enumerate() {
            let next = match open_beneath(&dir, name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(
                        Some(dir.as_raw_fd()),
                        name.as_c_str(),
                        Mode::S_IRWXU,
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(Fail::io("create a parent directory")(e)),
                    }
                    let fd = open_beneath(&dir, name).map_err(resolve_failure)?;
                    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                        .map_err(Fail::io("set the mode of a parent directory"))?;
                    if let Some(mtime) = create {
                        self.directory_times
                            .entry(path[..=i].to_vec())
                            .or_insert(mtime);
                    }
                    fd
                }
                Err(e) => return Err(resolve_failure(e)),
            };
            dir = next;
        }
        Ok(dir)
    }

    /// Sets the directories' mtimes (and atimes), now that all their children exist.
    /// Directories since replaced or moved below a symlink are skipped.
    fn set_directory_times(&mut self) -> Result<(), UnpackError> {
        for (path, mtime) in std::mem::take(&mut self.directory_times) {
            let dir = match self.directory(&path, None) {
                Ok(dir) => dir,
                Err(Fail::Refused(_)) => continue,
                Err(fail) => {
                    return Err(fail.into_error(&self.layer, &join(&path).into_bytes(), 0))
                }
            };
            if let Err(fail) = Node::Fd(&dir).set_times(mtime) {
                return Err(fail.into_error(&self.layer, &join(&path).into_bytes(), 0));
            }
        }
        Ok(())
    }
}

/// `a/b/c` of components.
fn join(path: &[CString]) -> CString {
    let bytes: Vec<u8> = path
        .iter()
        .map(|c| c.as_bytes())
        .collect::<Vec<_>>()
        .join(&b'/');
    // The components hold no NUL, nor does '/'.
    CString::new(bytes).unwrap_or_default()
}

/// Lossy text of a path, for logs.
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Opens the directory `path` beneath `dir`: no symlink followed (`RESOLVE_NO_SYMLINKS` refuses
/// the last component too, with `ELOOP`, where `O_NOFOLLOW | O_DIRECTORY` would say `ENOTDIR`),
/// no `..` out, no mount crossed. Retried on `EAGAIN` (a concurrent rename).
fn open_beneath(dir: &OwnedFd, path: &CStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir.as_raw_fd(), path, how) {
            Ok(fd) => return Ok(owned(fd)),
            Err(Errno::EAGAIN) if tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What a failed `open_beneath` means for the entry.
fn resolve_failure(errno: Errno) -> Fail {
    match errno {
        Errno::ELOOP => Fail::Refused(Refusal::ThroughSymlink),
        Errno::ENOTDIR => Fail::Refused(Refusal::ParentNotDirectory),
        Errno::EXDEV => Fail::Refused(Refusal::CrossesMount),
        Errno::ENOENT => Fail::Refused(Refusal::Missing),
        Errno::ENOSYS => Fail::Io {
            op: "resolve the parent directory with openat2 (Linux 5.6 or later)".to_owned(),
            source: io::Error::from(errno),
        },
        e => Fail::io("resolve the parent directory")(e),
    }
}

/// Opens the directory `at` itself (not following it, should it be a symlink).
fn open_child_directory(at: &At<'_>) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        Some(at.dir.as_raw_fd()),
        at.name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
}

/// The file type at `at` (not following a symlink), or `None` if nothing is there.
fn kind_of(at: &At<'_>) -> Result<Option<SFlag>, Fail> {
    match nix::sys::stat::fstatat(
        Some(at.dir.as_raw_fd()),
        at.name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(
            st.st_mode & SFlag::S_IFMT.bits(),
        ))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Fail::io("look at what is there")(e)),
    }
}

/// Removes what this layer put at `at` before: a later entry replaces it. A directory goes with
/// its contents (std's `remove_dir_all` opens each level with `O_NOFOLLOW`).
fn remove(at: &At<'_>) -> Result<(), Fail> {
    match kind_of(at)? {
        None => Ok(()),
        Some(kind) if kind == SFlag::S_IFDIR => {
            std::fs::remove_dir_all(proc_path(at)).map_err(|source| Fail::Io {
                op: "remove the directory this entry replaces".to_owned(),
                source,
            })
        }
        Some(_) => nix::unistd::unlinkat(
            Some(at.dir.as_raw_fd()),
            at.name,
            UnlinkatFlags::NoRemoveDir,
        )
        .map_err(Fail::io("remove what this entry replaces")),
    }
}

/// `/proc/self/fd/<dir>/<name>`: `at` by a path whose only symlink is the descriptor's magic
/// link, for the calls that have no `*at` form (`lsetxattr`, `chmod`, `remove_dir_all`).
fn proc_path(at: &At<'_>) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", at.dir.as_raw_fd()));
    path.push(OsStr::from_bytes(at.name.to_bytes()));
    path
}

/// What an entry's metadata is applied to: an open regular file or directory, or (symlinks,
/// devices, FIFOs, which are not opened) a name in an open directory.
enum Node<'a> {
    Fd(&'a OwnedFd),
    At(At<'a>),
}

impl Node<'_> {
    fn chown(&self, uid: u32, gid: u32) -> Result<(), Fail> {
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        match self {
            Node::Fd(fd) => nix::unistd::fchown(fd.as_raw_fd(), uid, gid),
            Node::At(at) => nix::unistd::fchownat(
                Some(at.dir.as_raw_fd()),
                at.name,
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
        }
        .map_err(Fail::io("set the owner"))
    }

    /// The mode, setuid/setgid/sticky included. A name is first opened `O_PATH | O_NOFOLLOW`
    /// and checked not to be a symlink, then changed through that descriptor.
    fn chmod(&self, mode: u32) -> Result<(), Fail> {
        let mode = Mode::from_bits_truncate(mode);
        match self {
            Node::Fd(fd) => {
                nix::sys::stat::fchmod(fd.as_raw_fd(), mode).map_err(Fail::io("set the mode"))
            }
            Node::At(at) => {
                let fd = nix::fcntl::openat(
                    Some(at.dir.as_raw_fd()),
                    at.name,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(owned)
                .map_err(Fail::io("open to set the mode"))?;
                let st = nix::sys::stat::fstat(fd.as_raw_fd())
                    .map_err(Fail::io("open to set the mode"))?;
                if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
                    return Ok(());
                }
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                nix::sys::stat::fchmodat(None, path.as_str(), mode, FchmodatFlags::FollowSymlink)
                    .map_err(Fail::io("set the mode"))
            }
        }
    }

    /// Access and modification time, both the entry's mtime.
    fn set_times(&self, mtime: TimeSpec) -> Result<(), Fail> {
        match self {
            Node::Fd(fd) => nix::sys::stat::futimens(fd.as_raw_fd(), &mtime, &mtime),
            Node::At(at) => nix::sys::stat::utimensat(
                Some(at.dir.as_raw_fd()),
                at.name,
                &mtime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            ),
        }
        .map_err(Fail::io("set the modification time"))
    }
}

/// Sets one xattr: on the descriptor, or on the name without following it (`lsetxattr`).
fn set_xattr(node: &Node<'_>, name: &CStr, value: &[u8]) -> Result<(), Fail> {
    let ret = match node {
        // SAFETY: `name` is NUL-terminated and `value` is `value.len()` readable bytes, both
        // alive for the call; the descriptor is open.
        Node::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        Node::At(at) => {
            let path = CString::new(proc_path(at).into_os_string().into_encoded_bytes())
                .unwrap_or_default();
            // SAFETY: `path` and `name` are NUL-terminated and `value` is `value.len()` readable
            // bytes, all alive for the call.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Fail::Io {
            op: format!("set the xattr {}", name.to_string_lossy()),
            source: io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One PAX record, its length prefix computed.
    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len += 1;
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    #[test]
    fn pax_records_are_split_by_length_not_newlines() {
        // A file capability holding 0x0a, and a value that a reader splitting on newlines would
        // take for a `path` record.
        let value = b"\x01\x00\x00\x02\x0a\n13 path=evil\n";
        let mut data = record("SCHILY.xattr.security.capability", value);
        data.extend(record("path", b"good"));
        let pax = Pax::parse(&data).unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"good"[..]));
        assert_eq!(
            pax.xattrs
                .get(&b"security.capability"[..])
                .map(Vec::as_slice),
            Some(&value[..])
        );
    }

    #[test]
    fn pax_records_out_of_bounds_are_malformed() {
        assert_eq!(record("path", b"x"), b"9 path=x\n");
        assert_eq!(
            pax_records(b"9 path=x\n").unwrap(),
            vec![(&b"path"[..], &b"x"[..])]
        );
        assert!(pax_records(b"99 path=x\n").is_err());
        assert!(pax_records(b"8 path=x\n").is_err());
        assert!(pax_records(b"8 pathx\n").is_err());
        assert!(pax_records(b"x path=x\n").is_err());
        assert!(pax_records(b"9 path=x\n\0").is_err());
        assert!(pax_records(b"").unwrap().is_empty());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000"),
            Some(TimeSpec::new(1_700_000_000, 0))
        );
        assert_eq!(pax_time(b"1.5"), Some(TimeSpec::new(1, 500_000_000)));
        assert_eq!(
            pax_time(b"1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(pax_time(b"-1.25"), Some(TimeSpec::new(-2, 750_000_000)));
        assert_eq!(pax_time(b"-3"), Some(TimeSpec::new(-3, 0)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b".5"), None);
        assert_eq!(pax_time(b"+1"), None);
    }

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(components(b"../x"), Err(Refusal::DotDot));
        assert_eq!(components(b"a/../../x"), Err(Refusal::DotDot));
        assert_eq!(components(b"/etc/passwd"), Err(Refusal::Absolute));
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![c"a".to_owned(), c"b".to_owned(), c"c".to_owned()]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert_eq!(components(&vec![b'a'; PATH_LIMIT]), Err(Refusal::TooLong));
    }
}
