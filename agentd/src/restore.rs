//! A VM restored from a template (docs/PERFORMANCE.md, "Templates").
//!
//! The host boots a template VM with `MSB_TEMPLATE=1`, saves it once agentd is ready, and starts
//! each sandbox by restoring that state instead of booting. Whatever the template's guest learnt
//! about its devices would then be stale in every clone: the template's disks are empty
//! placeholders, and a clone's are the sandbox's. So at a template boot agentd unbinds the disks'
//! and network devices' drivers ([`park_devices`]) before it announces itself: the saved guest
//! holds no block device, no cached block and no interface. On `core.restore` it binds them
//! again ([`restore`]): each driver probes the clone's device afresh (its size, serial, MAC,
//! MTU), as at a boot.
//!
//! The rest of what a clone must not share with its siblings comes in the same message: the
//! wall clock (the template's stood still while saved), entropy (every clone starts with the
//! template's random generator state), and the sandbox's `MSB_*` settings (hostname, tmpfs
//! mounts, limits), which a booted VM reads from its command line. The kernel's boot id, made at
//! its first read, is left unread by a template, so each clone makes its own after the reseed;
//! what the kernel randomised while booting (its layout, its hash keys) stays the template's.

use std::fs;
use std::io;
use std::path::Path;

use msb_protocol::boot::BootEnv;
use msb_protocol::types::Restore;
use msb_protocol::MAX_RESTORE_ENTROPY;

use crate::sys;

const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
const VIRTIO_DRIVERS: &str = "/sys/bus/virtio/drivers";

/// The drivers a template leaves unbound, by virtio device id (`/sys/bus/virtio/devices/*/device`).
const PARKED: [(&str, &str); 2] = [("0x0001", "virtio_net"), ("0x0002", "virtio_blk")];

/// Unbinds every network and block device from its driver. Returns how many.
pub fn park_devices() -> io::Result<usize> {
    let mut n = 0;
    for (_, driver) in PARKED {
        let dir = Path::new(VIRTIO_DRIVERS).join(driver);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("virtio") {
                fs::write(dir.join("unbind"), &name).map_err(|e| {
                    io::Error::new(e.kind(), format!("unbind {name} from {driver}: {e}"))
                })?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Binds every network and block device without a driver to its driver; the probe runs in the
/// write, so each device is there (`/sys/block/vd*`, its interface) when this returns.
pub fn bind_parked() -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(VIRTIO_DEVICES)?.flatten() {
        let dev = e.path();
        if dev.join("driver").exists() {
            continue;
        }
        let id = fs::read_to_string(dev.join("device")).unwrap_or_default();
        let Some((_, driver)) = PARKED.iter().find(|(i, _)| *i == id.trim()) else {
            continue;
        };
        let name = e.file_name().to_string_lossy().into_owned();
        fs::write(Path::new(VIRTIO_DRIVERS).join(driver).join("bind"), &name)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {name} to {driver}: {e}")))?;
        n += 1;
    }
    Ok(n)
}

/// Makes this restored VM the sandbox's: clock, entropy, devices, settings, in that order (the
/// clock first, so that what follows logs the right time). Fails naming the step.
pub fn restore(r: &Restore) -> Result<(), String> {
    let started = std::time::Instant::now();
    if r.entropy.len() > MAX_RESTORE_ENTROPY {
        return Err(format!(
            "{} bytes of entropy (at most {MAX_RESTORE_ENTROPY})",
            r.entropy.len()
        ));
    }
    let env = BootEnv::from_vars(
        r.boot_env
            .iter()
            .map(|w| w.split_once('=').unwrap_or((w.as_str(), ""))),
    )
    .map_err(|e| format!("boot settings: {e}"))?;
    sys::set_realtime(r.unix_time_nanos).map_err(|e| format!("set the wall clock: {e}"))?;
    if !r.entropy.is_empty() {
        sys::add_entropy_and_reseed(&r.entropy)
            .map_err(|e| format!("reseed the random generator: {e}"))?;
    }
    let bound = bind_parked().map_err(|e| e.to_string())?;
    crate::init::apply_boot_env(&env);
    // First read, after the reseed: this clone's own.
    let boot_id = sys::boot_id();
    tracing::info!(
        devices = bound,
        boot_id,
        took_ms = started.elapsed().as_millis(),
        "restored from a template"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(entropy: usize, words: &[&str]) -> Restore {
        Restore {
            boot_env: words.iter().map(|w| (*w).to_owned()).collect(),
            entropy: vec![1; entropy],
            unix_time_nanos: 0,
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        assert_eq!(
            restore(&req(MAX_RESTORE_ENTROPY + 1, &[])).unwrap_err(),
            "257 bytes of entropy (at most 256)"
        );
        assert_eq!(
            restore(&req(64, &["MSB_HOSTNAME=bad_name"])).unwrap_err(),
            "boot settings: MSB_HOSTNAME: entry \"bad_name\": character '_' is not allowed \
             (letters, digits, '-', '.')"
        );
    }
}
