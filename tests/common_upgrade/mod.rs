//! The rolling upgrade on a live HA cluster (3 control planes, 2 workers, 2 load
//! balancers), run by e2e_ha on the cluster it built: v1.20.2 to the test mirror's second
//! label (the same code under another version, docs/testbed-versions.md). A 1 s prober
//! through the VIP runs for the whole sequence, and a Deployment with a
//! PodDisruptionBudget is probed through its Service from a node:
//! 1. `upgrade` killed (SIGKILL) while the second control-plane node is out;
//! 2. the next run resumes there (the first node is not done again); the third control
//!    plane is stopped (docker stop) while it runs: it halts naming it, the API up;
//! 3. with the machine back, the next run stops at a worker whose drain a
//!    PodDisruptionBudget blocks: named, the node schedulable;
//! 4. with the budget gone, the next run finishes: every static pod on the new tag,
//!    every kubelet at the new version, 3 etcd members, the snapshot in the state;
//! 5. a further run plans nothing;
//! 6. going back (`upgrade --to v1.20.2`, or `apply` of the file that still says
//!    v1.20.2) is refused.

use crate::common_podnet::kubectl;
use crate::support::{docker, kubeforge, Prober};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Std, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The second version the test mirror carries (scripts/k8s-mirror/build.sh).
pub const TARGET: &str = "v1.20.3-kf.0";
/// Its image tag (the same: no `+` in it).
pub const TARGET_TAG: &str = "v1.20.3-kf.0";

const WORKLOAD: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: kf-web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: kf-web}}
  template:
    metadata: {labels: {app: kf-web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: kf-web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: http
        image: k8s.gcr.io/etcd:3.4.13-0
        imagePullPolicy: Never
        command: [/usr/local/bin/etcd, --data-dir=/var/lib/etcd/data,
          --listen-client-urls=http://0.0.0.0:2379, --advertise-client-urls=http://127.0.0.1:2379,
          --listen-peer-urls=http://127.0.0.1:2380, --initial-advertise-peer-urls=http://127.0.0.1:2380,
          --initial-cluster=default=http://127.0.0.1:2380]
        readinessProbe:
          httpGet: {path: /version, port: 2379}
          periodSeconds: 1
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: kf-web, namespace: default}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: kf-web}}
---
apiVersion: v1
kind: Service
metadata: {name: kf-web, namespace: default}
spec:
  selector: {app: kf-web}
  ports: [{port: 2379, targetPort: 2379, protocol: TCP}]
";

/// A single pod whose budget allows no disruption: its node cannot be drained.
const BLOCKER: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: kf-solo, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: kf-solo}}
  template:
    metadata: {labels: {app: kf-solo}}
    spec:
      containers:
      - name: pause
        image: k8s.gcr.io/pause:3.2
        imagePullPolicy: Never
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: kf-solo, namespace: default}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: kf-solo}}
";

