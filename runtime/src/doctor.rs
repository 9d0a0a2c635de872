//! What this host can run (`msbox doctor` prints it): one line per check, with a fix for each
//! failure, and the backend `auto` picks and why. It lives with the backends because it judges
//! what each of them needs; its callers never name a backend.
//!
//! Probing the host ([`Facts::probe`]) is kept apart from judging it ([`report`]), so the
//! verdicts and fixes are unit-tested with made-up hosts.

use std::path::PathBuf;
use std::process::Command;

use crate::vmm::krun::{self, Krun};
use crate::vmm::{self, BackendKind};
use crate::GuestAssets;

/// What was found on the host.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The hardware virtualization flag in /proc/cpuinfo (`vmx`, `svm`), if any.
    pub virt_flag: Option<String>,
    /// Whether `/dev/kvm` opened read-write, or why not.
    pub kvm_rw: Result<(), String>,
    /// Whether KVM is PVM-backed (module `kvm_pvm`).
    pub pvm: bool,
    /// libkrunfw: where, and its version when known.
    pub libkrunfw: Option<(PathBuf, Option<String>)>,
    /// The krun VMM program, or why it is missing.
    pub krun_vmm: Result<PathBuf, String>,
    /// QEMU's version line, or why it is missing.
    pub qemu: Result<String, String>,
    /// Where the guest assets are looked for.
    pub assets: GuestAssets,
    /// Whether the kernel and the initramfs are there, or which is missing.
    pub assets_ok: Result<(), String>,
    /// containerd's version line, if found.
    pub containerd: Option<String>,
    /// What `auto` picks, and why.
    pub auto: (BackendKind, String),
}

impl Facts {
    /// Looks at this host.
    pub fn probe() -> Facts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let virt_flag = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_whitespace().find(|f| *f == "vmx" || *f == "svm"))
            .map(str::to_owned);
        let kvm_rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| e.to_string());
        let assets = GuestAssets::default_location();
        let explicit = std::env::var_os("MSB_LIBKRUNFW").map(PathBuf::from);
        let libkrunfw = krun::find_krunfw(explicit.as_deref(), &[GuestAssets::dir()])
            .filter(|p| p.exists())
            .map(|p| {
                let v = krun::krunfw_version(&p);
                (p, v)
            });
        let qemu_program =
            std::env::var("MSB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        Facts {
            virt_flag,
            kvm_rw,
            pvm: std::path::Path::new("/sys/module/kvm_pvm").exists(),
            libkrunfw,
            krun_vmm: Krun::new().program().map_err(|e| e.to_string()),
            qemu: first_line(&qemu_program).ok_or_else(|| format!("{qemu_program} not found")),
            assets_ok: assets.check().map_err(|e| e.to_string()),
            assets,
            containerd: first_line("containerd"),
            auto: vmm::select_backend(None),
        }
    }
}

/// The first line of `PROGRAM --version`, if it runs.
fn first_line(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_owned())
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Passed.
    pub ok: bool,
    /// What was checked.
    pub what: &'static str,
    /// What was found.
    pub found: String,
    /// How to fix a failure.
    pub fix: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark}  {:<22} {}", self.what, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, "  -> fix: {fix}")?;
        }
        Ok(())
    }
}

/// The checks, then whether the backend `auto` picks has what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One per check.
    pub lines: Vec<Line>,
    /// `backend auto: ...` with the reason.
    pub auto: String,
    /// Whether `msbox run` with `auto` can boot a guest here.
    pub ready: bool,
}

fn line(ok: bool, what: &'static str, found: String, fix: &str) -> Line {
    Line {
        ok,
        what,
        found,
        fix: (!ok).then(|| fix.to_owned()),
    }
}

