//! mount(8)-style option lists (`ro,nosuid,size=64m`) to `MS_*` flags plus file-system data.

/// Flags and the remaining file-system options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Options the file system interprets, comma-joined.
    pub data: String,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// `rbind`.
    pub recursive: bool,
}

/// Splits options into flags and data. Propagation options (`private`, `rshared`, ...) are
/// accepted and ignored: every container mount namespace is made private as a whole.
pub fn parse<S: AsRef<str>>(options: &[S]) -> Parsed {
    let mut p = Parsed::default();
    let mut data = Vec::new();
    for o in options {
        let o = o.as_ref();
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                p.bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                p.bind = true;
                p.recursive = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" | "defaults" => (0, 0),
            other => {
                data.push(other.to_owned());
                (0, 0)
            }
        };
        p.flags = (p.flags | set) & !clear;
    }
    p.data = data.join(",");
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data() {
        let p = parse(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(p.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(p.data, "mode=755,size=65536k");
        assert!(!p.bind);
        let p = parse(&["rbind", "ro", "rprivate"]);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert!(p.bind && p.recursive && p.data.is_empty());
        assert_eq!(parse(&["ro", "rw"]).flags, 0);
    }
}
