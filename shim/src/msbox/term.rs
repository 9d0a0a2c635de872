//! The host terminal in raw mode for `msbox run -t`, restored on drop.

use std::os::fd::RawFd;

/// Raw mode on a terminal until dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode if it is a terminal.
    pub fn enable(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty inspects the descriptor only.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a local termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the local copy.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid pointer to a local termios.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the valid local.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 || ws.ws_row == 0 {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}
