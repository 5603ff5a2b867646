//! NFS blackhole mounts (nfs-mount-hang, efs-parallel-mounts): NFSv4.1 mounts to a TCP
//! listener that accepts and never answers. Asserted through `/status`, then through the
//! incident the failed mount subsystem opens and its evidence bundle (`/incidents`).

use super::*;

/// `detect.mount_blocked_after` of [`Agent::start`]'s config.
const MOUNT_BLOCKED_AFTER: Duration = Duration::from_secs(3);
/// How long the incident and then its bundle may take to appear (TCG is slow).
const EVIDENCE_WAIT: Duration = Duration::from_secs(60);

/// Each `mount(2)` sleeps killable in `rpc_wait_bit_killable` (FAULTS.md, verified on 6.1),
/// invisible to the kernel's hung-task detector. The agent must list every one with source,
/// target and fstype after `mount_blocked_after` and fail the mount subsystem (critical by
/// default: `detect.mount_calls_critical`); the incident that opens must keep a bundle with
/// every blocked mount, its NFS/sunrpc kernel stack and the RPC tasks in flight.
pub fn nfs_mount_hang(n: usize) -> Result<String> {
    let _server = Bg::spawn("nc -ll -p 2049 -e /bin/sleep 600")?;
    let agent = Agent::start("")?;
    let mut mounts = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let dir = format!("/mnt/efs{i}");
        fs::create_dir_all(&dir)?;
        mounts.push(Bg::spawn(&format!(
            "mount -t nfs4 -o vers=4.1,port=2049,addr=127.0.0.1,clientaddr=127.0.0.1 127.0.0.1:/ {dir}"
        ))?);
    }
    // The incident opens, and its bundle is captured, once the first call has been blocked
    // for mount_blocked_after; the bundle holds the calls in flight at that moment. Every
    // mount inside mount(2) before then is what makes "all n listed" a fair demand.
    let inside = all_inside_mount(&mut mounts, t0, Duration::from_secs(30))?;
    if inside >= MOUNT_BLOCKED_AFTER {
        bail!(
            "the {n} mounts took {} ms to enter mount(2), not under mount_blocked_after (3 s): \
             the opening capture cannot hold them all",
            ms(inside)
        );
    }
    let (_, detail) = wait_for("every blocked NFS mount", Duration::from_secs(90), |s| {
        let calls = s["blocked_mount_calls"].as_array()?;
        let listed = (0..n)
            .filter(|i| {
                calls.iter().any(|c| {
                    c["fstype"] == "nfs4"
                        && c["source"] == "127.0.0.1:/"
                        && c["target"] == format!("/mnt/efs{i}").as_str()
                        && c["syscall"] == "mount"
                        && c["blocked_seconds"].as_f64().is_some_and(|b| b >= 3.0)
                })
            })
            .count();
        let sub = targets(s, "subsystem").find(|t| t["id"] == "mount")?;
        (listed == n
            && sub["state"] == "failed"
            && sub["critical"] == true
            && has_reason(sub, "mount_blocked"))
        .then(|| format!("{listed}/{n} listed, subsystem mount failed (mount_blocked)"))
    })?;
    let latency = t0.elapsed();
    if latency < MOUNT_BLOCKED_AFTER {
        bail!(
            "reported after {} ms, before mount_blocked_after (3 s)",
            ms(latency)
        );
    }
    let evidence = incident_evidence(n)?;
    // The mounts are still hanging: nothing returned on its own.
    if s_count_running(&mut mounts) != n {
        bail!("some mount(2) calls returned; the blackhole did not hold");
    }
    drop(mounts);
    drop(agent);
    Ok(format!(
        "latency_ms={} (threshold 3000 ms, scan 250 ms; all in mount(2) after {} ms): {detail}; \
         {evidence}",
        ms(latency),
        ms(inside)
    ))
}

fn s_count_running(bgs: &mut [Bg]) -> usize {
    let mut n = 0;
    for b in bgs.iter_mut() {
        if matches!(b.0.try_wait(), Ok(None)) {
            n += 1;
        }
    }
    n
}

