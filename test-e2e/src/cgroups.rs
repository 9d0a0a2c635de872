//! The host's cgroups as the VMM-placement tests see them, read independently of the runtime's
//! own code: the mounted hierarchies (cgroup v1 controllers, named and `unified` ones, or the one
//! cgroup2), a process's cgroups, and parent cgroups a test makes the way kubelet makes a pod's.

use std::path::{Path, PathBuf};

/// One mounted hierarchy: its mount point and whether it is cgroup2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// cgroup2 (the unified hierarchy).
    pub v2: bool,
    /// The v1 `cpuset` controller's (a new cgroup there needs `cpuset.cpus`/`cpuset.mems`).
    pub cpuset: bool,
    /// The v1 `memory` controller's.
    pub memory: bool,
}

/// Every mounted cgroup hierarchy, once each (bind mounts of one skipped), from
/// `/proc/self/mountinfo`.
pub fn hierarchies() -> Vec<Hierarchy> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 || !(r[0] == "cgroup" || r[0] == "cgroup2") {
            continue;
        }
        if seen.contains(&l[2]) {
            continue;
        }
        seen.push(l[2]);
        let opts: Vec<&str> = r[2].split(',').collect();
        out.push(Hierarchy {
            mount: PathBuf::from(l[4].replace("\\040", " ")),
            v2: r[0] == "cgroup2",
            cpuset: r[0] == "cgroup" && opts.contains(&"cpuset"),
            memory: r[0] == "cgroup" && opts.contains(&"memory"),
        });
    }
    out
}

/// `rel` (`/a/b`) in hierarchy `h`.
pub fn dir_in(h: &Hierarchy, rel: &str) -> PathBuf {
    h.mount.join(rel.trim_start_matches('/'))
}

/// The hierarchies in which cgroup `rel` exists.
pub fn existing(rel: &str) -> Vec<PathBuf> {
    hierarchies()
        .iter()
        .map(|h| dir_in(h, rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// The lines of `/proc/<pid>/cgroup` (`4:memory:/a/b`, `0::/a/b`); empty when it is gone.
pub fn of_process(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The lines of `/proc/<pid>/cgroup` that do not name cgroup `rel` (none: it is in `rel` in
/// every hierarchy it belongs to).
pub fn lines_not_in(pid: i32, rel: &str) -> Vec<String> {
    of_process(pid)
        .into_iter()
        .filter(|l| l.splitn(3, ':').nth(2) != Some(rel))
        .collect()
}

/// The memory cgroup `rel` charges, in bytes: v1 `memory.usage_in_bytes`, else cgroup2's
/// `memory.current`.
pub fn memory_usage(rel: &str) -> Option<u64> {
    let hs = hierarchies();
    let file = match hs.iter().find(|h| h.memory) {
        Some(h) => dir_in(h, rel).join("memory.usage_in_bytes"),
        None => dir_in(hs.iter().find(|h| h.v2)?, rel).join("memory.current"),
    };
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The children of `pid` (every thread's), from `/proc/<pid>/task/*/children`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A cgroup a test makes in every hierarchy, as kubelet makes a pod's before the CRI runs it
/// (cpuset's `cpus` and `mems` copied from the root, else no process could join a child);
/// removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    rel: String,
}

impl TestCgroup {
    /// Makes `/<name>` everywhere.
    pub fn make(name: &str) -> TestCgroup {
        let rel = format!("/{name}");
        for h in hierarchies() {
            let dir = dir_in(&h, &rel);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            if h.cpuset {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(h.mount.join(f)).expect(f);
                    std::fs::write(dir.join(f), v.trim()).expect(f);
                }
            }
        }
        TestCgroup { rel }
    }

    /// `/<name>`.
    pub fn path(&self) -> &str {
        &self.rel
    }

    /// Removes it everywhere; the hierarchies where that failed (a cgroup left inside, a
    /// process still in it), with the error.
    pub fn remove(&self) -> Vec<String> {
        hierarchies()
            .iter()
            .map(|h| dir_in(h, &self.rel))
            .filter(|d| d.exists())
            .filter_map(|d| {
                std::fs::remove_dir(&d)
                    .err()
                    .map(|e| format!("{}: {e}", d.display()))
            })
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Removes cgroup `rel` wherever it is left (a failed test's), deepest first down to `rel`.
pub fn remove_everywhere(rel: &str) {
    for h in hierarchies() {
        let _ = remove_tree(&dir_in(&h, rel));
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
