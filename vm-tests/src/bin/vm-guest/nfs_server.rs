//! nfs-server-gone: a real NFS server in the guest (the kernel's nfsd with Debian's
//! userspace), a share mounted and written to, then the server stopped and started again.

use super::*;

const NFS_MNT: &str = "/mnt/nfs";

fn nfs_stall_detail(s: &Value) -> Option<String> {
    let t = mount_target(s, NFS_MNT)?;
    t["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["signal"] == "nfs_stall")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
}

fn metric(name: &str) -> Option<f64> {
    let (_, body) = get("/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The kernel NFS server with Debian's nfs-kernel-server userspace, exporting a tmpfs on
/// loopback only.
struct NfsServer {
    mountd: Option<Bg>,
}

impl NfsServer {
    fn setup() -> Result<()> {
        sh(
            "mkdir -p /proc/fs/nfsd /srv/nfs /var/lib/nfs/v4recovery /run/rpc_pipefs \
            && mount -t nfsd nfsd /proc/fs/nfsd && mount -t tmpfs tmpfs /srv/nfs \
            && touch /var/lib/nfs/etab /var/lib/nfs/rmtab",
        )?;
        // fsid=0: the NFSv4 pseudo root, and what lets a tmpfs be exported at all.
        fs::write(
            "/etc/exports",
            "/srv/nfs 127.0.0.1(rw,sync,fsid=0,no_subtree_check,no_root_squash,insecure)\n",
        )?;
        sh("exportfs -ra")?;
        Ok(())
    }

    fn start() -> Result<Self> {
        // mountd answers the kernel's export-cache upcalls, which NFSv4 needs too.
        let mountd = Bg::spawn("rpc.mountd -F -N 2 -N 3 -u")?;
        // v4 only (no rpcbind in the guest); short grace and lease: TCG is slow enough.
        // 6.x kernels are built without NFSv2 and refuse to be told to turn it off.
        let args = "-d -p 2049 -N 3 -U -G 10 -L 10 4";
        sh(&format!("rpc.nfsd -N 2 {args} || rpc.nfsd {args}")).map_err(|e| {
            anyhow!(
                "{e:#}; dmesg: {}",
                sh("dmesg | tail -5").unwrap_or_default()
            )
        })?;
        Ok(Self {
            mountd: Some(mountd),
        })
    }

    /// The server goes away: nfsd threads stopped (its sockets close), mountd killed.
    fn stop(&mut self) -> Result<()> {
        sh("rpc.nfsd -d 0")?;
        self.mountd = None;
        Ok(())
    }
}

/// Unmounts the share forcibly if the scenario leaves early, so the final sync cannot hang on
/// dirty pages of a server that is gone.
struct ForceUmount;

impl Drop for ForceUmount {
    fn drop(&mut self) {
        let _ = sh(&format!("timeout 20 umount -f -l {NFS_MNT}"));
    }
}

/// A real NFS server in the guest, a share mounted with NFSv4.1 and written to, then the
/// server stopped: the agent must report `nfs_stall` on the mount from sunrpc tasks in flight,
/// with the sunrpc probes attached after the modules loaded (after the agent started), and
/// the mount must be healthy again once the server is back.
pub fn nfs_server_gone() -> Result<String> {
    let agent = Agent::start("")?;
    let s = status()?;
    let (state, why) = probe_state(&s, "sunrpc:rpc_task_begin")
        .context("/status lists no sunrpc:rpc_task_begin probe")?;
    if state != "missing" {
        bail!("sunrpc:rpc_task_begin is {state} before sunrpc loaded");
    }
    println!("vmtest: before modprobe: sunrpc:rpc_task_begin missing ({why})");
    sh("modprobe nfsd && modprobe nfsv4")?;
    let (attach, _) = wait_for(
        "sunrpc probes attached after the modules loaded",
        Duration::from_secs(60),
        |s| {
            let ok = ["sunrpc:rpc_task_begin", "sunrpc:rpc_task_end"]
                .iter()
                .all(|p| probe_state(s, p).is_some_and(|(st, _)| st == "attached"));
            ok.then(String::new)
        },
    )?;
    println!(
        "vmtest: sunrpc probes attached {} ms after modprobe",
        ms(attach)
    );
    // For the record: the layout the offsets were read from, and which end event was used.
    for ev in ["rpc_task_begin", "rpc_task_end", "rpc_task_complete"] {
        let f = fs::read_to_string(format!("/sys/kernel/tracing/events/sunrpc/{ev}/format"))
            .unwrap_or_default();
        let fields: Vec<&str> = f
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("field:") && l.contains("_id;"))
            .collect();
        println!("vmtest: {ev}: {}", fields.join(" "));
    }
    if let Ok(log) = fs::read_to_string("/tmp/agent.log") {
        for l in log
            .lines()
            .filter(|l| l.contains("attached probe=\"sunrpc"))
        {
            println!("vmtest: agent: {l}");
        }
    }

    NfsServer::setup()?;
    let mut server = NfsServer::start()?;
    fs::create_dir_all(NFS_MNT)?;
    let _umount = ForceUmount;
    sh(&format!(
        "timeout 120 mount -t nfs4 -o vers=4.1,addr=127.0.0.1,clientaddr=127.0.0.1 127.0.0.1:/ {NFS_MNT}"
    ))?;
    let _writer = Bg::spawn(&format!(
        "sh -c 'while true; do dd if=/dev/zero of={NFS_MNT}/data bs=64k count=4 conv=fsync; \
         sleep 0.2; done'"
    ))?;
    // In use and healthy: the writer's RPCs come and go, the share answers its probe. It must
    // stay healthy for longer than nfs_stall_after (5 s): no false positive on a live share.
    wait_for(
        "the NFS mount healthy and written",
        Duration::from_secs(120),
        |s| {
            let t = mount_target(s, NFS_MNT)?;
            let written = fs::metadata(format!("{NFS_MNT}/data")).is_ok_and(|m| m.len() > 0);
            (t["state"] == "healthy" && written).then(String::new)
        },
    )?;
    let healthy_from = Instant::now();
    while healthy_from.elapsed() < Duration::from_secs(12) {
        let s = status()?;
        if let Some(d) = nfs_stall_detail(&s) {
            bail!("nfs_stall on a live share: {d}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rpc_seen = metric("bindsto_rpc_tasks_inflight").unwrap_or(-1.0);

    let t0 = Instant::now();
    server.stop()?;
    let (_, detail) = wait_for(
        "nfs_stall from RPC tasks in flight",
        Duration::from_secs(120),
        |s| nfs_stall_detail(s).filter(|d| d.contains("RPC task in flight")),
    )?;
    let latency = t0.elapsed();
    let oldest = metric("bindsto_rpc_tasks_inflight_oldest_seconds").unwrap_or(0.0);
    if oldest < 5.0 {
        bail!("bindsto_rpc_tasks_inflight_oldest_seconds is {oldest} with nfs_stall raised");
    }
    if !detail.contains("127.0.0.1:/") {
        bail!("the detail does not name the server: {detail}");
    }

    // The server comes back: the stuck tasks finish and the mount is healthy again.
    let t1 = Instant::now();
    let _server = NfsServer::start()?;
    wait_for(
        "the mount healthy again after the server returned",
        Duration::from_secs(150),
        |s| {
            mount_target(s, NFS_MNT)
                .filter(|t| t["state"] == "healthy")
                .map(|_| String::new())
        },
    )?;
    let recovered = t1.elapsed();
    drop(_writer);
    drop(agent);
    Ok(format!(
        "latency_ms={} (nfs_stall_after 5000 ms, scan 250 ms; oldest RPC {oldest:.1}s): {detail}; \
         sunrpc attached {} ms after modprobe (in flight while healthy: {rpc_seen}); \
         healthy {} ms after the server returned",
        ms(latency),
        ms(attach),
        ms(recovered)
    ))
}
