//! Stdio throughput through containerd: bytes a container writes to its stdout reaching
//! `ctr run`'s stdout, and bytes written to `ctr run`'s stdin reaching the container, for
//! microsandbox and runc in the same run, each beside the time the same container needs for the
//! same bytes without the transport (the in-guest baseline).
//!
//! - stdout: one `ctr run --rm IMAGE ID sh -c SCRIPT` runs `head -c N /dev/zero` onto its
//!   stdout, between two runs of `head -c N /dev/zero > /dev/null` timed in the container (from
//!   `/proc/uptime`, 10 ms resolution, reported on stderr; their mean is the baseline, so that a
//!   change of the host's load during the run weighs on both sides). The host reads ctr's
//!   stdout, checks that it got exactly N zero bytes, and times the first byte to the end of the
//!   stream: the transport's time, without the boot.
//! - stdin: `ctr run --rm IMAGE ID sh -c SCRIPT` (ctr attaches its stdin) first times `head -c N /dev/zero | wc -c`
//!   in the container, says `ready`, then counts its stdin with `wc -c`. The host writes N bytes
//!   once `ready` arrives and times the first write to the count's arrival (checked to be N).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use msb_test_e2e::containerd::{Containerd, BUSYBOX as IMAGE};
use serde::Serialize;

use crate::boot::{ms, stats, Stats};
use crate::setup;

const NS: &str = "bench-stdio";

/// One runtime's figures; throughput in MB/s (10^6 bytes per second).
#[derive(Debug, Serialize)]
pub struct RuntimeFigures {
    runtime: String,
    /// stdout: first byte to end of stream on ctr's stdout.
    stdout_transport_ms: Stats,
    stdout_mb_per_s: Stats,
    /// `head -c N /dev/zero > /dev/null` timed inside the container, same run (the mean of one
    /// run before the stream and one after it).
    stdout_in_guest_ms: Stats,
    /// `stdout_transport_ms / stdout_in_guest_ms` of each run (the bound: 1.5).
    stdout_ratio: Stats,
    /// `ctr run` wall time of the stdout run (boot, baseline, stream, teardown).
    stdout_ctr_run_wall_ms: Stats,
    /// Share of the container's machine (the VM; for runc the host) idle while the stream ran:
    /// time the guest waited for the transport rather than working.
    stdout_idle_share: Stats,
    /// How long the container's `head` took to write the stream into the transport (from
    /// inside): below `stdout_transport_ms` when the host side lags behind the guest.
    stdout_writer_ms: Stats,
    /// stdin: first write to `wc -c`'s count on ctr's stdout.
    stdin_transport_ms: Stats,
    stdin_mb_per_s: Stats,
    /// `head -c N /dev/zero | wc -c` timed inside the container, same run.
    stdin_in_guest_ms: Stats,
    stdin_ratio: Stats,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    bytes: u64,
    runs: usize,
    backend_note: String,
    runtimes: Vec<RuntimeFigures>,
}

/// Shell code that puts `/proc/uptime` in centiseconds into variable `$1`.
const UPTIME_CS: &str = "cs() { read u _ < /proc/uptime; eval $1=${u%.*}${u#*.}; }";

