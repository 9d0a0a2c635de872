//! Density: how many idle pods this host starts within a time limit, and what they cost once
//! up. Pods (busybox `sleep`, started as the kubelet does: RunPodSandbox, CreateContainer,
//! StartContainer) are started by a few workers at once until the time is up, a cap is reached,
//! the host's available memory falls below a floor, or too many fail; then, with all of them
//! idle, the memory they hold (each pod's shim and everything under it, summed; and the drop in
//! the host's `MemAvailable`) and the host CPU they keep busy; then they are removed. For the
//! `microsandbox` and `runc` handlers of one containerd 1.7 with the CRI plugin, in the same run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use msb_test_e2e::containerd::{Containerd, Version, CRI_NAMESPACE};
use msb_test_e2e::cri::{api::ContainerState, Cri, Handler};
use serde::Serialize;

use crate::boot::ms;
use crate::cri::{remove_pod, start_pod};
use crate::{procs, setup};

/// No pod is started once the host has less memory available than this (MiB): the benchmark
/// measures density, it must not push the host into the OOM killer.
const MEMORY_FLOOR_MIB: u64 = 2048;

/// Starting stops after this many failed pods.
const MAX_FAILURES: usize = 5;

/// What the benchmark was asked for.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Pods started after this are not counted as within it.
    pub seconds: u64,
    /// Pods started at once.
    pub workers: usize,
    /// No more pods than this.
    pub max_pods: usize,
}

/// Figures of one handler.
#[derive(Debug, Serialize)]
pub struct HandlerFigures {
    handler: &'static str,
    /// Pods whose container was running before the time was up.
    pods_within_limit: usize,
    /// All pods started (those in flight at the limit finish and count here).
    pods_started: usize,
    pods_failed: usize,
    /// Why starting stopped: `time`, `max_pods`, `memory_floor` or `failures`.
    stopped_because: &'static str,
    /// Until the last pod ran.
    start_wall_s: f64,
    /// Pods per second over that time.
    start_rate_per_s: f64,
    /// After a settling pause: how many of the containers were still running.
    running_when_idle: usize,
    /// All pods' shims and everything under them, summed, MiB.
    idle_rss_total_mib: f64,
    idle_pss_total_mib: f64,
    /// Per pod (the totals over the pods started).
    idle_pss_per_pod_mib: f64,
    idle_rss_per_pod_mib: f64,
    /// The drop in the host's `MemAvailable` from before the first pod to the idle pods, MiB.
    host_memory_used_mib: f64,
    /// Share of the host's CPU time busy over 5 s with all pods idle (all cores, 0-100).
    host_cpu_busy_percent_idle: f64,
    /// Over the same 5 s, per pod: each kind of process under its shim (by name, the shim
    /// included), percent of one core.
    idle_cpu_per_pod_percent_of_a_core: BTreeMap<String, f64>,
    /// Removing every pod (StopPodSandbox + RemovePodSandbox), the same workers at once.
    teardown_s: f64,
    /// The first few failures.
    failures: Vec<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    limits: Limits,
    host_memory_total_mib: u64,
    host_cpus: usize,
    backend_note: String,
    handlers: Vec<HandlerFigures>,
}

/// A `kB` field of `/proc/meminfo`, in MiB ([`procs::kib`]); an error where it is missing.
fn meminfo_mib(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    match procs::kib(&text, key) {
        0 => bail!("no {key} in /proc/meminfo"),
        kib => Ok(kib / 1024),
    }
}

/// (busy, total) jiffies of all CPUs, from the first line of `/proc/stat`.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_cpu_line(text.lines().next().unwrap_or_default()).context("no cpu line in /proc/stat")
}

/// `cpu user nice system idle iowait irq softirq steal ...`: idle and iowait are not busy.
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The host's busy share of CPU time over `window`, percent.
fn cpu_busy_percent(window: Duration) -> Result<f64> {
    let (b0, t0) = cpu_jiffies()?;
    std::thread::sleep(window);
    let (b1, t1) = cpu_jiffies()?;
    let total = t1.saturating_sub(t0).max(1);
    Ok(100.0 * b1.saturating_sub(b0) as f64 / total as f64)
}

