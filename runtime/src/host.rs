//! Facts about the host that decide how a VM is started.

use std::path::Path;

/// The host's TSC frequency in kHz, for the guest's `tsc_early_khz=` (docs/HOSTS.md: without it,
/// TSC calibration under TCG sometimes hangs the guest). Sources, best first: the kernel's
/// exported figure, its refined calibration in the kernel log, its detected frequency, then
/// `cpu MHz` of /proc/cpuinfo.
pub fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse() {
            return Some(v);
        }
    }
    let log = std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mhz = mhz_after(&log, "tsc: Refined TSC clocksource calibration: ")
        .or_else(|| mhz_after(&log, "tsc: Detected "))
        .or_else(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            cpuinfo
                .lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })?;
    let khz = (mhz * 1000.0).round();
    if !(1.0..9.0e15).contains(&khz) {
        return None; // NaN, infinite, zero or negative: no reading
    }
    // A whole number in [1, 2^53) converts exactly.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let khz = khz as u64;
    Some(khz)
}

fn mhz_after(log: &str, marker: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Whether KVM here can boot a standard guest, and why not.
///
/// Needs hardware virtualization flags, a read-write `/dev/kvm`, and a KVM that is not PVM
/// (`kvm_pvm`, paravirtualized nested KVM: a standard guest kernel stops with
/// `KVM_EXIT_INTERNAL_ERROR` there).
pub fn kvm_usable() -> Result<(), String> {
    // PVM first: its hosts never show vmx/svm either, and this names the real reason.
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err(
            "KVM here is PVM-backed (module kvm_pvm), which cannot boot a standard guest kernel"
                .into(),
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Err(
            "the CPU shows no hardware virtualization (no vmx/svm flag in /proc/cpuinfo)".into(),
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/kvm is not usable read-write: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tsc_from_kernel_log_lines() {
        let log = "[    0.000064] tsc: Detected 2596.146 MHz processor\n[    1.2] other\n";
        assert_eq!(mhz_after(log, "tsc: Detected "), Some(2596.146));
        assert_eq!(
            mhz_after(log, "tsc: Refined TSC clocksource calibration: "),
            None
        );
        assert!(tsc_khz().unwrap_or(1) > 0);
    }
}
