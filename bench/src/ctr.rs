//! The shim through containerd: wall time of `ctr run --rm IMAGE true` and the host memory of
//! an idle container (shim + VMM + helpers, resident set), with runc measured in the same run
//! against the same private containerd and image.
//!
//! containerd is the end-to-end tests' private instance (`msb_test_e2e::containerd`, the demo's
//! shell code underneath); the shim is the `containerd-shim-microsandbox-v1` next to this binary.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use msb_test_e2e::containerd::{Containerd, BUSYBOX as IMAGE};
use serde::Serialize;

use crate::boot::{ms, stats, Stats};
use crate::{procs, setup};

const NS: &str = "bench";

/// Figures of one runtime.
#[derive(Debug, Serialize)]
pub struct RuntimeFigures {
    runtime: String,
    /// The first run (microsandbox: builds the layer's EROFS image in the cache).
    first_run_ms: f64,
    /// The runs after it.
    run_true_wall_ms: Stats,
    /// Resident memory of the shim and all its descendants, idle container (`sleep`).
    idle_rss_mib: f64,
    /// Which processes were counted.
    idle_processes: Vec<String>,
    /// `ctr task exec ... true` into the idle container (at least 10).
    exec_true_wall_ms: Stats,
    /// microsandbox: where the runs' time went, from the shim's log lines in containerd's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Phases>,
}

/// The shim's own timings of the `ctr run --rm true` runs (medians over the runs, ms), from
/// its `created`, `started`, `deleted` and the runtime's `ready in` log lines.
#[derive(Debug, Serialize)]
pub struct Phases {
    /// `Create` in the shim, whole.
    create: f64,
    /// Of it, before the VM is asked for (bundle, configuration, root file system source).
    create_before_vm: f64,
    /// Of it, the VM's boot: the runtime's set-up (disks, cgroup, sockets), the VMM's start, the
    /// guest's boot to `core.ready`.
    boot: f64,
    /// Of the boot, the guest's own clock at `core.ready` (kernel start to agentd ready); 0 for
    /// a VM restored from a template, whose clock is the template's.
    guest_clock_at_ready: f64,
    /// Whether the VMs were restored from a template (the runtime's `from_template`).
    from_template: bool,
    /// `Start` in the shim.
    start: f64,
    /// `Delete` in the shim, whole.
    delete: f64,
    /// Of it, the VM's shutdown (the guest's power-off, the VMM's exit, the clean-up).
    vm_stop: f64,
    /// The host's share as far as these lines tell it: Create outside the boot, the boot
    /// outside the guest's clock (the runtime's set-up, QEMU's start and its loading of the
    /// kernel; for a restored VM the guest's clock tells nothing, so none of the restore is
    /// counted here) and Delete outside the VM's shutdown.
    host_side_estimate: f64,
}