/// Judges `facts`.
pub fn report(facts: &Facts) -> Report {
    let lines = vec![
        line(
            facts.virt_flag.is_some(),
            "CPU virtualization",
            match &facts.virt_flag {
                Some(f) => format!("{f} flag present"),
                None => "no vmx/svm flag in /proc/cpuinfo".into(),
            },
            "enable VT-x/AMD-V in the firmware, or nested virtualization for this VM; else use --backend qemu (TCG)",
        ),
        line(
            facts.kvm_rw.is_ok(),
            "/dev/kvm",
            match &facts.kvm_rw {
                Ok(()) => "read-write".into(),
                Err(e) => format!("not usable read-write: {e}"),
            },
            "load kvm_intel or kvm_amd and run as root or a member of group kvm",
        ),
        line(
            !facts.pvm,
            "PVM",
            if facts.pvm {
                "KVM is PVM-backed (module kvm_pvm): a standard guest kernel stops with KVM_EXIT_INTERNAL_ERROR".into()
            } else {
                "not PVM-backed".into()
            },
            "krun cannot run here: use --backend qemu (auto does)",
        ),
        line(
            facts.libkrunfw.is_some(),
            "libkrunfw",
            match &facts.libkrunfw {
                Some((p, v)) => format!(
                    "{} (version {})",
                    p.display(),
                    v.as_deref().unwrap_or("unknown")
                ),
                None => format!(
                    "{} not found in {}",
                    krun::KRUNFW_NAME,
                    GuestAssets::dir().display()
                ),
            },
            "run hack/libkrunfw (or set MSB_LIBKRUNFW to the library)",
        ),
        line(
            facts.krun_vmm.is_ok(),
            "krun VMM",
            match &facts.krun_vmm {
                Ok(p) => p.display().to_string(),
                Err(e) => e.clone(),
            },
            "cargo build -p msb-krunvmm, and keep msb-krun-vmm next to msbox",
        ),
        line(
            facts.qemu.is_ok(),
            "QEMU",
            match &facts.qemu {
                Ok(v) => v.clone(),
                Err(e) => e.clone(),
            },
            "apt-get install qemu-system-x86 (hack/install-deps does)",
        ),
        line(
            facts.assets_ok.is_ok(),
            "guest kernel+initramfs",
            match &facts.assets_ok {
                Ok(()) => format!(
                    "{}, {}",
                    facts.assets.kernel.display(),
                    facts.assets.initramfs.display()
                ),
                Err(e) => e.clone(),
            },
            "hack/guest-assets (after building agentd for x86_64-unknown-linux-musl)",
        ),
        line(
            facts.containerd.is_some(),
            "containerd",
            facts
                .containerd
                .clone()
                .unwrap_or_else(|| "not found (only needed for the shim)".into()),
            "apt-get install containerd (hack/install-deps does)",
        ),
    ];
    let (kind, why) = &facts.auto;
    // `select_backend` says "auto: qemu, because ..."; keep only the reason.
    let prefix = format!("auto: {kind}, ");
    let reason = why
        .strip_prefix(&prefix)
        .or_else(|| why.strip_prefix("auto: "))
        .unwrap_or(why);
    let ok = |what: &str| lines.iter().any(|l| l.what == what && l.ok);
    // containerd is not needed by msbox run: it never makes the host "not ready".
    let ready = ok("guest kernel+initramfs")
        && match kind {
            BackendKind::Qemu => ok("QEMU"),
            BackendKind::Krun => ok("libkrunfw") && ok("krun VMM"),
        };
    Report {
        lines,
        auto: format!("backend auto: {kind} ({reason})"),
        ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm_host() -> Facts {
        Facts {
            virt_flag: None,
            kvm_rw: Ok(()),
            pvm: true,
            libkrunfw: Some(("/a/libkrunfw.so.5".into(), Some("5.6.1".into()))),
            krun_vmm: Ok("/b/msb-krun-vmm".into()),
            qemu: Ok("QEMU emulator version 7.2.15".into()),
            assets: GuestAssets::in_dir("/a".as_ref()),
            assets_ok: Ok(()),
            containerd: Some("containerd github.com/containerd/containerd 1.6.20".into()),
            auto: (
                BackendKind::Qemu,
                "auto: qemu, because KVM here is PVM-backed".into(),
            ),
        }
    }

    #[test]
    fn a_pvm_host_runs_qemu_and_says_why_krun_cannot() {
        let r = report(&pvm_host());
        let text: Vec<String> = r.lines.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 8);
        assert_eq!(
            text[0],
            "FAIL  CPU virtualization     no vmx/svm flag in /proc/cpuinfo  -> fix: enable VT-x/AMD-V in the firmware, or nested virtualization for this VM; else use --backend qemu (TCG)"
        );
        assert_eq!(text[1], "ok    /dev/kvm               read-write");
        assert!(text[2].starts_with("FAIL  PVM"), "{}", text[2]);
        assert!(text[2].ends_with("-> fix: krun cannot run here: use --backend qemu (auto does)"));
        assert_eq!(
            text[3],
            "ok    libkrunfw              /a/libkrunfw.so.5 (version 5.6.1)"
        );
        assert_eq!(
            r.auto,
            "backend auto: qemu (because KVM here is PVM-backed)"
        );
        assert!(r.ready);
        // Every failed check carries a fix; passed ones none.
        assert!(r.lines.iter().all(|l| l.ok != l.fix.is_some()));
    }

    #[test]
    fn ready_depends_on_what_the_chosen_backend_needs() {
        let mut f = pvm_host();
        f.qemu = Err("qemu-system-x86_64 not found".into());
        assert!(!report(&f).ready);
        f.auto = (
            BackendKind::Krun,
            "auto: KVM can boot a standard guest".into(),
        );
        let r = report(&f);
        assert!(r.ready);
        assert_eq!(r.auto, "backend auto: krun (KVM can boot a standard guest)");
        f.libkrunfw = None;
        let r = report(&f);
        assert!(!r.ready);
        assert!(r.lines[3].to_string().contains("fix: run hack/libkrunfw"));
        f = pvm_host();
        f.assets_ok = Err("guest kernel not found at /a/vmlinux".into());
        assert!(!report(&f).ready);
        f = pvm_host();
        f.containerd = None;
        assert!(report(&f).ready, "containerd is not needed by msbox run");
    }
}
