//! Real systemd cannot run here (the VM tests' systemd guest proves the client against it).
//! These tests serve systemd's D-Bus interface from a small model over a real peer-to-peer
//! D-Bus connection, so the client's calls, arguments and state handling are exercised on the
//! wire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;

use super::*;

#[derive(Default)]
struct Model {
    /// unit -> ActiveState
    states: HashMap<String, String>,
    /// units that ignore StopUnit (only SIGKILL ends them)
    stubborn: Vec<String>,
    calls: Vec<String>,
}

type SharedModel = Arc<Mutex<Model>>;

struct FakeManager(SharedModel);

fn unit_path(name: &str) -> OwnedObjectPath {
    let escaped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("_{:02x}", c as u32)
            }
        })
        .collect();
    OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}")).unwrap()
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    fn stop_unit(&self, name: &str, mode: &str) -> OwnedObjectPath {
        let mut m = self.0.lock().unwrap();
        m.calls.push(format!("StopUnit {name} {mode}"));
        if !m.stubborn.iter().any(|u| u == name) {
            m.states.insert(name.into(), "deactivating".into());
            let shared = Arc::clone(&self.0);
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                shared
                    .lock()
                    .unwrap()
                    .states
                    .insert(name, "inactive".into());
            });
        }
        OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap()
    }
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) {
        let mut m = self.0.lock().unwrap();
        m.calls.push(format!("KillUnit {name} {whom} {signal}"));
        if signal == libc::SIGKILL {
            m.states.insert(name.into(), "failed".into());
        }
    }
    fn load_unit(&self, name: &str) -> OwnedObjectPath {
        self.0
            .lock()
            .unwrap()
            .calls
            .push(format!("LoadUnit {name}"));
        unit_path(name)
    }
    fn mask_unit_files(
        &self,
        files: Vec<String>,
        runtime: bool,
        force: bool,
    ) -> Vec<(String, String, String)> {
        self.0.lock().unwrap().calls.push(format!(
            "MaskUnitFiles {files:?} runtime={runtime} force={force}"
        ));
        Vec::new()
    }
    fn reload(&self) {
        self.0.lock().unwrap().calls.push("Reload".into());
    }
    #[zbus(signal)]
    async fn job_removed(e: &SignalEmitter<'_>, id: u32) -> zbus::Result<()>;
}

struct FakeUnit {
    name: String,
    model: SharedModel,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        let m = self.model.lock().unwrap();
        m.states
            .get(&self.name)
            .cloned()
            .unwrap_or_else(|| "inactive".into())
    }
    #[zbus(property)]
    fn load_state(&self) -> String {
        let m = self.model.lock().unwrap();
        if m.states.contains_key(&self.name) {
            "loaded"
        } else {
            "not-found"
        }
        .into()
    }
}

async fn connect(model: SharedModel, units: &[&str]) -> (zbus::Connection, zbus::Connection) {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let guid = zbus::Guid::generate();
    let mut server = zbus::connection::Builder::unix_stream(a)
        .server(guid)
        .unwrap()
        .p2p()
        .serve_at("/org/freedesktop/systemd1", FakeManager(Arc::clone(&model)))
        .unwrap();
    for u in units {
        server = server
            .serve_at(
                unit_path(u),
                FakeUnit {
                    name: (*u).into(),
                    model: Arc::clone(&model),
                },
            )
            .unwrap();
    }
    let client = zbus::connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::join!(server.build(), client);
    (server.unwrap(), client.unwrap())
}

fn model(running: &[&str], stubborn: &[&str]) -> SharedModel {
    let mut m = Model::default();
    for u in running {
        m.states.insert((*u).into(), "active".into());
    }
    m.stubborn = stubborn.iter().map(|s| (*s).into()).collect();
    Arc::new(Mutex::new(m))
}

#[tokio::test]
async fn stops_and_waits_for_inactive() {
    let m = model(&["ecs.service"], &[]);
    let (_server, client) = connect(Arc::clone(&m), &["ecs.service"]).await;
    let s = Systemd::with_connection(client);
    let r = s
        .stop("ecs.service", false, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.state, "inactive");
    assert!(!r.killed && !r.masked);
    let calls = m.lock().unwrap().calls.clone();
    assert_eq!(
        calls,
        vec!["LoadUnit ecs.service", "StopUnit ecs.service replace"]
    );
}

#[tokio::test]
async fn masks_before_stopping() {
    let m = model(&["ecs.service"], &[]);
    let (_server, client) = connect(Arc::clone(&m), &["ecs.service"]).await;
    let r = Systemd::with_connection(client)
        .stop("ecs.service", true, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.masked);
    let calls = m.lock().unwrap().calls.clone();
    assert_eq!(
        calls,
        vec![
            "LoadUnit ecs.service",
            "MaskUnitFiles [\"ecs.service\"] runtime=true force=true",
            "Reload",
            "StopUnit ecs.service replace",
        ]
    );
}

#[tokio::test]
async fn kills_a_unit_that_does_not_stop() {
    let m = model(&["ecs.service"], &["ecs.service"]);
    let (_server, client) = connect(Arc::clone(&m), &["ecs.service"]).await;
    let started = Instant::now();
    let r = Systemd::with_connection(client)
        .stop("ecs.service", false, Duration::from_millis(600))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(r.killed);
    assert_eq!(r.state, "failed");
    let calls = m.lock().unwrap().calls.clone();
    assert_eq!(
        calls.last().unwrap(),
        &format!("KillUnit ecs.service all {}", libc::SIGKILL)
    );
}

#[tokio::test]
async fn a_unit_that_does_not_exist_is_reported_not_stopped() {
    let m = model(&[], &[]);
    let (_server, client) = connect(Arc::clone(&m), &["nope.service"]).await;
    let r = Systemd::with_connection(client)
        .stop("nope.service", false, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(r.state, "not-found");
    assert!(
        !m.lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.starts_with("StopUnit"))
    );
}