/// `ctr run` with `args` after `run`, stdin and stdout piped, stderr captured.
fn ctr_run(ctrd: &Containerd, args: &[&str]) -> Result<std::process::Child> {
    Command::new("timeout")
        .args(["--kill-after=5", "600"])
        .arg(ctrd.ctr_binary())
        .arg("--address")
        .arg(ctrd.socket())
        .args(["--namespace", NS, "run"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start ctr")
}

/// The value of `key=<centiseconds>` in the container's stderr, in ms.
fn guest_ms(stderr: &str, key: &str) -> Result<f64> {
    let prefix = format!("{key}=");
    let cs: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {key}= in the container's stderr: {stderr:?}"))?
        .trim()
        .parse()
        .with_context(|| format!("{key} in {stderr:?}"))?;
    Ok(cs as f64 * 10.0)
}

/// Waits for `child`, returns its stderr; an error if it failed.
fn finish(mut child: std::process::Child, what: &str) -> Result<String> {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    let status = child.wait()?;
    ensure!(status.success(), "{what}: ctr {status}: {stderr}");
    Ok(stderr)
}

/// One stdout run: (transport ms, in-guest ms, ctr wall ms).
fn stdout_once(ctrd: &Containerd, runtime: &str, id: &str, bytes: u64) -> Result<Sample> {
    let script = format!(
        "{UPTIME_CS}; cs a; head -c {bytes} /dev/zero > /dev/null; cs b; \
         echo stat0=$(head -n1 /proc/stat) >&2; cs e; head -c {bytes} /dev/zero; cs f; \
         echo stat1=$(head -n1 /proc/stat) >&2; echo stream_cs=$((f - e)) >&2; \
         cs c; head -c {bytes} /dev/zero > /dev/null; cs d; \
         echo guest_cs=$(((b - a + d - c) / 2)) >&2"
    );
    let start = Instant::now();
    let mut child = ctr_run(
        ctrd,
        &["--rm", "--runtime", runtime, IMAGE, id, "sh", "-c", &script],
    )?;
    drop(child.stdin.take());
    let mut out = child.stdout.take().context("piped stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut first) = (0u64, None);
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        if let Some(at) = buf[..n].iter().position(|&b| b != 0) {
            bail!("stdout byte {} is {:#x}, not 0", total + at as u64, buf[at]);
        }
        total += n as u64;
    }
    let end = Instant::now();
    let stderr = finish(child, "stdout run")?;
    ensure!(total == bytes, "stdout: {total} bytes of {bytes}: {stderr}");
    let first = first.context("no stdout at all")?;
    Ok(Sample {
        transport_ms: ms(end - first),
        in_guest_ms: guest_ms(&stderr, "guest_cs")?,
        wall_ms: ms(end - start),
        idle: idle_share(&stderr)?,
        writer_ms: guest_ms(&stderr, "stream_cs")?,
    })
}

/// One stdout run.
struct Sample {
    transport_ms: f64,
    in_guest_ms: f64,
    wall_ms: f64,
    /// Share of the (V)M's CPU time that was idle while the stream ran.
    idle: f64,
    /// How long `head` took to write the stream, seen in the container.
    writer_ms: f64,
}

/// The idle share between the `stat0=` and `stat1=` lines (`/proc/stat`'s `cpu` line) of the
/// container's stderr: idle + iowait over all.
fn idle_share(stderr: &str) -> Result<f64> {
    let fields = |key: &str| -> Result<Vec<u64>> {
        let prefix = format!("{key}=cpu ");
        let line = stderr
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("no {key}= in the container's stderr: {stderr:?}"))?;
        Ok(line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect())
    };
    let (a, b) = (fields("stat0")?, fields("stat1")?);
    let delta: Vec<u64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| y.saturating_sub(*x))
        .collect();
    let total: u64 = delta.iter().sum();
    ensure!(
        delta.len() >= 5 && total > 0,
        "unreadable /proc/stat lines: {stderr:?}"
    );
    Ok((delta[3] + delta[4]) as f64 / total as f64)
}

