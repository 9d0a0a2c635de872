//! The host memory of a container: the containerd shim serving it and every process under it
//! (for microsandbox the VMM and virtiofsd, for runc the container's processes), found from
//! `/proc`, with their resident (and proportional) set.
//!
//! `ctr` and `cri` both report it; one walk of the process tree keeps their figures comparable
//! (the same processes counted the same way).

use anyhow::{bail, Result};

/// `(pid, ppid)` of every process, from `/proc/<pid>/stat`.
fn processes() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue; // ended meanwhile
        };
        out.push((pid, ppid(&stat).unwrap_or(0)));
    }
    out
}

/// The parent's pid in a `/proc/<pid>/stat` line.
fn ppid(stat: &str) -> Option<i32> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so from the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `root` and its descendants in `procs`, breadth first.
fn tree(procs: &[(i32, i32)], root: i32) -> Vec<i32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    tree
}

/// The containerd shim serving task `id` in containerd namespace `namespace`, then all its
/// descendants (breadth first).
pub(crate) fn shim_tree(id: &str, namespace: &str) -> Result<Vec<i32>> {
    let procs = processes();
    let cmdline = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    let Some(&(shim, _)) = procs.iter().find(|p| {
        let c = cmdline(p.0);
        c.contains("containerd-shim") && c.contains(&format!("-id {id} ")) && c.contains(namespace)
    }) else {
        bail!("no containerd-shim process with -id {id} in namespace {namespace}");
    };
    Ok(tree(&procs, shim))
}

/// A `kB` field (`Key:  123 kB`) of a `/proc` file; 0 if it is not there.
pub(crate) fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The process's name (`/proc/<pid>/comm`).
fn name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|n| n.trim().to_owned())
        .unwrap_or_default()
}

/// `(name, VmRSS KiB)` of each of `pids` still running, from `/proc/<pid>/status`.
pub(crate) fn resident(pids: &[i32]) -> Vec<(String, u64)> {
    pids.iter()
        .filter_map(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some((name(pid), kib(&status, "VmRSS:")))
        })
        .collect()
}

/// `(name, Rss KiB, Pss KiB)` of each of `pids` still running, from `/proc/<pid>/smaps_rollup`:
/// the proportional set shares pages among the processes mapping them (QEMU's and the shims'
/// binaries and libraries), so summed over many pods it is what they cost together.
pub(crate) fn resident_proportional(pids: &[i32]) -> Vec<(String, u64, u64)> {
    pids.iter()
        .filter_map(|&pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            Some((name(pid), kib(&rollup, "Rss:"), kib(&rollup, "Pss:")))
        })
        .collect()
}

/// `(pid, name, CPU time in clock ticks)` of each of `pids` still running: user + system time
/// from `/proc/<pid>/stat` (fields 14 and 15), in `USER_HZ` ticks (100 a second).
pub(crate) fn cpu_ticks(pids: &[i32]) -> Vec<(i32, String, u64)> {
    pids.iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, name(pid), user_plus_system(&stat)?))
        })
        .collect()
}

/// utime + stime of a `/proc/<pid>/stat` line (after `comm`, they are the 12th and 13th fields).
fn user_plus_system(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace().skip(11);
    let user: u64 = f.next()?.parse().ok()?;
    let system: u64 = f.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_after_a_name_with_spaces_and_parentheses() {
        assert_eq!(ppid("42 (a b) c) S 7 42 42 0 -1"), Some(7));
        assert_eq!(ppid("42 (sh) R"), None);
    }

    #[test]
    fn cpu_time_after_a_name_with_spaces() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100";
        assert_eq!(user_plus_system(stat), Some(22));
        assert_eq!(user_plus_system("42 (x) S 1"), None);
    }

    #[test]
    fn kib_fields() {
        let text = "Name:\tx\nVmRSS:\t    2048 kB\nRss:  300 kB\nPss:  150 kB\n";
        assert_eq!(kib(text, "VmRSS:"), 2048);
        assert_eq!((kib(text, "Rss:"), kib(text, "Pss:")), (300, 150));
        assert_eq!(kib(text, "Swap:"), 0);
    }

    #[test]
    fn tree_is_breadth_first_and_only_descendants() {
        let procs = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 11),
            (20, 1),
            (21, 20),
        ];
        assert_eq!(tree(&procs, 10), vec![10, 11, 12, 13]);
        assert_eq!(tree(&procs, 13), vec![13]);
    }

    #[test]
    fn the_shim_is_found_by_id_and_namespace_with_its_children() {
        // A stand-in with a shim's command line (`sh -c SCRIPT $0 ARGS...`) and one child.
        let me = std::process::id();
        let (id, ns) = (format!("t{me}"), format!("msb-bench-test-{me}"));
        let mut shim = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait", "containerd-shim-bench-test"])
            .args(["-namespace", &ns, "-id", &id, "-address", "/nowhere"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Until `sh` has replaced the forked test process and started its child.
        let found = loop {
            match shim_tree(&id, &ns) {
                Ok(found) if found.len() > 1 => break found,
                r if std::time::Instant::now() > deadline => break r.unwrap(),
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let other_ns = shim_tree(&id, &format!("{ns}-other")).map_err(|e| e.to_string());
        let other_id = shim_tree(&format!("{id}0"), &ns).map_err(|e| e.to_string());
        let pids: Vec<String> = found.iter().map(i32::to_string).collect();
        std::process::Command::new("kill")
            .args(&pids)
            .status()
            .unwrap();
        shim.wait().unwrap();
        let sh = i32::try_from(shim.id()).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], sh);
        assert_eq!(
            other_ns,
            Err(format!(
                "no containerd-shim process with -id {id} in namespace {ns}-other"
            ))
        );
        assert_eq!(
            other_id,
            Err(format!(
                "no containerd-shim process with -id {id}0 in namespace {ns}"
            ))
        );
    }

    #[test]
    fn a_live_child_is_found_and_measured() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let kid = i32::try_from(child.id()).unwrap();
        // Until the forked test process has become `sleep`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while name(kid) != "sleep" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let found = tree(&processes(), me);
        let counted = resident(&[me, kid]);
        let rollup = resident_proportional(&[kid]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.first(), Some(&me));
        assert!(found.contains(&kid), "{kid} not in {found:?}");
        assert_eq!(counted.len(), 2);
        assert!(counted.iter().all(|(_, rss)| *rss > 0), "{counted:?}");
        assert_eq!(counted[1].0, "sleep");
        let [(name, rss, pss)] = rollup.as_slice() else {
            panic!("{rollup:?}");
        };
        assert_eq!(name, "sleep");
        assert!(*rss > 0 && *pss > 0 && pss <= rss, "{rollup:?}");
    }
}
