//! Boot time: what agentd reports in `core.ready` (CLOCK_BOOTTIME in the guest: kernel start to
//! agentd's first instruction, to the end of its set-up, to the port being open) and what the
//! host sees (VMM launch to `core.ready`; `msbox run ROOTFS -- true` end to end); then the same
//! host figures for VMs restored from a template (`msb_runtime::template`; the first restore
//! builds it) instead of booted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use msb_runtime::vmm::select_backend;
use msb_runtime::{Vm, VmConfig};
use serde::Serialize;

/// One boot.
#[derive(Debug, Serialize)]
pub struct BootSample {
    guest_boot_ms: f64,
    guest_init_ms: f64,
    guest_ready_ms: f64,
    host_launch_to_ready_ms: f64,
}

/// Summary of a series: its size, min, median (p50), p95 and max, by nearest rank.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub(crate) n: usize,
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) p95: f64,
    pub(crate) max: f64,
}

/// A duration in milliseconds, as every report gives them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// [`Stats`] of a non-empty series.
pub fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least `percent`% of the values at or below it.
    let at = |percent: usize| {
        let rank = (percent * v.len()).div_ceil(100);
        v[rank.clamp(1, v.len()) - 1]
    };
    Stats {
        n: v.len(),
        min: v[0],
        median: at(50),
        p95: at(95),
        max: v[v.len() - 1],
    }
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    backend: String,
    backend_reason: String,
    kernel_release: String,
    runs: usize,
    samples: Vec<BootSample>,
    guest_ready_ms: Stats,
    host_launch_to_ready_ms: Stats,
    msbox_run_true_wall_ms: Stats,
    /// The first restore, which builds the template (a boot, the save, the restore).
    template_build_and_restore_ms: f64,
    /// VMM launch to `core.restored`, the `n` restores after the first.
    restore_launch_to_ready_ms: Stats,
    /// `msbox run ROOTFS -- true` with templates (its default), after the restores above.
    msbox_run_true_restored_wall_ms: Stats,
}

/// One VM on a fresh copy of `root`, booted or restored: its `core.ready` and launch-to-ready.
async fn one_vm(
    root: &Path,
    id: String,
    templates: bool,
) -> Result<(msb_protocol::types::Ready, f64, bool)> {
    let mut cfg = VmConfig::new(id);
    cfg.templates = templates;
    cfg.disks = msb_test_e2e::guest::try_lower_and_upper(&cfg.dir(), root)?;
    let sb = Vm::start(cfg).await?;
    let r = sb.ready().clone();
    let took = ms(sb.boot_time());
    let restored = sb.from_template();
    sb.shutdown(Duration::from_secs(20)).await?;
    Ok((r, took, restored))
}

/// `msbox run ROOTFS [--no-template] -- true`, `n` times: wall times.
fn msbox_runs(msbox: &Path, root: &Path, n: usize, templates: bool) -> Result<Vec<f64>> {
    let mut walls = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut cmd = Command::new(msbox);
        cmd.arg("run");
        if !templates {
            cmd.arg("--no-template");
        }
        let status = cmd.arg(root).args(["--", "true"]).status()?;
        walls.push(ms(t.elapsed()));
        ensure!(status.success(), "msbox run true failed: {status}");
    }
    Ok(walls)
}

fn busybox_root(dir: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("busybox-static must be installed")?;
    for applet in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(())
}

/// Boots `n` guests (each shut down before the next), then runs `msbox ... true` `n` times.
pub async fn run(n: usize) -> Result<Report> {
    ensure!(n > 0, "at least one run");
    let work = std::env::temp_dir().join(format!("msb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let root = work.join("root");
    busybox_root(&root)?;
    let (backend, reason) = select_backend(None);
    let mut samples = Vec::new();
    let mut kernel_release = String::new();
    let pid = std::process::id();
    for i in 0..n {
        let (r, took, _) = one_vm(&root, format!("bench-{pid}-{i}"), false).await?;
        kernel_release = r.kernel_release.clone();
        samples.push(BootSample {
            guest_boot_ms: r.boot_time_ns as f64 / 1e6,
            guest_init_ms: r.init_time_ns as f64 / 1e6,
            guest_ready_ms: r.ready_time_ns as f64 / 1e6,
            host_launch_to_ready_ms: took,
        });
    }
    let msbox =
        crate::setup::next_to_this("msbox", "cargo build --release -p msb-shim --bin msbox")?;
    let walls = msbox_runs(&msbox, &root, n, false)?;
    // Templates: a fresh one of this run's own, built by the first restore.
    let templates = work.join("templates");
    std::env::set_var("MSB_TEMPLATE_DIR", &templates);
    let (_, first, restored) = one_vm(&root, format!("bench-{pid}-t"), true).await?;
    ensure!(
        restored,
        "the first VM with templates on was not restored (see the log)"
    );
    let mut restores = Vec::new();
    for i in 0..n {
        let (_, took, restored) = one_vm(&root, format!("bench-{pid}-r{i}"), true).await?;
        ensure!(restored, "VM {i} was not restored (see the log)");
        restores.push(took);
    }
    // msbox's VM is another kind (its memory): one run to build its template first.
    msbox_runs(&msbox, &root, 1, true)?;
    let restored_walls = msbox_runs(&msbox, &root, n, true)?;
    std::fs::remove_dir_all(&work)?;
    Ok(Report {
        benchmark: "boot",
        backend: backend.to_string(),
        backend_reason: reason,
        kernel_release,
        runs: n,
        guest_ready_ms: stats(samples.iter().map(|s| s.guest_ready_ms).collect()),
        host_launch_to_ready_ms: stats(samples.iter().map(|s| s.host_launch_to_ready_ms).collect()),
        samples,
        msbox_run_true_wall_ms: stats(walls),
        template_build_and_restore_ms: first,
        restore_launch_to_ready_ms: stats(restores),
        msbox_run_true_restored_wall_ms: stats(restored_walls),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_by_nearest_rank() {
        let p = stats((1..=20).rev().map(f64::from).collect());
        assert_eq!(
            (p.n, p.min, p.median, p.p95, p.max),
            (20, 1.0, 10.0, 19.0, 20.0)
        );
        let one = stats(vec![7.0]);
        assert_eq!((one.median, one.p95), (7.0, 7.0));
    }
}
