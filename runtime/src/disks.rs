//! Disk images: a read-only EROFS lower made from a directory, a sparse ext4 upper.
//!
//! Made with Debian's `mkfs.erofs` (erofs-utils) and `mkfs.ext4` (e2fsprogs); nothing the
//! guest writes ever lands in a host directory.

use std::path::Path;
use std::process::Command;

/// Default size of an upper image (sparse: it costs only what is written).
pub const DEFAULT_UPPER_SIZE: u64 = 4 << 30;

/// Why an image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The tool is not installed.
    #[error("{tool} not found: install the Debian package {package}")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// Its Debian package.
        package: &'static str,
    },
    /// The tool failed.
    #[error("{tool} failed for {path}: {output}")]
    Failed {
        /// The program.
        tool: &'static str,
        /// The image.
        path: String,
        /// What it printed.
        output: String,
    },
    /// The source is not a directory.
    #[error("root file system {0} is not a directory")]
    NotADirectory(String),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// On which path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn run(
    tool: &'static str,
    package: &'static str,
    cmd: &mut Command,
    path: &Path,
) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DiskError::MissingTool { tool, package },
        _ => DiskError::Failed {
            tool,
            path: path.display().to_string(),
            output: e.to_string(),
        },
    })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(DiskError::Failed {
            tool,
            path: path.display().to_string(),
            output: output.trim().to_owned(),
        });
    }
    Ok(())
}

/// Makes an EROFS image of `dir` at `image`.
pub fn make_lower(dir: &Path, image: &Path) -> Result<(), DiskError> {
    if !dir.is_dir() {
        return Err(DiskError::NotADirectory(dir.display().to_string()));
    }
    run(
        "mkfs.erofs",
        "erofs-utils",
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(image)
            .arg(dir),
        image,
    )?;
    private(image)
}

/// Makes what a tool created readable by its owner only ([`crate::private`]).
fn private(image: &Path) -> Result<(), DiskError> {
    crate::private::restrict(image, crate::private::FILE_MODE).map_err(|source| DiskError::Io {
        what: "restrict the mode of",
        path: image.display().to_string(),
        source,
    })
}

/// Makes a sparse ext4 image of `size` bytes at `image`.
pub fn make_upper(image: &Path, size: u64) -> Result<(), DiskError> {
    let f = crate::private::create_file(image).map_err(|source| DiskError::Io {
        what: "create",
        path: image.display().to_string(),
        source,
    })?;
    f.set_len(size).map_err(|source| DiskError::Io {
        what: "size",
        path: image.display().to_string(),
        source,
    })?;
    drop(f);
    run(
        "mkfs.ext4",
        "e2fsprogs",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(image),
        image,
    )?;
    private(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_both_images() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        make_lower(&src, &tmp.path().join("lower.img")).unwrap();
        make_upper(&tmp.path().join("upper.img"), 64 << 20).unwrap();
        let meta = std::fs::metadata(tmp.path().join("upper.img")).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 16 << 20, "upper is sparse");
        let err = make_lower(&tmp.path().join("missing"), &tmp.path().join("x.img")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"));
    }
}
