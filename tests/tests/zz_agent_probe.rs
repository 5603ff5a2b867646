use std::time::Duration;
use bindsto_tests::*;

#[test]
fn agent_probe() {
    let _g = privileged();
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).unwrap();
    let xfs = XfsMount::new(&disk).unwrap();
    let cfg = format!("listen = \"0.0.0.0:9842\"\ndry_run = true\n[detect]\nscan_interval = \"1s\"\n\n[[watch]]\npath = \"{}\"\ncritical = true\n", xfs.path().display());
    let mut a = Agent::start(&cfg);
    eprintln!("healthz {:?}", a.healthz());
    eprintln!("status {}", a.status());
    eprintln!("metrics {} bytes", a.metrics().len());
    disk.set_mode(Mode::Error).unwrap();
    let mut w = BgProcess::sh(&format!("for i in 1 2 3; do echo x > {}/h$i; sync; done", xfs.path().display())).unwrap();
    w.wait_timeout(Duration::from_secs(30));
    let r = a.wait_for(Duration::from_secs(20), Duration::from_millis(250), |s| s["healthy"] == false);
    eprintln!("wait_for: {r:?}");
    eprintln!("healthz {:?}", a.healthz());
    eprintln!("log:\n{}", a.log());
}
