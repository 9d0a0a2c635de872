//! The frame `flags` byte.

use std::fmt;

/// The `flags` byte of a frame. Only the three defined bits may be set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flag: an ordinary frame within a session.
    pub const NONE: Flags = Flags(0);
    /// The last frame of this correlation id.
    pub const TERMINAL: Flags = Flags(0x01);
    /// The first frame of a new session.
    pub const SESSION_START: Flags = Flags(0x02);
    /// A shutdown request.
    pub const SHUTDOWN: Flags = Flags(0x04);
    /// Every defined bit.
    pub const ALL: Flags = Flags(0x07);

    /// Accepts a byte only if it sets no undefined bit.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::ALL.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set here.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether this is the last frame of its id.
    pub const fn is_terminal(self) -> bool {
        self.contains(Self::TERMINAL)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let names = [
            (Self::TERMINAL, "terminal"),
            (Self::SESSION_START, "session_start"),
            (Self::SHUTDOWN, "shutdown"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_bits_are_rejected() {
        assert_eq!(Flags::from_bits(0x07), Some(Flags::ALL));
        for bits in 0x08..=0xff_u8 {
            assert_eq!(Flags::from_bits(bits), None, "bits {bits:#x}");
        }
    }

    #[test]
    fn display_names_each_bit() {
        assert_eq!(Flags::NONE.to_string(), "none");
        assert_eq!(Flags::ALL.to_string(), "terminal|session_start|shutdown");
    }
}
