//! `msb_image::unpack`: layers unpacked in overlayfs' format, with what the image says kept and
//! every escape refused while the host file system stays untouched.
//!
//! The layers are built here with the `tar` crate (malicious names written into the header's
//! bytes, since `set_path` refuses them). Needs root (mknod, chown, trusted.* xattrs); skipped
//! with a message otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use msb_image::unpack::{unpack_layer, Refusal, UnpackError, Unpacked};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// How the tests name their layer.
const LAYER: &str = "sha256:test";

/// A fixed, recognisable time base.
const T: u64 = 1_600_000_000;

/// `return`s from the test with a message when not root.
macro_rules! need_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: unpacking needs root (mknod, chown, trusted.* xattrs)");
            return;
        }
    };
}

/// Owner, mode and mtime of a built entry.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// `mode`, owned by root, at time `T`.
fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: T,
    }
}

/// A layer's tar stream being built.
struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, m: Meta, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        h
    }

    fn dir(mut self, path: &str, m: Meta) -> Layer {
        let mut h = Layer::header(EntryType::Directory, m, 0);
        self.tar.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(mut self, path: &str, m: Meta, data: &[u8]) -> Layer {
        let size = u64::try_from(data.len()).unwrap();
        let mut h = Layer::header(EntryType::Regular, m, size);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str, m: Meta) -> Layer {
        let mut h = Layer::header(kind, m, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    fn symlink(self, path: &str, target: &str) -> Layer {
        self.link(EntryType::Symlink, path, target, meta(0o777))
    }

    fn hardlink(self, path: &str, target: &str) -> Layer {
        self.link(EntryType::Link, path, target, meta(0o644))
    }

    fn node(mut self, kind: EntryType, path: &str, m: Meta, dev: (u32, u32)) -> Layer {
        let mut h = Layer::header(kind, m, 0);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.tar.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A regular file with a POSIX ustar header (a long path split into prefix and name), its
    /// owner fields left blank as some writers do (read as 0, as Go's reader does).
    fn ustar_file(mut self, path: &str, data: &[u8]) -> Layer {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(T);
        h.set_size(u64::try_from(data.len()).unwrap());
        h.set_path(path).unwrap();
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
        self
    }

    /// An empty regular file: whiteouts and markers.
    fn marker(self, path: &str) -> Layer {
        self.file(path, meta(0o644), b"")
    }

    /// PAX records for the next entry.
    fn pax(mut self, records: &[(&str, &[u8])]) -> Layer {
        self.tar
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// An entry whose name (and link name) bytes are written as they are, `..` and leading `/`
    /// included.
    fn raw(mut self, kind: EntryType, name: &[u8], link: Option<&[u8]>, data: &[u8]) -> Layer {
        let size = u64::try_from(data.len()).unwrap();
        let mut h = Layer::header(kind, meta(0o644), size);
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
        self
    }

    /// The tar stream, end blocks included.
    fn tar(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }
}

/// How a blob wraps its tar stream.
#[derive(Debug, Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

/// A temporary directory holding `root` (the destination, empty) and `outside` (a sentinel
/// with a file the layers try to reach).
struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "precious").unwrap();
    std::fs::create_dir(outside.join("sub")).unwrap();
    Fixture { tmp, root, outside }
}

impl Fixture {
    /// Unpacks `tar` wrapped as `c`.
    fn unpack(&self, tar: &[u8], c: Compression) -> Result<Unpacked, UnpackError> {
        let blob = self.tmp.path().join(format!("blob-{c:?}"));
        std::fs::write(&blob, compress(tar, c)).unwrap();
        let result = unpack_layer(&blob, &self.root, LAYER);
        std::fs::remove_file(&blob).unwrap();
        result
    }

    /// Everything outside the destination that a layer could reach: the sentinel directory in
    /// full (ctime included, which any chmod, chown or xattr changes), the names beside the
    /// destination, and /etc/passwd.
    fn outside_state(&self) -> (Tree, BTreeSet<String>, Node) {
        let beside = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (
            snapshot(&self.outside, true),
            beside,
            node(Path::new("/etc/passwd"), true),
        )
    }

    /// Unpacks `tar` (uncompressed), checks that nothing outside the destination changed, and
    /// expects the layer refused.
    fn refused(&self, tar: &[u8]) -> UnpackError {
        let before = self.outside_state();
        let result = self.unpack(tar, Compression::None);
        assert_eq!(self.outside_state(), before, "outside changed: {result:?}");
        result.expect_err("unpacked")
    }
}

/// What a test compares of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    ctime: Option<(i64, i64)>,
    rdev: u64,
    nlink: u64,
    data: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

type Tree = BTreeMap<String, Node>;

fn node(path: &Path, with_ctime: bool) -> Node {
    let md = std::fs::symlink_metadata(path).unwrap();
    let kind = md.mode() & libc::S_IFMT;
    Node {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: with_ctime.then(|| (md.ctime(), md.ctime_nsec())),
        rdev: md.rdev(),
        nlink: md.nlink(),
        data: (kind == libc::S_IFREG).then(|| std::fs::read(path).unwrap()),
        link: (kind == libc::S_IFLNK).then(|| std::fs::read_link(path).unwrap()),
        xattrs: xattrs(path),
    }
}

/// Every file below `root` (and `root` itself as ""), not following symlinks.
fn snapshot(root: &Path, with_ctime: bool) -> Tree {
    fn walk(root: &Path, dir: &Path, with_ctime: bool, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let n = node(&path, with_ctime);
            let is_dir = n.mode & libc::S_IFMT == libc::S_IFDIR;
            out.insert(rel, n);
            if is_dir {
                walk(root, &path, with_ctime, out);
            }
        }
    }
    let mut out = Tree::new();
    out.insert(String::new(), node(root, with_ctime));
    walk(root, root, with_ctime, &mut out);
    out
}

/// A path as a C string.
fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// All xattrs of `path` (not following a symlink).
fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(path);
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `c` is NUL-terminated and `names` is `names.len()` writable bytes, both alive for
    // the call.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    names.truncate(usize::try_from(len).expect("llistxattr"));
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: `c` and `cname` are NUL-terminated and `value` is `value.len()` writable
        // bytes, all alive for the call.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        value.truncate(usize::try_from(len).expect("lgetxattr"));
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

/// A v2 file capability (cap_dac_override and cap_fowner, effective): its permitted word is
/// 0x0a, a newline, which a PAX reader splitting on newlines cannot read.
const CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A layer holding one of everything.
fn rich_layer() -> Layer {
    let long = format!("deep/{}/file", "n".repeat(120));
    Layer::new()
        .dir("./", meta(0o755))
        .dir(
            "etc",
            Meta {
                mtime: T + 1,
                ..meta(0o755)
            },
        )
        .file(
            "etc/hello",
            Meta {
                mode: 0o640,
                uid: 1000,
                gid: 1001,
                mtime: T + 2,
            },
            b"hello\n",
        )
        .file(
            "bin/su",
            Meta {
                mode: 0o6755,
                uid: 1000,
                gid: 1000,
                mtime: T + 3,
            },
            b"#!/bin/sh\n",
        )
        .dir("tmp", meta(0o1777))
        .link(
            EntryType::Symlink,
            "etc/link",
            "hello",
            Meta {
                uid: 1000,
                gid: 1002,
                mtime: T + 4,
                ..meta(0o777)
            },
        )
        .hardlink("etc/hard", "etc/hello")
        .node(
            EntryType::Fifo,
            "run/fifo",
            Meta {
                mode: 0o600,
                uid: 5,
                gid: 6,
                mtime: T + 5,
            },
            (0, 0),
        )
        .node(EntryType::Char, "dev/null", meta(0o666), (1, 3))
        .node(EntryType::Block, "dev/loop0", meta(0o660), (7, 0))
        .pax(&[
            ("SCHILY.xattr.user.note", b"hi\nthere"),
            ("SCHILY.xattr.security.capability", &CAPABILITY),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("uid", b"3000000"),
            ("mtime", b"1600000006.25"),
        ])
        .file("bin/ping", meta(0o755), b"ping")
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("var", meta(0o755))
        .file(&long, meta(0o644), b"long")
        .pax(&[("path", b"pax/named/by/record")])
        .file("short", meta(0o644), b"pax")
        // A target longer than the header's field: a GNU long link.
        .symlink("etc/longlink", &"t".repeat(150))
        .ustar_file(&format!("ustar/{}/file", "u".repeat(120)), b"prefix")
}

#[test]
fn keeps_what_the_image_says() {
    need_root!();
    let fx = fixture();
    let got = fx.unpack(&rich_layer().tar(), Compression::None).unwrap();
    assert_eq!(got.entries, 16);
    let tree = snapshot(&fx.root, false);
    let at = |p: &str| {
        tree.get(p)
            .unwrap_or_else(|| panic!("{p} missing: {tree:#?}"))
    };

    assert_eq!(at("").mode, libc::S_IFDIR | 0o755);
    let etc = at("etc");
    assert_eq!(
        (etc.mode, etc.mtime),
        (libc::S_IFDIR | 0o755, (1_600_000_001, 0))
    );

    let hello = at("etc/hello");
    assert_eq!(hello.mode, libc::S_IFREG | 0o640);
    assert_eq!((hello.uid, hello.gid), (1000, 1001));
    assert_eq!(hello.mtime, (1_600_000_002, 0));
    assert_eq!(hello.data.as_deref(), Some(&b"hello\n"[..]));
    assert_eq!(hello.nlink, 2);
    let hard = at("etc/hard");
    assert_eq!(
        std::fs::metadata(fx.root.join("etc/hard")).unwrap().ino(),
        std::fs::metadata(fx.root.join("etc/hello")).unwrap().ino()
    );
    assert_eq!(hard, hello);

    // setuid and setgid survive the chown to 1000.
    let su = at("bin/su");
    assert_eq!(su.mode, libc::S_IFREG | 0o6755);
    assert_eq!((su.uid, su.gid, su.mtime), (1000, 1000, (1_600_000_003, 0)));

    assert_eq!(at("tmp").mode, libc::S_IFDIR | 0o1777);

    let link = at("etc/link");
    assert_eq!(link.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(link.link.as_deref(), Some(Path::new("hello")));
    assert_eq!((link.uid, link.gid), (1000, 1002));
    assert_eq!(link.mtime, (1_600_000_004, 0));

    let fifo = at("run/fifo");
    assert_eq!(fifo.mode, libc::S_IFIFO | 0o600);
    assert_eq!((fifo.uid, fifo.gid, fifo.mtime), (5, 6, (1_600_000_005, 0)));

    let null = at("dev/null");
    assert_eq!(null.mode, libc::S_IFCHR | 0o666);
    assert_eq!(null.rdev, libc::makedev(1, 3));
    let loop0 = at("dev/loop0");
    assert_eq!(loop0.mode, libc::S_IFBLK | 0o660);
    assert_eq!(loop0.rdev, libc::makedev(7, 0));
    // Parents the layer did not list are made 0755, root's,
    // with the mtime of the entry that needed them.
    let dev = at("dev");
    assert_eq!((dev.mode, dev.uid, dev.gid), (libc::S_IFDIR | 0o755, 0, 0));
    assert_eq!(dev.mtime, (1_600_000_000, 0));

    // PAX: xattrs (a binary one holding a newline, kept through the chown), a uid beyond the
    // octal field, a fractional mtime; overlayfs' xattrs dropped.
    let ping = at("bin/ping");
    assert_eq!(ping.uid, 3_000_000);
    assert_eq!(ping.mtime, (1_600_000_006, 250_000_000));
    let want: BTreeMap<String, Vec<u8>> = [
        ("security.capability".to_owned(), CAPABILITY.to_vec()),
        ("user.note".to_owned(), b"hi\nthere".to_vec()),
    ]
    .into();
    assert_eq!(ping.xattrs, want);
    assert_eq!(at("var").xattrs, BTreeMap::new());

    let long = format!("deep/{}/file", "n".repeat(120));
    assert_eq!(at(&long).data.as_deref(), Some(&b"long"[..]));
    assert_eq!(at("pax/named/by/record").data.as_deref(), Some(&b"pax"[..]));
    assert!(!tree.contains_key("short"));
    assert_eq!(
        at("etc/longlink").link,
        Some(PathBuf::from("t".repeat(150)))
    );
    let ustar = format!("ustar/{}/file", "u".repeat(120));
    assert_eq!(at(&ustar).data.as_deref(), Some(&b"prefix"[..]));

    let names: BTreeSet<&str> = tree.keys().map(String::as_str).collect();
    let deep = format!("deep/{}", "n".repeat(120));
    let ustar_dir = format!("ustar/{}", "u".repeat(120));
    let want: BTreeSet<&str> = [
        "",
        "bin",
        "bin/ping",
        "bin/su",
        "deep",
        &deep,
        &long,
        "dev",
        "dev/loop0",
        "dev/null",
        "etc",
        "etc/hard",
        "etc/hello",
        "etc/link",
        "etc/longlink",
        "pax",
        "pax/named",
        "pax/named/by",
        "pax/named/by/record",
        "run",
        "run/fifo",
        "tmp",
        "ustar",
        &ustar_dir,
        &ustar,
        "var",
    ]
    .into();
    assert_eq!(names, want);
}

#[test]
fn whiteouts_and_opaque_directories_in_overlayfs_format() {
    need_root!();
    let fx = fixture();
    let tar = Layer::new()
        .dir("a", meta(0o755))
        .marker("a/.wh.gone")
        .marker("b/c/.wh..wh..opq")
        .dir("d", meta(0o750))
        .file("d/kept", meta(0o644), b"kept")
        .marker("d/.wh..wh..opq")
        .file("e/f", meta(0o644), b"replaced by its whiteout")
        .marker("e/.wh.f")
        .marker(".wh..wh.plnk")
        .marker(".wh..wh.plnk/123")
        .marker(".wh.top")
        .tar();
    let got = fx.unpack(&tar, Compression::None).unwrap();
    assert_eq!(got.entries, 11);
    let tree = snapshot(&fx.root, false);
    let names: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["", "a", "a/gone", "b", "b/c", "d", "d/kept", "e", "e/f", "top"]
    );
    for whiteout in ["a/gone", "e/f", "top"] {
        let n = &tree[whiteout];
        assert_eq!(n.mode & libc::S_IFMT, libc::S_IFCHR, "{whiteout}");
        assert_eq!(n.rdev, 0, "{whiteout}");
    }
    let opaque: BTreeMap<String, Vec<u8>> =
        [("trusted.overlay.opaque".to_owned(), b"y".to_vec())].into();
    assert_eq!(tree["b/c"].xattrs, opaque);
    assert_eq!(tree["d"].xattrs, opaque);
    assert_eq!(tree["d"].mode, libc::S_IFDIR | 0o750);
    assert_eq!(tree["a"].xattrs, BTreeMap::new());
}

#[test]
fn later_entries_replace_earlier_ones() {
    need_root!();
    let fx = fixture();
    let keep = fx.outside.join("keep");
    let tar = Layer::new()
        .file("a", meta(0o644), b"one")
        .file("a", meta(0o600), b"two")
        .dir("d", meta(0o700))
        .file("d/child", meta(0o644), b"child")
        .dir(
            "d",
            Meta {
                mtime: T + 9,
                ..meta(0o755)
            },
        )
        .file("x", meta(0o644), b"file")
        .dir("x", meta(0o711))
        .dir("y", meta(0o755))
        .file("y/child", meta(0o644), b"child")
        .file("y", meta(0o644), b"now a file")
        .symlink("s", keep.to_str().unwrap())
        .file("s", meta(0o644), b"mine")
        .symlink("t", fx.outside.to_str().unwrap())
        .dir("t", meta(0o700))
        .tar();
    let before = fx.outside_state();
    fx.unpack(&tar, Compression::None).unwrap();
    assert_eq!(fx.outside_state(), before);
    let tree = snapshot(&fx.root, false);
    let names: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(names, ["", "a", "d", "d/child", "s", "t", "x", "y"]);
    assert_eq!(tree["a"].data.as_deref(), Some(&b"two"[..]));
    assert_eq!(tree["a"].mode, libc::S_IFREG | 0o600);
    assert_eq!(tree["d"].mode, libc::S_IFDIR | 0o755);
    assert_eq!(tree["d"].mtime, (1_600_000_009, 0));
    assert_eq!(tree["x"].mode, libc::S_IFDIR | 0o711);
    assert_eq!(tree["y"].data.as_deref(), Some(&b"now a file"[..]));
    assert_eq!(tree["s"].data.as_deref(), Some(&b"mine"[..]));
    assert_eq!(tree["t"].mode, libc::S_IFDIR | 0o700);
}

#[test]
fn every_compression_gives_the_same_tree_and_diff_id() {
    need_root!();
    let mut tar = rich_layer().tar();
    // Past the end-of-archive blocks, as GNU tar pads to its record size: still the diff id's.
    tar.extend_from_slice(&[0; 9 * 1024]);
    let want = format!("sha256:{:x}", Sha256::digest(&tar));
    let mut trees = Vec::new();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let fx = fixture();
        let got = fx.unpack(&tar, c).unwrap();
        assert_eq!(
            got,
            Unpacked {
                diff_id: want.clone(),
                entries: 16,
                size: u64::try_from(tar.len()).unwrap(),
            },
            "{c:?}"
        );
        trees.push(snapshot(&fx.root, false));
    }
    assert_eq!(trees[0].len(), 26);
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

/// `err` refuses `entry` for `reason`, with the message naming the layer and the entry.
fn assert_refused(err: &UnpackError, entry: &str, reason: Refusal) {
    match err {
        UnpackError::Refused {
            layer,
            entry: e,
            reason: r,
        } => assert_eq!((layer.as_str(), e.as_str(), *r), (LAYER, entry, reason)),
        other => panic!("expected {entry:?} refused ({reason}), got: {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!("layer {LAYER}: entry {entry:?}: {reason}")
    );
}

/// `err` refuses the hard link `entry` to `target` for `reason`.
fn assert_link_refused(err: &UnpackError, entry: &str, target: &str, reason: Refusal) {
    match err {
        UnpackError::RefusedLink {
            layer,
            entry: e,
            target: t,
            reason: r,
        } => assert_eq!(
            (layer.as_str(), e.as_str(), t.as_str(), *r),
            (LAYER, entry, target, reason)
        ),
        other => panic!("expected the hard link {entry:?} refused ({reason}), got: {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!("layer {LAYER}: entry {entry:?}: hard link target {target:?}: {reason}")
    );
}

#[test]
fn dot_dot_is_refused() {
    need_root!();
    let fx = fixture();
    for name in ["../x", "../outside/x", "a/../../outside/keep", "./.."] {
        let tar = Layer::new()
            .raw(EntryType::Regular, name.as_bytes(), None, b"pwned")
            .tar();
        let err = fx.refused(&tar);
        assert_refused(&err, name, Refusal::DotDot);
    }
    assert_eq!(
        fx.refused(
            &Layer::new()
                .raw(EntryType::Regular, b"../x", None, b"")
                .tar()
        )
        .to_string(),
        "layer sha256:test: entry \"../x\": path leaves the layer's root ('..')"
    );
}

#[test]
fn absolute_paths_are_refused() {
    need_root!();
    let fx = fixture();
    let target = fx.outside.join("abs");
    let name = target.to_str().unwrap();
    let tar = Layer::new()
        .raw(EntryType::Regular, name.as_bytes(), None, b"pwned")
        .tar();
    assert_refused(&fx.refused(&tar), name, Refusal::Absolute);
    // A directory, and a name from a PAX record.
    let tar = Layer::new()
        .raw(EntryType::Directory, b"/", None, b"")
        .tar();
    assert_refused(&fx.refused(&tar), "/", Refusal::Absolute);
    let tar = Layer::new()
        .pax(&[("path", name.as_bytes())])
        .file("harmless", meta(0o644), b"pwned")
        .tar();
    assert_refused(&fx.refused(&tar), name, Refusal::Absolute);
}

/// Layers whose last entry goes through a symlink to `outside` (or to its file `keep`).
fn through_symlink_layers(outside: &str, keep: &str) -> Vec<(Layer, &'static str)> {
    vec![
        (
            Layer::new()
                .symlink("l", outside)
                .file("l/pwned", meta(0o644), b"x"),
            "l/pwned",
        ),
        (
            Layer::new()
                .symlink("l", "../outside")
                .file("l/pwned", meta(0o644), b"x"),
            "l/pwned",
        ),
        (
            Layer::new()
                .symlink("a", "b")
                .symlink("b", outside)
                .dir("a/sub/new", meta(0o755)),
            "a/sub/new",
        ),
        (
            Layer::new()
                .dir("d", meta(0o755))
                .symlink("d/l", outside)
                .node(EntryType::Fifo, "d/l/fifo", meta(0o644), (0, 0)),
            "d/l/fifo",
        ),
        // A directory entry whose path goes through the symlink would chmod outside.
        (
            Layer::new().symlink("l", outside).dir("l/sub", meta(0o700)),
            "l/sub",
        ),
        // Whiteouts and opaque markers through a symlink would delete or mark outside.
        (
            Layer::new().symlink("l", outside).marker("l/.wh.keep"),
            "l/.wh.keep",
        ),
        (
            Layer::new().symlink("l", outside).marker("l/.wh..wh..opq"),
            "l/.wh..wh..opq",
        ),
        // A hard link named through a symlink.
        (
            Layer::new()
                .file("f", meta(0o644), b"f")
                .symlink("l", outside)
                .hardlink("l/h", "f"),
            "l/h",
        ),
        // Through a symlink to a file.
        (
            Layer::new()
                .symlink("l", keep)
                .file("l/x", meta(0o644), b"x"),
            "l/x",
        ),
    ]
}

#[test]
fn entries_through_a_symlink_are_refused() {
    need_root!();
    for i in 0..through_symlink_layers("x", "y").len() {
        let fx = fixture();
        let outside = fx.outside.to_str().unwrap();
        let keep = fx.outside.join("keep");
        let (layer, entry) = through_symlink_layers(outside, keep.to_str().unwrap()).swap_remove(i);
        let err = fx.refused(&layer.tar());
        assert_refused(&err, entry, Refusal::ThroughSymlink);
    }
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    need_root!();
    for i in 0..9 {
        let fx = fixture();
        let outside = fx.outside.to_str().unwrap();
        let (layer, target, reason) = match i {
            0 => (Layer::new(), "/etc/passwd", Refusal::Absolute),
            1 => (Layer::new(), "../outside/keep", Refusal::DotDot),
            2 => (Layer::new(), "a/../../outside/keep", Refusal::DotDot),
            3 => (Layer::new(), "not-here", Refusal::Missing),
            4 => (Layer::new().dir("d", meta(0o755)), "d", Refusal::Directory),
            5 => (Layer::new(), "./", Refusal::Directory),
            6 => (
                Layer::new().file("h", meta(0o644), b"h"),
                "h",
                Refusal::Itself,
            ),
            // A target whose parent is a symlink to outside.
            7 => (
                Layer::new().symlink("l", outside),
                "l/keep",
                Refusal::ThroughSymlink,
            ),
            _ => (
                Layer::new().symlink("l", "../outside"),
                "l/keep",
                Refusal::ThroughSymlink,
            ),
        };
        let tar = layer
            .raw(EntryType::Link, b"h", Some(target.as_bytes()), b"")
            .tar();
        let err = fx.refused(&tar);
        assert_link_refused(&err, "h", target, reason);
        // Nothing linked: the sentinel's file keeps its one name (and /etc/passwd its own,
        // checked with the rest of the outside state).
        assert_eq!(
            std::fs::metadata(fx.outside.join("keep")).unwrap().nlink(),
            1
        );
    }
}

#[test]
fn bad_whiteouts_are_refused() {
    need_root!();
    let fx = fixture();
    for (name, reason) in [
        (".wh..", Refusal::BadWhiteout),
        ("a/.wh...", Refusal::BadWhiteout),
        (".wh.", Refusal::BadWhiteout),
        (".wh.x/y", Refusal::WhiteoutParent),
    ] {
        let tar = Layer::new()
            .raw(EntryType::Regular, name.as_bytes(), None, b"")
            .tar();
        assert_refused(&fx.refused(&tar), name, reason);
    }
    let tar = Layer::new()
        .raw(EntryType::Symlink, b".", Some(b"/etc"), b"")
        .tar();
    assert_refused(&fx.refused(&tar), ".", Refusal::Root);
}

#[test]
fn unsupported_and_malformed_streams_are_errors() {
    need_root!();
    let fx = fixture();
    // GNU sparse (its data is a map), a PAX sparse file, a volume label.
    let tar = Layer::new()
        .raw(EntryType::GNUSparse, b"sparse", None, b"")
        .tar();
    let err = fx.unpack(&tar, Compression::None).unwrap_err();
    assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "layer sha256:test: entry \"sparse\": a GNU sparse file is not supported"
    );
    let tar = Layer::new()
        .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("sparse", meta(0o644), b"map")
        .tar();
    let err = fx.unpack(&tar, Compression::None).unwrap_err();
    assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
    let tar = Layer::new()
        .raw(EntryType::new(b'V'), b"label", None, b"")
        .tar();
    let err = fx.unpack(&tar, Compression::None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer sha256:test: entry \"label\": entry type 'V' is not supported"
    );

    // A corrupt header, a stream cut inside a file, a global header that would change entries.
    let mut tar = Layer::new().file("f", meta(0o644), b"data").tar();
    tar[0] ^= 1;
    let err = fx.unpack(&tar, Compression::None).unwrap_err();
    assert!(
        matches!(err, UnpackError::Malformed { offset: 0, .. }),
        "{err}"
    );
    let tar = Layer::new().file("f", meta(0o644), &[7; 2000]).tar();
    let err = fx.unpack(&tar[..1024], Compression::Gzip).unwrap_err();
    assert!(matches!(err, UnpackError::Read { offset: 0, .. }), "{err}");
    let mut global = Header::new_ustar();
    global.set_entry_type(EntryType::XGlobalHeader);
    let records = b"16 mtime=123456\n";
    global.set_size(16);
    global.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&global, &records[..]).unwrap();
    let err = fx
        .unpack(&b.into_inner().unwrap(), Compression::None)
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
}

#[test]
fn an_empty_layer_is_fine() {
    need_root!();
    let fx = fixture();
    let tar = Layer::new().tar();
    assert_eq!(tar, vec![0; 1024]);
    let got = fx.unpack(&tar, Compression::Zstd).unwrap();
    assert_eq!(
        got,
        Unpacked {
            diff_id: format!("sha256:{:x}", Sha256::digest(&tar)),
            entries: 0,
            size: 1024,
        }
    );
}

/// Unmounts (lazily, so a failing test cannot leave it busy) when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Two layers, each unpacked and made an EROFS image as the runtime does, then stacked with
/// overlayfs as the guest does: the second layer's whiteout hides a file of the first and its
/// opaque marker empties a directory.
#[test]
fn erofs_images_of_unpacked_layers_stack_under_overlayfs() {
    need_root!();
    let tmp = tempfile::tempdir().unwrap();
    let base = Layer::new()
        .dir("a", meta(0o755))
        .file("a/gone", meta(0o644), b"deleted above")
        .file("a/stays", meta(0o644), b"stays")
        .dir("a/emptied", meta(0o755))
        .file("a/emptied/old", meta(0o644), b"hidden above")
        .tar();
    let top = Layer::new()
        .dir("a", meta(0o755))
        .marker("a/.wh.gone")
        .dir("a/emptied", meta(0o755))
        .marker("a/emptied/.wh..wh..opq")
        .file("a/emptied/new", meta(0o644), b"new")
        .file(
            "bin/su",
            Meta {
                mode: 0o4755,
                uid: 1000,
                gid: 1000,
                mtime: T,
            },
            b"su",
        )
        .node(EntryType::Char, "dev/null", meta(0o666), (1, 3))
        .tar();
    let mut lowers = Vec::new();
    let mut mounts = Vec::new();
    for (name, tar) in [("base", base), ("top", top)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let blob = tmp.path().join(format!("{name}.tar"));
        std::fs::write(&blob, &tar).unwrap();
        unpack_layer(&blob, &dir, LAYER).unwrap();
        let img = tmp.path().join(format!("{name}.erofs"));
        run(Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&img)
            .arg(&dir));
        run(Command::new("fsck.erofs").arg(&img));
        let mnt = tmp.path().join(format!("{name}.mnt"));
        std::fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img)
            .arg(&mnt));
        mounts.push(Mounted(mnt.clone()));
        lowers.push(mnt);
    }
    let merged = tmp.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={}:{}",
            lowers[1].display(),
            lowers[0].display()
        ))
        .arg(&merged));
    let overlay = Mounted(merged.clone());

    let list = |p: &str| -> BTreeSet<String> {
        std::fs::read_dir(merged.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(list("a"), ["emptied", "stays"].map(String::from).into());
    assert_eq!(list("a/emptied"), ["new"].map(String::from).into());
    let su = std::fs::metadata(merged.join("bin/su")).unwrap();
    assert_eq!(su.mode(), libc::S_IFREG | 0o4755);
    assert_eq!((su.uid(), su.gid()), (1000, 1000));
    let null = std::fs::metadata(merged.join("dev/null")).unwrap();
    assert_eq!(
        (null.mode(), null.rdev()),
        (libc::S_IFCHR | 0o666, libc::makedev(1, 3))
    );
    drop(overlay);
    drop(mounts);
}

/// `umoci` at `args`, which must succeed.
fn umoci(args: &[&str], at: &Path) {
    run(Command::new("umoci").args(args).current_dir(at));
}

/// The config's diff ids and the layers' blobs of the OCI layout `oci`'s tag `t`.
fn layers_of(oci: &Path) -> Vec<(String, PathBuf)> {
    let blob = |digest: &str| {
        oci.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    };
    let json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index = json(oci.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    diff_ids
        .iter()
        .zip(layers)
        .map(|(d, l)| {
            (
                d.as_str().unwrap().to_owned(),
                blob(l["digest"].as_str().unwrap()),
            )
        })
        .collect()
}

/// Sets `name` = `value` on `path`.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: `p` and `n` are NUL-terminated and `value` is `value.len()` readable bytes, all
    // alive for the call.
    let ret = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(ret, 0, "setxattr {name} on {}", path.display());
}

/// A layer written by another writer, Go's `archive/tar` as `umoci repack` uses it (so what
/// Docker and BuildKit write): unpacked, it is the tree umoci packed, with the diff id umoci put
/// in the config; a second layer deleting a file holds a whiteout.
#[test]
fn layers_umoci_wrote_unpack_to_the_tree_it_packed() {
    need_root!();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    umoci(&["init", "--layout", "oci"], t);
    umoci(&["new", "--image", "oci:t"], t);
    umoci(&["unpack", "--image", "oci:t", "bundle"], t);
    let rootfs = t.join("bundle/rootfs");
    let at = |p: &str| rootfs.join(p);
    for d in ["etc", "usr/bin", "run", "dev", "tmp"] {
        std::fs::create_dir_all(at(d)).unwrap();
    }
    std::fs::write(at("etc/hello"), "hello\n").unwrap();
    std::fs::write(at("etc/gone"), "deleted by the second layer\n").unwrap();
    std::fs::write(at("usr/bin/su"), "su").unwrap();
    std::os::unix::fs::chown(at("usr/bin/su"), Some(1000), Some(1000)).unwrap();
    set_xattr(&at("usr/bin/su"), "security.capability", &CAPABILITY);
    std::fs::set_permissions(
        at("usr/bin/su"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    set_xattr(&at("etc/hello"), "user.note", b"a\nb");
    std::fs::hard_link(at("etc/hello"), at("etc/hard")).unwrap();
    std::os::unix::fs::symlink("../etc/hello", at("run/link")).unwrap();
    nix::unistd::mkfifo(
        &at("run/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &at("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(
        at("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let long = format!("{}/{}", "x".repeat(120), "y".repeat(120));
    std::fs::create_dir(at(&"x".repeat(120))).unwrap();
    std::fs::write(at(&long), "long").unwrap();
    // Whole seconds (Go's writer rounds to them), different for each file.
    for (i, path) in snapshot(&rootfs, false).keys().enumerate() {
        let time =
            nix::sys::time::TimeSpec::new(i64::try_from(T).unwrap() + i64::try_from(i).unwrap(), 0);
        nix::sys::stat::utimensat(
            None,
            &rootfs.join(path),
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    umoci(&["repack", "--image", "oci:t", "bundle"], t);
    let packed = snapshot(&rootfs, false);

    // The second layer, from a fresh unpack of the first.
    umoci(&["unpack", "--image", "oci:t", "bundle2"], t);
    std::fs::remove_file(t.join("bundle2/rootfs/etc/gone")).unwrap();
    umoci(&["repack", "--image", "oci:t", "bundle2"], t);

    let layers = layers_of(&t.join("oci"));
    assert_eq!(layers.len(), 2);
    let (diff_id, blob) = &layers[0];
    let dest = t.join("first");
    std::fs::create_dir(&dest).unwrap();
    let got = unpack_layer(blob, &dest, LAYER).unwrap();
    assert_eq!(&got.diff_id, diff_id);
    let unpacked = snapshot(&dest, false);
    // Every file, with its metadata (the layer's root directory aside: umoci does not record
    // it).
    let comparable = |t: &Tree| {
        let mut t = t.clone();
        t.remove("");
        t
    };
    assert_eq!(unpacked.len(), 16);
    assert_eq!(comparable(&unpacked), comparable(&packed));

    let (diff_id, blob) = &layers[1];
    let dest = t.join("second");
    std::fs::create_dir(&dest).unwrap();
    let got = unpack_layer(blob, &dest, LAYER).unwrap();
    assert_eq!(&got.diff_id, diff_id);
    let gone = node(&dest.join("etc/gone"), false);
    assert_eq!((gone.mode & libc::S_IFMT, gone.rdev), (libc::S_IFCHR, 0));
}
