//! The host terminal in raw mode for `msbox run -t`, restored on drop.

use std::io::{IsTerminal, Stdin};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Raw mode on stdin's terminal until dropped.
#[derive(Debug)]
pub struct RawMode {
    stdin: Stdin,
    saved: Termios,
}

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal.
    pub fn enable(stdin: Stdin) -> Option<RawMode> {
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Some(RawMode { stdin, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Restores the settings read in `enable`.
        let _ = termios::tcsetattr(&self.stdin, SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(
    /// TIOCGWINSZ: a terminal's size (nix has no safe wrapper for it).
    tiocgwinsz,
    libc::TIOCGWINSZ,
    libc::winsize
);

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the valid pointer.
    if unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }.is_err() || ws.ws_row == 0 {
        return None;
    }
    Some((ws.ws_row, ws.ws_col))
}