/// Waits until every mount process sleeps inside mount(2) (`/proc/<pid>/syscall`; the shell
/// execs mount, so the PID is the mount's); returns how long after `t0` that was.
fn all_inside_mount(mounts: &mut [Bg], t0: Instant, limit: Duration) -> Result<Duration> {
    let nr = libc::SYS_mount.to_string();
    loop {
        let inside = mounts
            .iter()
            .filter(|b| {
                fs::read_to_string(format!("/proc/{}/syscall", b.0.id()))
                    .is_ok_and(|s| s.split_whitespace().next() == Some(nr.as_str()))
            })
            .count();
        if inside == mounts.len() {
            return Ok(t0.elapsed());
        }
        if s_count_running(mounts) != mounts.len() {
            bail!("a mount(2) call returned before all were blocked; the blackhole did not hold");
        }
        if t0.elapsed() > limit {
            bail!(
                "only {inside}/{} mounts inside mount(2) after {} s",
                mounts.len(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The incident on the mount subsystem and its bundle, checked; the summary for the verdict.
fn incident_evidence(n: usize) -> Result<String> {
    let t = Instant::now();
    let inc = incident_on("mount", EVIDENCE_WAIT)?;
    let id = inc["id"].as_str().context("an incident without an id")?;
    let (bundle, bytes) = bundle_of(id, EVIDENCE_WAIT)?;
    let waited = t.elapsed();
    match check_bundle(&bundle, id, n) {
        Ok(summary) => Ok(format!(
            "incident {id} ({}, opened {}): {summary}, {:.1} KiB, read {} ms after the status check",
            inc["state"].as_str().unwrap_or("?"),
            inc["opened"].as_str().unwrap_or("?"),
            bytes as f64 / 1024.0,
            ms(waited)
        )),
        Err(e) => {
            print_bundle(&bundle);
            Err(e.context(format!("incident {id}")))
        }
    }
}

/// Polls `GET /incidents` for an incident that names `target`.
fn incident_on(target: &str, limit: Duration) -> Result<Value> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < limit {
        match get("/incidents") {
            Ok((200, body)) => {
                let list: Value = serde_json::from_str(&body).unwrap_or_default();
                let found = list["incidents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| {
                        i["targets"]
                            .as_array()
                            .is_some_and(|t| t.iter().any(|t| t == target))
                    });
                if let Some(i) = found {
                    return Ok(i.clone());
                }
                last = body;
            }
            Ok((code, body)) => last = format!("{code}: {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "no incident on {target} within {} s; last /incidents: {}",
        limit.as_secs(),
        cut(&last, 2000)
    )
}

/// Polls `GET /incidents/<id>` until the bundle is there (it is written in the background
/// after the incident opened); returns it and its size.
fn bundle_of(id: &str, limit: Duration) -> Result<(Value, usize)> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < limit {
        match get(&format!("/incidents/{id}")) {
            Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                Ok(b) if b["captures"].as_array().is_some_and(|c| !c.is_empty()) => {
                    return Ok((b, body.len()));
                }
                Ok(_) => last = format!("a bundle without captures: {}", cut(&body, 2000)),
                Err(e) => last = format!("not JSON ({e}): {}", cut(&body, 2000)),
            },
            // A refused id stays refused.
            Ok((400, body)) => bail!("GET /incidents/{id}: 400: {body}"),
            Ok((code, body)) => last = format!("{code}: {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "no bundle for incident {id} within {} s; last answer: {last}",
        limit.as_secs()
    )
}

/// A frame of the NFS client or sunrpc (`rpc_wait_bit_killable`, `__rpc_execute`,
/// `nfs4_proc_exchange_id`, or anything in those modules).
fn nfs_frame(frame: &str) -> bool {
    let f = frame.to_ascii_lowercase();
    f.contains("nfs") || f.contains("rpc")
}

/// The newest capture must list every mount (`/mnt/efs0..n`), each thread with a kernel stack
/// in NFS or sunrpc, and the RPC tasks in flight or a count of none from attached probes.
fn check_bundle(b: &Value, id: &str, n: usize) -> Result<String> {
    if b["incident"] != id {
        bail!("the bundle is of incident {}", b["incident"]);
    }
    let captures = b["captures"].as_array().context("no captures")?;
    let c = captures.last().context("no captures")?;
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    if !arr(&c["targets"])
        .iter()
        .any(|t| t["kind"] == "subsystem" && t["id"] == "mount")
    {
        problems.push("the mount subsystem is not among the capture's targets".to_string());
    }
    let calls = arr(&c["inflight"]["mount_calls"]);
    let tasks = arr(&c["tasks"]);
    let (mut good, mut sources, mut sample) = (0, Vec::new(), None);
    for i in 0..n {
        let target = format!("/mnt/efs{i}");
        let Some(call) = calls.iter().find(|c| {
            c["target"] == target.as_str() && c["source"] == "127.0.0.1:/" && c["fstype"] == "nfs4"
        }) else {
            problems.push(format!("{target}: not among the mount calls"));
            continue;
        };
        let tid = &call["tid"];
        let Some(task) = tasks.iter().find(|t| t["tid"] == *tid) else {
            problems.push(format!("{target} (tid {tid}): not among the tasks"));
            continue;
        };
        let stack: Vec<&str> = task["stack"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if stack.is_empty() {
            problems.push(format!(
                "{target} (tid {tid}): empty stack ({})",
                task["stack_error"]
            ));
            continue;
        }
        if !stack.iter().any(|f| nfs_frame(f)) {
            problems.push(format!(
                "{target} (tid {tid}): no NFS/sunrpc frame in {}",
                stack.join(" < ")
            ));
            continue;
        }
        good += 1;
        let source = task["stack_source"].as_str().unwrap_or("?").to_string();
        if !sources.contains(&source) {
            sources.push(source);
        }
        sample.get_or_insert_with(|| format!("{target} (tid {tid}): {}", stack.join(" < ")));
    }
    if let Some(s) = &sample {
        println!("vmtest: bundle stack of {}", cut(s, 1500));
    }
    let rpc = rpc_summary(c).unwrap_or_else(|e| {
        problems.push(e);
        String::new()
    });
    if !problems.is_empty() {
        bail!(
            "bundle check failed ({good}/{n} mounts good, {} mount call(s), {} task(s)): {}",
            calls.len(),
            tasks.len(),
            problems.join("; ")
        );
    }
    let triggers: Vec<&str> = captures
        .iter()
        .filter_map(|c| c["trigger"].as_str())
        .collect();
    let cuts = arr(&c["truncated"]);
    let unreadable: Vec<String> = arr(&c["unreadable"])
        .iter()
        .map(|u| format!("{}: {}", u["source"], u["why"]))
        .collect();
    Ok(format!(
        "bundle: {good}/{n} mounts with nfs/sunrpc stacks (from {}), {rpc}, captures [{}], \
         capture {} ms{}{}",
        sources.join("+"),
        triggers.join(", "),
        c["capture_ms"],
        if cuts.is_empty() {
            String::new()
        } else {
            format!(", cut: {cuts:?}")
        },
        if unreadable.is_empty() {
            String::new()
        } else {
            format!(", unreadable: {}", unreadable.join("; "))
        },
    ))
}

/// The RPC tasks of a capture: each with its client, procedure and age; or none, which only
/// counts where the bundle says RPC tasks were tracked (`rpc_tracking`) and its maps were
/// readable.
fn rpc_summary(c: &Value) -> Result<String, String> {
    let inflight = &c["inflight"];
    let rpc = inflight["rpc_tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = inflight["rpc_total"].as_u64();
    let tracking = inflight["rpc_tracking"].as_str().unwrap_or_default();
    if rpc.is_empty() {
        let maps_unreadable = c["unreadable"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["source"] == "in-flight maps"));
        return match total {
            Some(0) if tracking == "tracked" && !maps_unreadable => {
                Ok("no RPC tasks in flight (rpc_total 0, rpc_tracking tracked)".into())
            }
            total => Err(format!(
                "no RPC tasks, and no proof there are none (rpc_total {total:?}, \
                 rpc_tracking {tracking:?}, maps unreadable: {maps_unreadable})"
            )),
        };
    }
    if tracking != "tracked" {
        return Err(format!("RPC tasks listed but rpc_tracking is {tracking:?}"));
    }
    let mut procs: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut clients = std::collections::BTreeSet::new();
    let mut oldest = 0.0f64;
    for t in &rpc {
        let (client, age) = (t["client_id"].as_u64(), t["age_seconds"].as_f64());
        let procedure = t["procedure"].as_str().filter(|p| !p.is_empty());
        let (Some(client), Some(age), Some(procedure)) = (client, age, procedure) else {
            return Err(format!("an RPC task without client, age or procedure: {t}"));
        };
        *procs.entry(procedure).or_default() += 1;
        clients.insert(client);
        oldest = oldest.max(age);
    }
    let procs: Vec<String> = procs.iter().map(|(p, k)| format!("{k}x {p}")).collect();
    Ok(format!(
        "{} RPC task(s) in flight (rpc_total {}) on {} client(s): {}, oldest {oldest:.1}s",
        rpc.len(),
        total.unwrap_or_default(),
        clients.len(),
        procs.join(", ")
    ))
}

/// The bundle on the console for a failed check: without the config, kernel log and mount
/// checks, stacks cut to 16 frames, at most 400 lines.
fn print_bundle(b: &Value) {
    let mut b = b.clone();
    b["config"] = "(left out)".into();
    for c in b["captures"].as_array_mut().into_iter().flatten() {
        let lines = c["kernel_log"].as_array().map_or(0, Vec::len);
        c["kernel_log"] = format!("({lines} lines left out)").into();
        c["mount_checks"] = "(left out)".into();
        for t in c["tasks"].as_array_mut().into_iter().flatten() {
            if let Some(s) = t["stack"].as_array_mut() {
                s.truncate(16);
            }
        }
    }
    let text = serde_json::to_string_pretty(&b).unwrap_or_default();
    println!("vmtest: ---- incident bundle (cut) ----");
    for l in text.lines().take(400) {
        println!("vmtest: | {l}");
    }
}

fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