fn apply_manifest(dir: &Path, name: &str, text: &str) {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    let out = kubectl(dir, &["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_ready_replicas(dir: &Path, deployment: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = kubectl(
            dir,
            &[
                "get",
                "deployment",
                deployment,
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{deployment}: not {want} ready");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Requests made, and the failed ones (seconds since the start, what was answered).
type Served = (u32, Vec<(f64, String)>);

/// Once a second, from a control-plane machine: GET the workload's Service (a failed
/// connection is tried twice more, as a client would).
struct ServiceProber {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Served>>,
}

impl ServiceProber {
    fn start(machine: String, url: String) -> ServiceProber {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let (mut n, mut failed) = (0u32, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let out = docker(&[
                    "exec",
                    &machine,
                    "curl",
                    "-sS",
                    // A client retries a connection that does not open, as clients do:
                    // a request sent to a replica in the moment it is evicted (this
                    // workload has no preStop delay) is lost before kube-proxy drops its
                    // endpoint. An outage of the Service is not: it fails every try.
                    "--connect-timeout",
                    "2",
                    "--retry",
                    "2",
                    "--retry-connrefused",
                    "--max-time",
                    "9",
                    &format!("{url}/version"),
                ]);
                let body = String::from_utf8_lossy(&out.stdout).to_string();
                if !out.status.success() || !body.contains("etcdserver") {
                    failed.push((
                        t0.elapsed().as_secs_f64(),
                        format!("{body}{}", String::from_utf8_lossy(&out.stderr).trim()),
                    ));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (n, failed)
        });
        ServiceProber {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn upgrade(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["upgrade", "-f", "cluster.yaml", "--to", TARGET, "--yes"];
    args.extend_from_slice(extra);
    kubeforge(dir)
        .args(&args)
        .timeout(Duration::from_secs(1800))
        .output()
        .unwrap()
}

/// `upgrade` run in the background, its stderr collected by a thread.
fn spawn_upgrade(
    dir: &Path,
    extra: &[&str],
) -> (std::process::Child, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Std::new(assert_cmd::cargo::cargo_bin("kubeforge"))
        .current_dir(dir)
        .env("KUBEFORGE_STATE_KEY_FILE", dir.join("state.agekey"))
        .args(["upgrade", "-f", "cluster.yaml", "--to", TARGET, "--yes"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    (child, log)
}

fn node_field(dir: &Path, node: &str, path: &str) -> String {
    let out = kubectl(
        dir,
        &["get", "node", node, "-o", &format!("jsonpath={path}")],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// See the module documentation.
pub fn upgrade_scenarios(dir: &Path, name: &str, vip: &str) {
    let m = |role: &str| format!("{name}-{role}");
    apply_manifest(dir, "kf-web.yaml", WORKLOAD);
    wait_ready_replicas(dir, "kf-web", "2");
    let out = kubectl(
        dir,
        &[
            "get",
            "service",
            "kf-web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let web = format!(
        "http://{}:2379",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let prober = Prober::start(&format!("{vip}:6443"));
    // From cp-1, never stopped here (cp-3 is: a restarted machine's own kube-proxy rules
    // take a while to come back, which says nothing about the Service).
    let service = ServiceProber::start(m("cp-1"), web);
    let t0 = Instant::now();

    // 1. Killed while the second control-plane node is out of service.
    let (mut child, log) = spawn_upgrade(dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if node_field(dir, &m("cp-2"), "{.spec.unschedulable}") == "true" {
            std::thread::sleep(Duration::from_secs(3));
            child.kill().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "upgrade ended ({status}) before the second control plane was taken out:\n{}",
                log.join().unwrap().join("\n")
            );
        }
        assert!(Instant::now() < deadline, "cp-2 was never cordoned");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!child.wait().unwrap().success());
    let _ = log.join();
    let killed_at = t0.elapsed();
    assert_eq!(
        node_field(dir, &m("cp-1"), "{.status.nodeInfo.kubeletVersion}"),
        TARGET,
        "the first control plane was upgraded before the kill"
    );
    let out = kubeforge(dir)
        .args(["state", "unlock", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1b. Resumed at cp-2; a control plane (cp-3) stops while the run goes on: the run
    //     halts with cp-3 named, the API stays up. cp-3 is started again.
    let (mut child, log) = spawn_upgrade(dir, &["--drain-timeout", "20s"]);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if node_field(dir, &m("cp-2"), "{.status.nodeInfo.kubeletVersion}") == TARGET
            && node_field(dir, &m("cp-2"), "{.spec.unschedulable}") != "true"
        {
            docker(&["stop", "-t", "2", &m("cp-3")]);
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "upgrade ended ({status}) before cp-2 was done:\n{}",
                log.join().unwrap().join("\n")
            );
        }
        assert!(Instant::now() < deadline, "cp-2 was never upgraded");
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = child.wait().unwrap();
    let halted = log.join().unwrap().join("\n");
    assert!(!status.success(), "{halted}");
    assert!(
        halted.contains(&format!("{}: upgraded to {TARGET}", m("cp-2")))
            && halted.contains("error: ")
            && halted.contains(&m("cp-3")),
        "the run halts at cp-3 and names it:\n{halted}"
    );
    for l in halted
        .lines()
        .filter(|l| l.contains(": upgraded to ") || l.starts_with("error"))
    {
        eprintln!("  upgrade (cp-3 stopped): {}", l.trim());
    }
    docker(&["start", &m("cp-3")]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let etcd_healthy = |machine: &str| {
        let out = docker(&[
            "exec",
            machine,
            "curl",
            "-sS",
            "--max-time",
            "3",
            "--cacert",
            "/etc/kubernetes/pki/etcd/ca.crt",
            "--cert",
            "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
            "--key",
            "/etc/kubernetes/pki/etcd/healthcheck-client.key",
            "https://127.0.0.1:2379/health",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .replace(' ', "")
            .contains("\"health\":\"true\"")
    };
    while !(node_field(
        dir,
        &m("cp-3"),
        "{.status.conditions[?(@.type=='Ready')].status}",
    ) == "True"
        && etcd_healthy(&m("cp-3")))
    {
        assert!(Instant::now() < deadline, "cp-3 did not come back");
        std::thread::sleep(Duration::from_secs(3));
    }

    // 2. Resumed at cp-3; stopped by a budget that forbids draining a worker.
    apply_manifest(dir, "kf-solo.yaml", BLOCKER);
    wait_ready_replicas(dir, "kf-solo", "1");
    // Long enough for ordinary pods to terminate (Contour's certgen Job pod, which cannot
    // pull its image here, takes ~50 s), never enough for a pod whose budget forbids any
    // eviction.
    let out = upgrade(dir, &["--drain-timeout", "90s"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    for l in stderr
        .lines()
        .filter(|l| l.contains(": upgraded to ") || l.contains("already at"))
    {
        eprintln!("  upgrade (resumed run): {}", l.trim());
    }
    assert!(
        stderr.contains("PodDisruptionBudget") && stderr.contains("default/kf-solo-"),
        "the blocking budget's pod is named:\n{stderr}"
    );
    assert!(stderr.contains("uncordoned"), "{stderr}");
    for w in ["worker-1", "worker-2"] {
        assert_ne!(
            node_field(dir, &m(w), "{.spec.unschedulable}"),
            "true",
            "{w} is schedulable after the refused drain"
        );
    }
    for cp in ["cp-1", "cp-2", "cp-3"] {
        assert_eq!(
            node_field(dir, &m(cp), "{.status.nodeInfo.kubeletVersion}"),
            TARGET,
            "{cp}"
        );
    }

    // 3. The budget removed: the run finishes.
    let out = kubectl(dir, &["delete", "pdb", "kf-solo", "--wait=true"]);
    assert!(out.status.success());
    let t3 = Instant::now();
    let out = upgrade(dir, &["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let finish = t3.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes: Vec<String> = report["run"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["notes"].as_array().cloned().unwrap_or_default())
        .map(|n| n.as_str().unwrap_or_default().to_string())
        .collect();
    for n in &notes {
        eprintln!("  upgrade: {n}");
    }
    for cp in ["cp-1", "cp-2", "cp-3"] {
        assert!(
            notes
                .iter()
                .any(|n| n == &format!("{}: already at {TARGET}", m(cp))),
            "{cp} is not upgraded again: {notes:?}"
        );
    }
    for node in ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"] {
        assert_eq!(
            node_field(dir, &m(node), "{.status.nodeInfo.kubeletVersion}"),
            TARGET,
            "{node}"
        );
        assert_ne!(node_field(dir, &m(node), "{.spec.unschedulable}"), "true");
    }
    for cp in ["cp-1", "cp-2", "cp-3"] {
        for c in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let out = docker(&[
                "exec",
                &m(cp),
                "grep",
                "-h",
                "image:",
                &format!("/etc/kubernetes/manifests/{c}.yaml"),
            ]);
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(line.contains(&format!(":{TARGET_TAG}")), "{cp} {c}: {line}");
        }
        let out = docker(&[
            "exec",
            &m(cp),
            "sh",
            "-c",
            "ls -d /etc/kubernetes/tmp/kubeadm-backup-etcd-* 2>/dev/null | wc -l",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{cp}: kubeadm's etcd copies removed"
        );
    }
    let members = crate::support::etcd_member_list(&m("cp-1"));
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    let out = kubeforge(dir)
        .args(["state", "snapshots", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains(&format!("pre-upgrade-{TARGET_TAG}-")),
        "the snapshot taken before the upgrade is in the state: {listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 4. Nothing left to do.
    let out = upgrade(dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to upgrade"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 5. Going back is refused, by `upgrade` and by `apply` (the file still says
    //    v1.20.2), with nothing changed.
    let out = kubeforge(dir)
        .args(["upgrade", "-f", "cluster.yaml", "--to", "v1.20.2", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("downgrade is refused"), "{stderr}");
    let out = kubeforge(dir)
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lowering spec.kubernetesVersion is refused"),
        "{stderr}"
    );
    assert_eq!(
        node_field(dir, &m("cp-1"), "{.status.nodeInfo.kubeletVersion}"),
        TARGET
    );

    std::thread::sleep(Duration::from_secs(2));
    let probed = prober.finish();
    let (served, unserved) = service.finish();
    eprintln!(
        "upgrade: killed after {killed_at:?}, last run {finish:?}, whole sequence {:?}; \
prober through the VIP: {} requests, {} failed {:?}, /readyz not ok {} {:?}; \
the PDB-guarded Service: {served} requests, {} failed {:?}",
        t0.elapsed(),
        probed.requests,
        probed.failed.len(),
        probed.failed,
        probed.not_ready.len(),
        probed.not_ready,
        unserved.len(),
        unserved
    );
    assert!(
        probed.failed.is_empty(),
        "the API failed through the VIP: {:?}",
        probed.failed
    );
    assert!(
        unserved.is_empty(),
        "the PDB-guarded Service failed: {unserved:?}"
    );
}