/// One stdin run: (transport ms, in-guest ms).
fn stdin_once(ctrd: &Containerd, runtime: &str, id: &str, bytes: u64) -> Result<(f64, f64)> {
    let script = format!(
        "{UPTIME_CS}; cs a; head -c {bytes} /dev/zero | wc -c > /dev/null; cs b; \
         echo guest_cs=$((b - a)) >&2; echo ready; wc -c"
    );
    let mut child = ctr_run(
        ctrd,
        &["--rm", "--runtime", runtime, IMAGE, id, "sh", "-c", &script],
    )?;
    let mut stdin = child.stdin.take().context("piped stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("piped stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure!(line == "ready\n", "expected ready, got {line:?}");
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![b'x'; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            stdin.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    line.clear();
    out.read_line(&mut line)?;
    let end = Instant::now();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))?
        .context("write ctr's stdin")?;
    let stderr = finish(child, "stdin run")?;
    ensure!(
        line.trim() == bytes.to_string(),
        "wc -c counted {line:?}, {bytes} were sent: {stderr}"
    );
    Ok((ms(end - start), guest_ms(&stderr, "guest_cs")?))
}

fn measure(
    ctrd: &Containerd,
    runtime: &str,
    tag: &str,
    runs: usize,
    bytes: u64,
) -> Result<RuntimeFigures> {
    let mb = bytes as f64 / 1e6;
    let (mut out_t, mut out_g, mut out_r, mut out_w) = (vec![], vec![], vec![], vec![]);
    let (mut in_t, mut in_g, mut in_r) = (vec![], vec![], vec![]);
    let (mut out_idle, mut out_writer) = (vec![], vec![]);
    for i in 0..runs {
        let Sample {
            transport_ms: t,
            in_guest_ms: g,
            wall_ms: w,
            idle,
            writer_ms,
        } = stdout_once(ctrd, runtime, &format!("{tag}-out-{i}"), bytes)?;
        eprintln!(
            "{runtime} stdout: transport {t:.0} ms, in guest {g:.0} ms, ctr run {w:.0} ms, \
             guest idle {:.0}%, writer {writer_ms:.0} ms",
            idle * 100.0
        );
        out_writer.push(writer_ms);
        out_idle.push(idle);
        out_t.push(t);
        out_g.push(g);
        out_r.push(t / g.max(1.0));
        out_w.push(w);
        let (t, g) = stdin_once(ctrd, runtime, &format!("{tag}-in-{i}"), bytes)?;
        eprintln!("{runtime} stdin: transport {t:.0} ms, in guest {g:.0} ms");
        in_t.push(t);
        in_g.push(g);
        in_r.push(t / g.max(1.0));
    }
    let rate = |v: &[f64]| stats(v.iter().map(|t| mb / (t / 1000.0)).collect());
    Ok(RuntimeFigures {
        runtime: runtime.into(),
        stdout_mb_per_s: rate(&out_t),
        stdout_transport_ms: stats(out_t),
        stdout_in_guest_ms: stats(out_g),
        stdout_ratio: stats(out_r),
        stdout_ctr_run_wall_ms: stats(out_w),
        stdout_idle_share: stats(out_idle),
        stdout_writer_ms: stats(out_writer),
        stdin_mb_per_s: rate(&in_t),
        stdin_transport_ms: stats(in_t),
        stdin_in_guest_ms: stats(in_g),
        stdin_ratio: stats(in_r),
    })
}

/// Runs `runs` stdout and stdin transfers of `mib` MiB per runtime.
pub fn run(runs: usize, mib: u64) -> Result<Report> {
    ensure!(runs > 0 && mib > 0, "at least one run of at least 1 MiB");
    let ctrd = setup::containerd_with_busybox(NS)?;
    let bytes = mib << 20;
    // While working on one runtime: `MSB_BENCH_ONLY=microsandbox` (a part of the runtime name).
    let only = std::env::var("MSB_BENCH_ONLY").ok();
    Ok(Report {
        benchmark: "stdio",
        bytes,
        runs,
        backend_note: setup::backend_note(),
        runtimes: [
            ("io.microsandbox.v1", "msb"),
            ("io.containerd.runc.v2", "runc"),
        ]
        .into_iter()
        .filter(|(r, _)| only.as_ref().map_or(true, |o| r.contains(o.as_str())))
        .map(|(r, tag)| measure(&ctrd, r, tag, runs, bytes))
        .collect::<Result<_>>()?,
    })
}
