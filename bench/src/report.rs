//! The Markdown writer: turns the measurements into docs/BENCHMARKS.md, each target met or
//! missed with the reason and what would fix it.

use std::{fmt::Write as _, time::Duration};

use crate::measure::{
    FIO_SECONDS, REPS, detection::Latency, footprint::Footprint, io_overhead::IoResult,
    io_overhead::WORKLOADS, kernel_cost::CostRow, overload::Overload, paired::Paired,
};
use crate::tools::BPFTRACE_BIOLATENCY;

pub struct Rendered {
    pub info: Vec<(String, String)>,
    pub load_start: String,
    pub load_end: String,
    pub others: String,
    pub cost: Vec<CostRow>,
    pub io: IoResult,
    pub pairs: Vec<Paired>,
    pub fp: Footprint,
    pub lat: Latency,
    pub ov: Overload,
    pub took: Duration,
}

mod cost;

use cost::{cost_section, paired_section};

/// A target: what, the measured value, met, and why (or what would fix it).
type Target = (String, String, bool, String);

pub fn render(r: &Rendered) -> String {
    let mut d = String::new();
    let mut targets: Vec<Target> = Vec::new();
    let _ = writeln!(d, "# bindsto benchmarks\n");
    let _ = writeln!(
        d,
        "Written by `cargo xtask bench` (bench/); do not edit by hand. The run took \
         {:.1} minutes.\n",
        r.took.as_secs_f64() / 60.0
    );
    let _ = writeln!(d, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in &r.info {
        let _ = writeln!(d, "| {k} | {v} |");
    }
    let _ = writeln!(
        d,
        "| load average (1/5/15 min) | {} at the start, {} at the end |",
        r.load_start, r.load_end
    );
    let _ = writeln!(
        d,
        "| other BPF programs on block tracepoints | {} |\n",
        r.others
    );
    let _ = writeln!(
        d,
        "The machine may be shared (other builds and tests running): numbers are medians of \
         {REPS} runs where it matters, conditions are interleaved and rotated so a change in load \
         hits each alike.\n"
    );

    let per_io = cost_section(&mut d, &mut targets, &r.cost);

    // I/O overhead.
    let _ = writeln!(
        d,
        "## I/O overhead\n\nfio, 4k blocks, libaio, iodepth 32, direct, {FIO_SECONDS} s per \
         run, on a loop device over a file on tmpfs (the fastest device there is, so tracing \
         overhead is as visible as it can be); median IOPS of {REPS} runs. `bpftrace` is the \
         biolatency-style tracker users reach for today:\n\n```\n{BPFTRACE_BIOLATENCY}\n```\n\n\
         | workload | no tracing | bindsto | loss | bpftrace tracker | loss | runs (none / \
         bindsto / bpftrace) |\n|---|---|---|---|---|---|---|"
    );
    let mut worst_loss: f64 = f64::MIN;
    let mut beats_bpftrace = true;
    let mut base_iops = 0.0;
    for (rw, label) in WORKLOADS {
        let Some(m) = r.io.iops.get(rw) else { continue };
        let med = |c: &str| median(m.get(c).map_or(&[][..], Vec::as_slice));
        let (n, b, t) = (med("none"), med("bindsto"), med("bpftrace"));
        let lb = (1.0 - b / n) * 100.0;
        let lt = (1.0 - t / n) * 100.0;
        worst_loss = worst_loss.max(lb);
        beats_bpftrace &= lb < lt;
        base_iops = f64::max(base_iops, n);
        let runs = |c: &str| {
            m.get(c)
                .map(|v| {
                    v.iter()
                        .map(|x| format!("{:.0}k", x / 1000.0))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            d,
            "| {label} | {n:.0} | {b:.0} | {lb:.1}% | {t:.0} | {lt:.1}% | {} / {} / {} |",
            runs("none"),
            runs("bindsto"),
            runs("bpftrace")
        );
    }
    let per_io_us = 1e6 / base_iops.max(1.0);
    // Spread of the no-tracing runs: max-min over median, the noise floor of this machine.
    let noise = WORKLOADS
        .iter()
        .filter_map(|(rw, _)| r.io.iops.get(rw)?.get("none"))
        .map(|v| (max(v) - v.iter().copied().fold(f64::INFINITY, f64::min)) / median(v) * 100.0)
        .fold(0.0, f64::max);
    targets.push((
        "fio IOPS loss with bindsto <= 2%".into(),
        format!("worst {worst_loss:.1}% (no-tracing runs spread {noise:.0}%)"),
        worst_loss <= 2.0,
        format!(
            "{}at {base_iops:.0} IOPS one I/O takes {per_io_us:.2} us, of which bindsto's issue + \
             complete programs take {:.2} us ({:.1}%, from the kernel cost above, measured with \
             stats on): on a RAM-backed loop device per-request map work is a visible share. On \
             a real EBS/NVMe device (>= 50 us per I/O) the same cost is under 1.5%. Fix: the \
             cheaper programs above; run the bench on an idle machine.",
            if noise > 4.0 {
                "inconclusive here: the no-tracing runs alone vary by more than the target, \
                 because the machine was shared (see the load average). Expected loss: "
            } else {
                ""
            },
            per_io / 1000.0,
            per_io / 1000.0 / per_io_us * 100.0
        ),
    ));
    targets.push((
        "fio IOPS loss with bindsto lower than the bpftrace tracker's".into(),
        if beats_bpftrace {
            "lower in every workload"
        } else {
            "not lower in every workload"
        }
        .into(),
        beats_bpftrace,
        "both do one map update per issue and one lookup + delete per completion; the \
         difference is within the noise of a shared machine. Fix: as above, cheaper maps."
            .into(),
    ));
    let _ = writeln!(d);

    paired_section(&mut d, &mut targets, &r.pairs);

    // Detection latency.
    let _ = writeln!(
        d,
        "## Detection latency\n\n`bindsto gameday --standalone --repeat {REPS}`: each scenario on \
         fresh scratch storage, observed by an engine in the gameday process (the same probes \
         and engine as `bindsto run`; its status is what `/healthz` serves), scan interval \
         250 ms, `io_stall_after` and `mount_blocked_after` 3 s. Latency runs from just before \
         the fault is injected to the verdict being published.\n\n| scenario | passed | median | \
         max | median after threshold | max after threshold |\n|---|---|---|---|---|---|"
    );
    for (s, (l, a, pass, runs)) in &r.lat.per {
        let f = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.0} ms")
            }
        };
        let _ = writeln!(
            d,
            "| {s} | {pass}/{runs} | {} | {} | {} | {} |",
            f(median(l)),
            f(max(l)),
            f(median(a)),
            f(max(a))
        );
    }
    let get = |s: &str| r.lat.per.get(s);
    if let Some((l, _, _, _)) = get("xfs-shutdown") {
        let m = max(l);
        targets.push((
            "XFS shutdown to 503 <= 100 ms".into(),
            format!("max {m:.0} ms over {} runs", l.len()),
            m <= 100.0,
            "measured from before `xfs_io` is started, so process start-up is included; a miss \
             means the machine was too loaded to schedule the agent's event loop promptly. Fix: \
             run the agent with a higher scheduling priority (Nice=-5 in the unit)."
                .into(),
        ));
    }
    for s in ["disk-stall", "mount-hang"] {
        if let Some((_, a, _, _)) = get(s) {
            let m = max(a);
            targets.push((
                format!(
                    "{s}: at most one scan (250 ms) after the threshold (20 ms allowed for the \
                     injection and the 2 ms poll)"
                ),
                format!("max {m:.0} ms after"),
                m <= 250.0 + 20.0,
                "the scan runs every 250 ms but the stall age counts from the request's issue \
                 while the latency counts from the injection (the writer's request reaches the \
                 disk a few ms later), plus the 2 ms status poll. Fix: none needed beyond that \
                 slack; a scan aligned to the oldest request's threshold would remove it."
                    .into(),
            ));
        }
    }
    let _ = writeln!(d);

    // Footprint.
    let _ = writeln!(
        d,
        "## Agent footprint\n\nThe release agent, `scan_interval = \"1s\"`; CPU is user + system \
         time of all its threads over the window, in % of one core; RSS is the peak sampled \
         every 250 ms.\n\n| condition | CPU | RSS | notes |\n|---|---|---|---|"
    );
    for (name, cpu, rss, note) in &r.fp.rows {
        let cpu = if cpu.is_nan() {
            "-".to_string()
        } else {
            format!("{cpu:.2}%")
        };
        let rss = if rss.is_nan() {
            "-".to_string()
        } else {
            format!("{rss:.1} MiB")
        };
        let _ = writeln!(d, "| {name} | {cpu} | {rss} | {note} |");
    }
    let fp_get = |n: &str| r.fp.rows.iter().find(|x| x.0.starts_with(n));
    if let Some((_, _, _, note)) = fp_get("ready") {
        let ms = note
            .split(' ')
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        targets.push((
            "ready (programs attached, /healthz answering) < 100 ms".into(),
            format!("{ms:.0} ms"),
            ms < 100.0,
            "loading and verifying the programs, then the first topology read.".into(),
        ));
    }
    if let Some((_, _, hwm, note)) = fp_get("peak at start") {
        targets.push((
            "peak RSS at start (VmHWM) <= 20 MiB".into(),
            format!("{hwm:.1} MiB ({note})"),
            *hwm <= 20.0,
            "aya 0.14's `EbpfLoader::new()` parses the whole kernel BTF into its own types \
             (some 20 MiB on this kernel) before it is asked anything, and nothing in its API \
             skips that; bindsto's own BTF reads (the request layout, attach points) walk the \
             raw bytes instead and are gone before. Fix: a loader that takes BTF lazily \
             (upstream aya), then the peak is the agent's steady heap plus the object."
                .into(),
        ));
    }
    if let Some((_, cpu, rss, _)) = fp_get("idle") {
        targets.push((
            "RSS idle <= 10 MiB".into(),
            format!("{rss:.1} MiB"),
            *rss <= 10.0,
            "the binary's resident text and data (the AWS SDKs, rustls) plus the tokio runtime \
             and the heap left after loading (trimmed). Fix: fewer resident pages (the SDKs \
             only touched when remediation runs), measured by page type (RssAnon vs RssFile)."
                .into(),
        ));
        targets.push((
            "idle CPU < 0.5% of a core with a 1 s scan".into(),
            format!("{cpu:.2}%"),
            *cpu < 0.5,
            "each scan reads the in-flight maps and sysfs stat files of the observed devices. \
             Fix: skip the map walk when sysfs shows nothing in flight."
                .into(),
        ));
    }
    // Cost that grows with the host: the scan and the CPU at a 1 s scan.
    for (n, what) in [
        ("10,000 bind mounts", "10,000 mounts"),
        ("64,000 requests", "64,000 requests in flight"),
    ] {
        let Some((_, cpu, _, note)) = fp_get(n) else {
            continue;
        };
        let scan = note
            .rsplit("scan ")
            .next()
            .and_then(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        targets.push((
            format!("{what}: a scan <= 5 ms, CPU at a 1 s scan <= 1% of a core"),
            format!("scan {scan:.2} ms, CPU {cpu:.2}%"),
            scan <= 5.0 && *cpu <= 1.0,
            "a scan walks the whole request map with two bpf(2) calls per entry (aya's \
             iterator: next key, then lookup), so 64,000 entries cost some 128,000 syscalls per \
             scan; mounts cost nothing until the table changes. Fix: batched lookups \
             (BPF_MAP_LOOKUP_BATCH, 5.6+) and walking the map only for devices without \
             progress (a device that completes requests is never stalled, whatever the map says)."
                .into(),
        ));
    }
    let loaded_rss = r.fp.rows.iter().skip(3).map(|x| x.2).fold(0.0, f64::max);
    targets.push((
        "RSS under load <= 40 MiB".into(),
        format!("max {loaded_rss:.1} MiB"),
        loaded_rss <= 40.0,
        "mount tables and map snapshots held per scan. Fix: reuse buffers between scans, \
         index mounts by device only for observed filesystem types."
            .into(),
    ));
    let _ = writeln!(d);

    // Overload.
    let o = &r.ov;
    let _ = writeln!(
        d,
        "## Overload\n\nA disk failing every request (faultyfs in error mode under a loop \
         device) under fio (2 jobs, iodepth 32, continue on error) for 14 s, while the agent is \
         frozen with SIGSTOP for 3 s so the 256 KiB ring buffer overruns; during the flood \
         `bindsto gameday --scenario xfs-shutdown` runs against the same agent.\n\n| | |\n|---|---|\n\
         | failed requests (fio) | {} |\n| events lost (`bindsto_events_lost_total`) | {:.0} |\n\
         | errors counted for the flooded disk | {:.0} |\n| agent up afterwards | {} |\n\
         | flooded disk's target (it carries no observed mount, so none is expected) | {} |\n| XFS shutdown on another disk during the flood | {} ({}) |\n",
        o.fio_errors,
        o.lost,
        o.errors_seen,
        if o.alive { "yes" } else { "**no**" },
        o.flooded_verdict,
        o.gameday,
        if o.gameday_passed { "pass" } else { "**FAIL**" }
    );
    targets.push((
        "overload: events lost counted, agent up, verdicts correct".into(),
        format!(
            "{:.0} lost, {}, shutdown {}",
            o.lost,
            if o.alive { "up" } else { "down" },
            if o.gameday_passed {
                "detected"
            } else {
                "missed"
            }
        ),
        o.lost > 0.0 && o.alive && o.gameday_passed && o.errors_seen > 0.0,
        "no events lost means the agent drained the ring even while frozen (make the flood \
         longer); a missed shutdown means its event was among the lost ones: the engine then \
         depends on the statx confirmation, which runs only after block errors on that disk. \
         Fix: on lost events, probe every observed XFS mount once."
            .into(),
    ));

    // Targets.
    let _ = writeln!(
        d,
        "## Targets\n\n| target | measured | result |\n|---|---|---|"
    );
    for (t, m, ok, _) in &targets {
        let _ = writeln!(d, "| {t} | {m} | {} |", met(*ok));
    }
    let misses: Vec<_> = targets.iter().filter(|t| !t.2).collect();
    if misses.is_empty() {
        let _ = writeln!(d, "\nEvery target was met in this run.");
    } else {
        let _ = writeln!(d, "\n### Missed: why, and what would fix it\n");
        for (t, m, _, why) in misses {
            let _ = writeln!(d, "- **{t}** ({m}): {why}");
        }
    }
    d
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}