/// The number after `key=` in a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The shim's timings of containers `names` from containerd's `log`.
fn phases(log: &str, names: &[String]) -> Option<Phases> {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let mut cols: [Vec<f64>; 7] = Default::default();
    let mut from_template = false;
    for name in names {
        let of = |msg: &str, key: &str| -> Option<String> {
            log.lines()
                .find(|l| {
                    let named = format!("{key}={name}");
                    l.contains(msg)
                        && (l.contains(&format!("{named} ")) || l.contains(&format!("{named}\"")))
                })
                .map(str::to_owned)
        };
        let created = of("msg=\"created ", "container")?;
        let ready = of("msg=\"ready in ", "sandbox")?;
        let started = of("msg=\"started ", "container")?;
        let deleted = of("msg=\"deleted ", "container")?;
        from_template = ready.contains("from_template=true");
        // "ready in X ms (guest: boot a ms, init b ms, ready c ms)"
        let guest: f64 = ready
            .split("ready ")
            .nth(2)?
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        let boot = field(&created, "boot_ms")?;
        let row = [
            field(&created, "took_ms")?,
            field(&created, "before_vm_ms")?,
            boot,
            if from_template { boot } else { guest },
            field(&started, "took_ms")?,
            field(&deleted, "took_ms")?,
            field(&deleted, "vm_stop_ms")?,
        ];
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let [create, before, boot, guest, start, delete, stop] = cols.map(median);
    let (create, before, boot, guest, start, delete, stop) =
        (create?, before?, boot?, guest?, start?, delete?, stop?);
    Some(Phases {
        create,
        create_before_vm: before,
        boot,
        guest_clock_at_ready: if from_template { 0.0 } else { guest },
        from_template,
        start,
        delete,
        vm_stop: stop,
        host_side_estimate: before + (boot - guest) + (delete - stop),
    })
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    runs: usize,
    backend_note: String,
    runtimes: Vec<RuntimeFigures>,
}

/// `ctr` in the benchmark's namespace; a failure is an error carrying its output.
fn ctr(ctrd: &Containerd, args: &[&str]) -> Result<Output> {
    let out = ctrd.ctr(NS, args);
    ensure!(
        out.status.success(),
        "ctr {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The shim serving container `id` and all its descendants: names and summed RSS in KiB.
fn shim_tree_rss(id: &str) -> Result<(Vec<String>, u64)> {
    let counted = procs::resident(&procs::shim_tree(id, NS)?);
    Ok((
        counted
            .iter()
            .map(|(name, rss)| format!("{name} {rss} KiB"))
            .collect(),
        counted.iter().map(|(_, rss)| rss).sum(),
    ))
}

/// One runtime's figures; `config`: a shim configuration file (`--runtime-config-path`).
fn measure(
    ctrd: &Containerd,
    runtime: &str,
    config: Option<&Path>,
    tag: &str,
    runs: usize,
) -> Result<RuntimeFigures> {
    let config_arg = config.map(|c| c.display().to_string());
    let with_runtime = |args: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![args[0].into()];
        a.extend(["--runtime".to_owned(), runtime.to_owned()]);
        if let Some(c) = &config_arg {
            a.extend(["--runtime-config-path".to_owned(), c.clone()]);
        }
        a.extend(args[1..].iter().map(|s| (*s).to_owned()));
        a
    };
    let ctr_with = |args: &[&str]| -> Result<Output> {
        let a = with_runtime(args);
        ctr(ctrd, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run = |name: String| -> Result<Duration> {
        let t = Instant::now();
        ctr_with(&["run", "--rm", IMAGE, &name, "true"])?;
        Ok(t.elapsed())
    };
    let first = run(format!("{tag}-first"))?;
    let mut walls = Vec::new();
    for i in 0..runs {
        walls.push(ms(run(format!("{tag}-{i}"))?));
    }
    let idle = format!("{tag}-idle");
    ctr_with(&["run", "-d", IMAGE, &idle, "sleep", "600"])?;
    // Let the guest settle (page cache, translation cache) before reading resident memory.
    std::thread::sleep(Duration::from_secs(3));
    let (names, rss_kib) = shim_tree_rss(&idle)?;
    // `ctr task exec ... true` into the running container, one after the other.
    let mut execs = Vec::new();
    for i in 0..runs.max(10) {
        let t = Instant::now();
        ctr(
            ctrd,
            &["task", "exec", "--exec-id", &format!("e{i}"), &idle, "true"],
        )?;
        execs.push(ms(t.elapsed()));
    }
    ctr(ctrd, &["task", "kill", "-s", "SIGKILL", &idle])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ctr(ctrd, &["task", "delete", &idle]).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ctr(ctrd, &["container", "rm", &idle])?;
    Ok(RuntimeFigures {
        runtime: match config {
            Some(c) => format!("{runtime} ({})", c.display()),
            None => runtime.into(),
        },
        first_run_ms: ms(first),
        run_true_wall_ms: stats(walls),
        idle_rss_mib: rss_kib as f64 / 1024.0,
        exec_true_wall_ms: stats(execs),
        idle_processes: names,
        phases: phases(
            &ctrd.log(),
            &(0..runs).map(|i| format!("{tag}-{i}")).collect::<Vec<_>>(),
        ),
    })
}

/// Runs the comparison with `runs` warm runs per runtime.
pub fn run(runs: usize) -> Result<Report> {
    ensure!(runs > 0, "at least one run");
    let ctrd = setup::containerd_with_busybox(NS)?;
    // microsandbox twice: restoring a template (the default) and booting.
    let boot = std::env::temp_dir().join("msb-bench-boot.toml");
    std::fs::write(&boot, "templates = false\n")?;
    Ok(Report {
        benchmark: "ctr",
        runs,
        backend_note: setup::backend_note(),
        runtimes: vec![
            measure(&ctrd, "io.microsandbox.v1", None, "msb", runs)?,
            measure(&ctrd, "io.microsandbox.v1", Some(&boot), "msb-boot", runs)?,
            measure(&ctrd, "io.containerd.runc.v2", None, "runc", runs)?,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_come_from_the_shims_lines() {
        let log = r#"time="t" level=info msg="ready in 2267 ms (guest: boot 1198 ms, init 1633 ms, ready 1664 ms) sandbox=msb-0"
time="t" level=info msg="created container=msb-0 bundle=/b took_ms=2400 before_vm_ms=5 boot_ms=2300"
time="t" level=info msg="started container=msb-0 exec= pid=7 guest_pid=12 took_ms=40"
time="t" level=info msg="deleted container=msb-0 took_ms=150 vm_stop_ms=120""#;
        let p = phases(log, &["msb-0".to_owned()]).unwrap();
        assert_eq!(
            (p.create, p.create_before_vm, p.boot, p.guest_clock_at_ready),
            (2400.0, 5.0, 2300.0, 1664.0)
        );
        assert_eq!((p.start, p.delete, p.vm_stop), (40.0, 150.0, 120.0));
        assert_eq!(p.host_side_estimate, 5.0 + 636.0 + 30.0);
        assert!(phases(log, &["msb-1".to_owned()]).is_none());
        assert!(phases(log, &["msb-".to_owned()]).is_none());
    }
}