/// Over how long the idle pods' CPU use is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on Linux whatever the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// The CPU time between two [`procs::cpu_ticks`] samples, summed by process name (processes in
/// both samples), per pod, in percent of one core over [`IDLE_WINDOW`].
fn cpu_by_name(
    before: &[(i32, String, u64)],
    after: &[(i32, String, u64)],
    pods: usize,
) -> BTreeMap<String, f64> {
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, name, t1) in after {
        if let Some((_, _, t0)) = before.iter().find(|b| b.0 == *pid) {
            *by_name.entry(name.clone()).or_default() += t1.saturating_sub(*t0) as f64;
        }
    }
    let scale = 100.0 / USER_HZ / IDLE_WINDOW.as_secs_f64() / pods.max(1) as f64;
    by_name.values_mut().for_each(|v| *v *= scale);
    by_name
}

/// One pod that came up.
struct Up {
    pod: String,
    container: String,
    /// Since the first worker began.
    running_at: Duration,
}

fn measure(socket: &std::path::Path, handler: Handler, limits: Limits) -> Result<HandlerFigures> {
    // A first pod, not counted: the layer images and the page cache warm up.
    {
        let cri = Cri::connect(socket)?;
        let (pod, _, _) = start_pod(&cri, handler)?;
        remove_pod(&cri, &pod)?;
    }
    let available_before = meminfo_mib("MemAvailable:")?;
    let limit = Duration::from_secs(limits.seconds);
    let started = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let stopped_because = Mutex::new("time");
    let up: Mutex<Vec<Up>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let t = Instant::now();
    let halt = |why: &'static str| {
        if !stop.swap(true, Ordering::SeqCst) {
            *stopped_because.lock().unwrap_or_else(|e| e.into_inner()) = why;
        }
    };
    std::thread::scope(|s| {
        for _ in 0..limits.workers {
            s.spawn(|| {
                let cri = match Cri::connect(socket) {
                    Ok(c) => c,
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{e:#}"));
                        return halt("failures");
                    }
                };
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if t.elapsed() >= limit {
                        return halt("time");
                    }
                    if started.fetch_add(1, Ordering::SeqCst) >= limits.max_pods {
                        return halt("max_pods");
                    }
                    if meminfo_mib("MemAvailable:").unwrap_or(0) < MEMORY_FLOOR_MIB {
                        return halt("memory_floor");
                    }
                    match start_pod(&cri, handler) {
                        Ok((pod, container, _)) => {
                            up.lock().unwrap_or_else(|e| e.into_inner()).push(Up {
                                pod,
                                container,
                                running_at: t.elapsed(),
                            });
                        }
                        Err(e) => {
                            let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                            f.push(format!("{e:#}"));
                            if f.len() >= MAX_FAILURES {
                                return halt("failures");
                            }
                        }
                    }
                }
            });
        }
    });
    let up = up.into_inner().unwrap_or_else(|e| e.into_inner());
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let start_wall = up.iter().map(|u| u.running_at).max().unwrap_or_default();
    let within = up.iter().filter(|u| u.running_at <= limit).count();

    // Idle: let the guests settle, then memory and CPU.
    std::thread::sleep(Duration::from_secs(10));
    let cri = Cri::connect(socket)?;
    let running = up
        .iter()
        .filter(|u| {
            cri.container_status(&u.container)
                .is_ok_and(|s| s.state() == ContainerState::ContainerRunning)
        })
        .count();
    // Every pod's shim and what runs under it, found once for both figures.
    let mut pids = Vec::new();
    for u in &up {
        pids.extend(procs::shim_tree(&u.pod, CRI_NAMESPACE)?);
    }
    let (mut rss, mut pss) = (0.0, 0.0);
    for (_, r, p) in procs::resident_proportional(&pids) {
        rss += r as f64 / 1024.0;
        pss += p as f64 / 1024.0;
    }
    let host_used = available_before.saturating_sub(meminfo_mib("MemAvailable:")?);
    let before = procs::cpu_ticks(&pids);
    let busy = cpu_busy_percent(IDLE_WINDOW)?;
    let idle_cpu_per_pod = cpu_by_name(&before, &procs::cpu_ticks(&pids), up.len());

    let t_down = Instant::now();
    let next = AtomicUsize::new(0);
    let teardown_errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..limits.workers {
            s.spawn(|| {
                let failed = |e: anyhow::Error| {
                    teardown_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{e:#}"));
                };
                let cri = match Cri::connect(socket) {
                    Ok(c) => c,
                    // Its share of the pods is left to the other workers.
                    Err(e) => return failed(e),
                };
                while let Some(u) = up.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if let Err(e) = remove_pod(&cri, &u.pod) {
                        failed(e);
                    }
                }
            });
        }
    });
    let teardown = t_down.elapsed();
    let teardown_errors = teardown_errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    ensure!(
        teardown_errors.is_empty(),
        "removing pods failed: {}",
        teardown_errors.join("; ")
    );
    let n = up.len().max(1) as f64;
    Ok(HandlerFigures {
        handler: handler.name(),
        pods_within_limit: within,
        pods_started: up.len(),
        pods_failed: failures.len(),
        stopped_because: stopped_because
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        start_wall_s: start_wall.as_secs_f64(),
        start_rate_per_s: up.len() as f64 / start_wall.as_secs_f64().max(f64::EPSILON),
        running_when_idle: running,
        idle_rss_total_mib: rss,
        idle_pss_total_mib: pss,
        idle_pss_per_pod_mib: pss / n,
        idle_rss_per_pod_mib: rss / n,
        host_memory_used_mib: host_used as f64,
        host_cpu_busy_percent_idle: busy,
        idle_cpu_per_pod_percent_of_a_core: idle_cpu_per_pod,
        teardown_s: ms(teardown) / 1000.0,
        failures: failures.into_iter().take(MAX_FAILURES).collect(),
    })
}

