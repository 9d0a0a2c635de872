//! The LaunchConfig hand-off: JSON in an inherited descriptor (fd 3), read once and closed.
//!
//! A descriptor rather than argv or the environment, so the configuration never shows in
//! `/proc/<pid>/cmdline` or `/proc/<pid>/environ` of the VMM.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use msb_runtime::vmm::krun::MAX_CONFIG_BYTES;

use crate::LaunchConfig;

/// Why no LaunchConfig could be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFdError {
    /// The descriptor is not open: the program was not started by the runtime.
    #[error("no LaunchConfig on fd {0}: msb-krun-vmm is started by the microsandbox runtime, which passes it there")]
    NotOpen(RawFd),
    /// Reading failed.
    #[error("read the LaunchConfig from fd {fd}")]
    Read {
        /// The descriptor.
        fd: RawFd,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// More than [`MAX_CONFIG_BYTES`].
    #[error("the LaunchConfig on fd {0} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge(RawFd),
    /// Not a LaunchConfig.
    #[error("parse the LaunchConfig from fd {fd}")]
    Parse {
        /// The descriptor.
        fd: RawFd,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the LaunchConfig from `fd` to its end, then closes `fd` (nothing later inherits it).
pub fn read(fd: RawFd) -> Result<LaunchConfig, ConfigFdError> {
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(ConfigFdError::NotOpen(fd));
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in this process uses it:
    // it was inherited for this purpose only. Taking ownership closes it after reading.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    std::fs::File::from(owned)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigFdError::Read { fd, source })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigFdError::TooLarge(fd));
    }
    LaunchConfig::from_json(&bytes).map_err(|source| ConfigFdError::Parse { fd, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe holding `data` whose read end is `fd` (a high number nothing else allocates).
    fn pipe_at(fd: RawFd, data: &[u8]) {
        use std::os::fd::AsRawFd;
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(nix::unistd::write(&w, data), Ok(data.len()));
        drop(w);
        assert_eq!(nix::unistd::dup2(r.as_raw_fd(), fd), Ok(fd));
    }

    #[test]
    fn reads_then_closes() {
        pipe_at(901, br#"{"id":"x"}"#);
        // A partial config is a parse error that names the descriptor.
        let e = read(901).unwrap_err();
        assert!(matches!(e, ConfigFdError::Parse { fd: 901, .. }), "{e}");
        let flags = nix::fcntl::fcntl(901, nix::fcntl::FcntlArg::F_GETFD);
        assert_eq!(flags, Err(nix::errno::Errno::EBADF), "closed after reading");
    }

    #[test]
    fn refuses_a_huge_config() {
        use std::io::{Seek, Write};
        use std::os::fd::AsRawFd;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![b' '; usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1])
            .unwrap();
        f.rewind().unwrap();
        assert_eq!(nix::unistd::dup2(f.as_raw_fd(), 902), Ok(902));
        assert!(matches!(read(902), Err(ConfigFdError::TooLarge(902))));
    }

    #[test]
    fn a_missing_descriptor_says_who_starts_the_program() {
        let e = read(903).unwrap_err();
        assert!(
            e.to_string()
                .contains("started by the microsandbox runtime"),
            "{e}"
        );
    }
}
