//! Shared by the tests that run `kubeforge apply` on docker machines.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command as Std;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn docker(args: &[&str]) -> std::process::Output {
    Std::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is installed (scripts/testbed/30-docker.sh)")
}

/// The Docker engine and the node image are required: fail with what provides them.
pub fn require_testbed() {
    let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        info.status.success(),
        "the Docker engine is not running: run scripts/testbed/30-docker.sh\n{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let tag = kubeforge::provider::image::node_image_tag();
    assert!(
        docker(&["image", "inspect", &tag]).status.success(),
        "the node image {tag} is missing: run scripts/testbed/40-node-image.sh"
    );
}

/// Remove a test cluster's machines, volumes and network.
pub fn cleanup(cluster: &str) {
    let filter = format!("label=dev.kubeforge.cluster={cluster}");
    let ids = docker(&["ps", "-aq", "--filter", &filter]);
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        docker(&["rm", "-f", "-v", id]);
    }
    let vols = docker(&["volume", "ls", "-q", "--filter", &filter]);
    for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
        docker(&["volume", "rm", "-f", v]);
    }
    docker(&["network", "rm", cluster]);
}

/// The binary, in `dir`, with the state key `dir/state.agekey`.
pub fn kubeforge(dir: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("kubeforge").unwrap();
    c.current_dir(dir)
        .env("KUBEFORGE_STATE_KEY_FILE", dir.join("state.agekey"))
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env_remove("KUBEFORGE_STATE_KEY");
    c
}

pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Kubernetes v1.20.2 mirror: $KUBEFORGE_K8S_MIRROR or the test bed's.
pub fn mirror() -> String {
    if let Ok(m) = std::env::var("KUBEFORGE_K8S_MIRROR") {
        return m;
    }
    let out = Std::new("bash")
        .arg(root().join("scripts/k8s-mirror/build.sh"))
        .arg("--print-dir")
        .output()
        .unwrap();
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&dir).join("v1.20.2").is_dir(),
        "the Kubernetes mirror is missing: run scripts/testbed/50-k8s-mirror.sh ({dir})"
    );
    dir
}

/// The addons mirror made by scripts/testbed/60-addons.sh: the pinned upstream
/// manifests under `addons/<addon>/<version>/`.
pub fn addons_mirror() -> std::path::PathBuf {
    let out = Std::new("bash")
        .arg(root().join("scripts/testbed/60-addons.sh"))
        .arg("--print-dir")
        .output()
        .unwrap();
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("addons/metallb/v0.16.1/metallb-native.yaml")
            .is_file(),
        "the addons mirror is missing: run scripts/testbed/60-addons.sh ({})",
        dir.display()
    );
    dir
}

/// Removes a test cluster and puts back the three host-wide sysctls kubelet changes
/// (the machines share this kernel), when dropped.
pub struct ClusterGuard {
    cluster: &'static str,
    sysctls: Vec<(String, String)>,
}

impl ClusterGuard {
    pub fn new(cluster: &'static str) -> ClusterGuard {
        cleanup(cluster);
        ClusterGuard {
            cluster,
            sysctls: [
                "vm/overcommit_memory",
                "kernel/panic",
                "kernel/panic_on_oops",
            ]
            .iter()
            .map(|k| {
                let p = format!("/proc/sys/{k}");
                (p.clone(), std::fs::read_to_string(&p).unwrap_or_default())
            })
            .collect(),
        }
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        cleanup(self.cluster);
        for (p, v) in &self.sysctls {
            if !v.is_empty() {
                let _ = std::fs::write(p, v);
            }
        }
    }
}

/// etcd's member list, asked of the etcd on `machine` with its health-check client
/// certificate (the JSON of /v3/cluster/member/list).
pub fn etcd_member_list(machine: &str) -> serde_json::Value {
    let out = docker(&[
        "exec",
        machine,
        "curl",
        "-sS",
        "--cacert",
        "/etc/kubernetes/pki/etcd/ca.crt",
        "--cert",
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        "--key",
        "/etc/kubernetes/pki/etcd/healthcheck-client.key",
        "-X",
        "POST",
        "https://127.0.0.1:2379/v3/cluster/member/list",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "etcd on {machine} did not answer with JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Once a second until stopped, through the VIP: GET /version (does the API answer at
/// all) and GET /readyz (is the answering apiserver ready, etcd included). Records the
/// seconds and the answer of every request that failed.
pub struct Prober {
    started: Instant,
    stop: Arc<AtomicBool>,
    rounds: Arc<std::sync::atomic::AtomicUsize>,
    handle: Option<std::thread::JoinHandle<Probed>>,
}

#[derive(Debug, Default)]
pub struct Probed {
    pub requests: u32,
    /// /version did not answer (the API was unreachable through the VIP).
    pub failed: Vec<(f64, String)>,
    /// /readyz answered something else than ok (e.g. etcd electing a leader).
    pub not_ready: Vec<(f64, String)>,
}

fn probe_get(endpoint: &str, path: &str) -> Result<String, String> {
    let out = Std::new("curl")
        .args(["-sSk", "--max-time", "3"])
        .arg(format!("https://{endpoint}{path}"))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Prober {
    /// Start probing `endpoint` (`host:port`, the VIP).
    pub fn start(endpoint: &str) -> Prober {
        let endpoint = endpoint.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = rounds.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let t0 = started;
            let mut p = Probed::default();
            while !flag.load(Ordering::Relaxed) {
                p.requests += 1;
                let at = t0.elapsed().as_secs_f64();
                match probe_get(&endpoint, "/version") {
                    Ok(body) if body.contains("gitVersion") => {}
                    Ok(body) => p.failed.push((at, body)),
                    Err(e) => p.failed.push((at, e)),
                }
                match probe_get(&endpoint, "/readyz") {
                    Ok(body) if body == "ok" => {}
                    Ok(body) => p.not_ready.push((at, body)),
                    Err(e) => p.not_ready.push((at, e)),
                }
                done.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
            p
        });
        Prober {
            started,
            stop,
            rounds,
            handle: Some(handle),
        }
    }

    /// Wait until a round of requests has ended (at most 10 s), and return the prober's
    /// clock then (the seconds its failures are recorded in). The prober now sleeps 1 s:
    /// a machine destroyed at once is destroyed between two rounds. A request in flight
    /// through HAProxy to a machine at the instant it is destroyed breaks with it
    /// whatever the tool does (in TCP mode HAProxy cannot retry an established
    /// connection; CI once saw `SSL_connect: SSL_ERROR_SYSCALL` in the second a control
    /// plane was removed). Every test that destroys a machine under a prober calls this
    /// (through `destroy`), so that the prober counts what the tool did after the loss.
    fn between_rounds(&self) -> f64 {
        let before = self.rounds.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.rounds.load(Ordering::Relaxed) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.started.elapsed().as_secs_f64()
    }

    /// Destroy `machines` (`docker rm -f -v`, volumes too) between two rounds, print the
    /// prober's second of it, and return the instant the first removal began (a loss's
    /// clock starts there, not while waiting for the round).
    pub fn destroy<S: AsRef<str>>(&self, machines: &[S]) -> Instant {
        let at = self.between_rounds();
        let lost = Instant::now();
        for m in machines {
            eprintln!("{} destroyed at {at:.1} s of the prober", m.as_ref());
            docker(&["rm", "-f", "-v", m.as_ref()]);
        }
        lost
    }

    pub fn finish(mut self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}
