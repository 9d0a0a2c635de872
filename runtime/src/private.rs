//! Files and directories only their owner (root) may read: VM directories, the layer image
//! cache, disk images and logs. The disks hold what containers write and the logs what they print,
//! so other users of the host get nothing. Modes are set explicitly, whatever the umask (which can
//! only narrow them further), and a directory is private before anything is made in it, so there
//! is no window in which a socket or an image inside it is reachable.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of our directories.
pub const DIR_MODE: u32 = 0o700;

/// Mode of our files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`], and narrows `dir` itself to it when
/// it already existed with a wider mode (made by an older version, or by hand).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    restrict(dir, DIR_MODE)
}

/// Creates or truncates `path` for writing, with [`FILE_MODE`] even when it existed.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Narrows what a tool made (`mkfs.erofs`, `mkfs.ext4` create their images with their own
/// modes) to `mode`; a mode already as narrow is left alone.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let now = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if now & !mode != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(now & mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_and_files_are_private_whatever_existed() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(d)), 0o700, "{d}");
        }
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        create_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);

        let log = tmp.path().join("qemu.log");
        std::fs::write(&log, "old").unwrap();
        std::fs::set_permissions(&log, Permissions::from_mode(0o644)).unwrap();
        drop(create_file(&log).unwrap());
        assert_eq!((mode(&log), std::fs::read(&log).unwrap().len()), (0o600, 0));
        drop(create_file(&tmp.path().join("new.log")).unwrap());
        assert_eq!(mode(&tmp.path().join("new.log")), 0o600);

        let image = tmp.path().join("lower.erofs");
        std::fs::write(&image, "x").unwrap();
        std::fs::set_permissions(&image, Permissions::from_mode(0o644)).unwrap();
        restrict(&image, FILE_MODE).unwrap();
        assert_eq!(mode(&image), 0o600);
        std::fs::set_permissions(&image, Permissions::from_mode(0o400)).unwrap();
        restrict(&image, FILE_MODE).unwrap();
        assert_eq!(mode(&image), 0o400, "a narrower mode stays");
    }
}
