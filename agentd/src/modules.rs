//! Loading the kernel modules shipped in the initramfs, dependencies first.
//!
//! `hack/guest-assets` writes `/lib/modules/<release>/modules.order-msb`, one module path per
//! line in a valid load order; without it, `modules.dep` is ordered here. A module that is
//! already loaded or built in (`EEXIST`) is fine; other failures are logged and skipped, since a
//! different kernel (libkrunfw's) has its drivers built in and no use for these files.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::sys;

/// Load order from `modules.dep` lines (`path: dep1 dep2`): every module after its dependencies.
pub fn order_from_dep(dep: &str) -> Vec<String> {
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let mut keys: Vec<&str> = deps.keys().copied().collect();
    keys.sort_unstable();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    fn visit<'a>(
        m: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_owned());
    }
    for k in keys {
        visit(k, &deps, &mut seen, &mut out);
    }
    out
}

/// Loads every module of `/lib/modules/<release>`; returns how many were loaded.
pub fn load_all(release: &str) -> usize {
    let dir = Path::new("/lib/modules").join(release);
    let order = match std::fs::read_to_string(dir.join("modules.order-msb")) {
        Ok(s) => s
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(dep) => order_from_dep(&dep),
            Err(_) => {
                tracing::info!("no modules for kernel {release} in the initramfs");
                return 0;
            }
        },
    };
    let mut loaded = 0;
    for m in order {
        let path = dir.join(&m);
        match sys::open_ro(&path).and_then(sys::finit_module) {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // Hardware the VM does not have (e.g. crc32c-intel without SSE4.2 under TCG).
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => tracing::debug!("module {m}: {e}"),
            Err(e) => tracing::warn!("module {m}: {e}"),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first() {
        let dep = "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko\nkernel/fs/fuse/fuse.ko:\nkernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n";
        let order = order_from_dep(dep);
        let pos = |m: &str| order.iter().position(|o| o.ends_with(m)).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos("virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/virtio.ko") < pos("virtiofs.ko"));
        assert!(pos("fuse.ko") < pos("virtiofs.ko"));
    }
}
