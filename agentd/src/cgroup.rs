//! Per-container cgroup v2 groups: limits, freeze, kill, membership and statistics.
//!
//! Each container gets `/sys/fs/cgroup/c-<id>`, directly under the root group (the root is
//! exempt from the no-internal-processes rule, so agentd itself stays there).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_protocol::types::{
    ContainerStatsReply, CpuStats, IoStats, MemoryStats, PidsStats, Resources,
};

/// Where cgroup2 is mounted in the VM.
pub const ROOT: &str = "/sys/fs/cgroup";

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
}

impl Cgroup {
    /// Creates the group for container `id` and applies `res`.
    pub fn create(id: &str, res: &Resources) -> io::Result<Cgroup> {
        let dir = Path::new(ROOT).join(format!("c-{id}"));
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("create cgroup {}: {e}", dir.display()),
                ))
            }
            _ => {}
        }
        let cg = Cgroup { dir };
        cg.apply(res)?;
        Ok(cg)
    }

    /// Writes the limits that are set in `res`.
    pub fn apply(&self, res: &Resources) -> io::Result<()> {
        if let Some(mem) = res.memory_limit {
            write(&self.dir.join("memory.max"), &mem.to_string())?;
            // No swap in the VM anyway; make the limit mean what it says if one is added.
            let _ = write(&self.dir.join("memory.swap.max"), "0");
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let quota = match res.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_owned(),
            };
            let period = res.cpu_period.unwrap_or(100_000);
            write(&self.dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(w) = res.cpu_weight {
            write(
                &self.dir.join("cpu.weight"),
                &w.clamp(1, 10_000).to_string(),
            )?;
        }
        if let Some(p) = res.pids_limit {
            let v = if p > 0 {
                p.to_string()
            } else {
                "max".to_owned()
            };
            write(&self.dir.join("pids.max"), &v)?;
        }
        Ok(())
    }

    /// `cgroup.procs`, for a child to join by writing `0`.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The pids in the group, ascending.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids: Vec<u32> = read(&self.procs_path())?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Freezes or thaws the group and waits (up to 5 s) until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        write(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if read(&self.dir.join("cgroup.events"))?
                .lines()
                .any(|l| l == want)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} did not reach {want:?}", self.dir.display()),
        ))
    }

    /// Sends `sig` to every process in the group.
    pub fn signal_all(&self, sig: i32) -> io::Result<()> {
        if sig == libc::SIGKILL && write(&self.dir.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.pids()? {
            // A pid above i32::MAX is no process (the kernel's pid_max is at most 2^22).
            if let Ok(pid) = i32::try_from(pid) {
                crate::sys::kill(pid, sig)?;
            }
        }
        Ok(())
    }

    /// `memory.events`, whose every change the kernel signals as a modification (inotify).
    pub fn memory_events(&self) -> PathBuf {
        self.dir.join("memory.events")
    }

    /// The `oom_kill` counter of `memory.events`.
    pub fn oom_kills(&self) -> u64 {
        read(&self.memory_events())
            .ok()
            .and_then(|s| keyed(&s, "oom_kill"))
            .unwrap_or(0)
    }

    /// Kills what is left, waits for the group to empty (up to 5 s) and removes it.
    pub fn destroy(&self) -> io::Result<()> {
        let _ = self.freeze(false);
        let _ = self.signal_all(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("remove cgroup {}: {e}", self.dir.display()),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Current figures.
    pub fn stats(&self) -> io::Result<ContainerStatsReply> {
        let f = |name: &str| read(&self.dir.join(name)).unwrap_or_default();
        Ok(ContainerStatsReply {
            cpu: parse_cpu(&f("cpu.stat")),
            memory: MemoryStats {
                usage: number(&f("memory.current")),
                peak: number(&f("memory.peak")),
                limit: number(&f("memory.max")),
                swap_usage: number(&f("memory.swap.current")),
                oom_kills: keyed(&f("memory.events"), "oom_kill").unwrap_or(0),
                stat: pairs(&f("memory.stat")),
            },
            pids: PidsStats {
                current: number(&f("pids.current")),
                limit: match f("pids.max").trim() {
                    "max" | "" => 0,
                    v => v.parse().unwrap_or(0),
                },
            },
            io: parse_io(&f("io.stat")),
        })
    }
}

/// A single-number file; `max` is `u64::MAX`, anything unreadable 0.
pub fn number(s: &str) -> u64 {
    match s.trim() {
        "max" => u64::MAX,
        v => v.parse().unwrap_or(0),
    }
}

/// `key value` lines.
pub fn pairs(s: &str) -> Vec<(String, u64)> {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn keyed(s: &str, key: &str) -> Option<u64> {
    pairs(s).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `cpu.stat`.
pub fn parse_cpu(s: &str) -> CpuStats {
    let get = |k| keyed(s, k).unwrap_or(0);
    CpuStats {
        usage_usec: get("usage_usec"),
        user_usec: get("user_usec"),
        system_usec: get("system_usec"),
        nr_periods: get("nr_periods"),
        nr_throttled: get("nr_throttled"),
        throttled_usec: get("throttled_usec"),
    }
}

/// `io.stat`, summed over devices.
pub fn parse_io(s: &str) -> IoStats {
    let mut io = IoStats::default();
    for field in s.split_whitespace() {
        if let Some((k, v)) = field.split_once('=') {
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io.rbytes += v,
                "wbytes" => io.wbytes += v,
                "rios" => io.rios += v,
                "wios" => io.wios += v,
                _ => {}
            }
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let cpu = parse_cpu("usage_usec 120\nuser_usec 100\nsystem_usec 20\nnr_periods 3\nnr_throttled 1\nthrottled_usec 9\n");
        assert_eq!(
            (
                cpu.usage_usec,
                cpu.user_usec,
                cpu.system_usec,
                cpu.nr_periods,
                cpu.nr_throttled,
                cpu.throttled_usec
            ),
            (120, 100, 20, 3, 1, 9)
        );
        let io = parse_io("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=5 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n");
        assert_eq!((io.rbytes, io.wbytes, io.rios, io.wios), (15, 20, 2, 2));
        assert_eq!(number("max\n"), u64::MAX);
        assert_eq!(number("4096\n"), 4096);
        assert_eq!(
            keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        assert_eq!(
            pairs("anon 4096\nfile 8192\n"),
            vec![("anon".into(), 4096), ("file".into(), 8192)]
        );
    }
}