/// Runs the density measurement for both handlers, microsandbox first.
pub fn run(limits: Limits) -> Result<Report> {
    ensure!(
        limits.seconds > 0 && limits.workers > 0 && limits.max_pods > 0,
        "at least one second, one worker and one pod"
    );
    let shim = setup::shim()?;
    Version::V1_7.check().map_err(anyhow::Error::msg)?;
    let ctrd = Containerd::shared_cri_linking(Version::V1_7, &shim).map_err(anyhow::Error::msg)?;
    let handlers = vec![
        measure(ctrd.socket(), Handler::Microsandbox, limits)?,
        measure(ctrd.socket(), Handler::Runc, limits)?,
    ];
    Ok(Report {
        benchmark: "density",
        limits,
        host_memory_total_mib: meminfo_mib("MemTotal:")?,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        backend_note: setup::backend_note(),
        handlers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_by_name_per_pod() {
        let before = [(1, "qemu".to_owned(), 100), (2, "shim".to_owned(), 10)];
        let after = [
            (1, "qemu".to_owned(), 150),
            (2, "shim".to_owned(), 15),
            (3, "new".to_owned(), 99),
        ];
        // 50 ticks of qemu over 5 s for 2 pods: 0.5 s / 5 s / 2 = 5% of a core per pod.
        let m = cpu_by_name(&before, &after, 2);
        assert_eq!(m.len(), 2);
        assert!((m["qemu"] - 5.0).abs() < 1e-9, "{m:?}");
        assert!((m["shim"] - 0.5).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn cpu_line_busy_and_total() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        assert_eq!(
            parse_cpu_line("cpu  100 5 50 800 20 3 2 0 0 0"),
            Some((160, 980))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_line("intr 1 2"), None);
    }
}
