//! Disaster recovery I on real machines and real kubeadm v1.20.2: a 3-master cluster
//! (1 load balancer with the VIP, 1 worker) loses machines for real (`docker rm -f`),
//! and `kubeforge recover` brings them back while a 1 s prober asks the API's /readyz
//! through the VIP the whole time. In sequence on one cluster: a control-plane machine;
//! another after the `kubeadm-certs` Secret is gone (a cluster older than 2 hours); the
//! FIRST control-plane machine; the worker; an orphaned etcd member; a repair killed
//! with SIGKILL and finished by the next run; and finally two of three control planes
//! lost: refused (quorum), nothing changed.
//!
//! Needs the Docker engine, the node image and the mirror; fails, never skips, without.

mod support;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Std, Stdio};
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, ClusterGuard, Prober};

const NAME: &str = "kf-recover";
const SUBNET: &str = "10.252.40";

fn machine(role: &str) -> String {
    format!("{NAME}-{role}")
}

fn kubectl(args: &[&str]) -> std::process::Output {
    // Any control plane that runs: the first one may be the machine just lost.
    for cp in ["cp-1", "cp-2", "cp-3"] {
        let mut full = vec![
            "exec".to_string(),
            machine(cp),
            "/usr/local/bin/kubectl".into(),
            "--kubeconfig=/etc/kubernetes/admin.conf".into(),
            "--request-timeout=10s".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = docker(&refs);
        if out.status.success() {
            return out;
        }
    }
    panic!("no control plane answers kubectl {args:?}");
}

/// Ready nodes and started etcd members, asked of any running control plane.
fn health() -> (Vec<String>, Vec<String>, usize) {
    let out = kubectl(&["get", "nodes", "-o", "json"]);
    let (ready, _) = kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&out.stdout)).unwrap();
    for cp in ["cp-1", "cp-2", "cp-3"] {
        let running = docker(&[
            "exec",
            &machine(cp),
            "test",
            "-f",
            "/etc/kubernetes/admin.conf",
        ]);
        if !running.status.success() {
            continue;
        }
        let m = support::etcd_member_list(&machine(cp));
        let members = m["members"].as_array().cloned().unwrap_or_default();
        let started: Vec<String> = members
            .iter()
            .filter_map(|m| {
                m["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(String::from)
            })
            .collect();
        return (ready, started, members.len());
    }
    panic!("no control plane runs etcd");
}

fn recover(dir: &Path) -> std::process::Output {
    kubeforge(dir)
        .args(["recover", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .timeout(Duration::from_secs(900))
        .output()
        .unwrap()
}

/// Lose `lost`, recover, and check 4 Ready nodes and 3 started etcd members of 3.
fn lose_and_recover(dir: &Path, lost: &[&str], what: &str) -> Duration {
    let t0 = Instant::now();
    for m in lost {
        docker(&["rm", "-f", "-v", &machine(m)]);
    }
    let out = kubeforge(dir)
        .args(["plan", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for m in lost {
        assert!(
            plan.contains(&format!("host {} ", machine(m)))
                && plan.contains("is missing at the provider"),
            "{what}: the plan names the lost machine: {plan}"
        );
    }
    assert!(!plan.contains("No changes"), "{plan}");
    let out = recover(dir);
    assert!(
        out.status.success(),
        "{what}: recover failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ready, started, members) = health();
    assert_eq!(ready.len(), 4, "{what}: Ready nodes {ready:?}");
    assert_eq!((started.len(), members), (3, 3), "{what}: etcd {started:?}");
    let took = t0.elapsed();
    eprintln!(
        "{what}: healthy again {:.0} s after the loss",
        took.as_secs_f64()
    );
    took
}

#[test]
fn lost_machines_come_back_with_one_command_and_the_api_stays_up() {
    require_testbed();
    let _guard = ClusterGuard::new(NAME);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {NAME}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {{subnet: {SUBNET}.0/24}}
  nodePools:
    controlPlane: {{count: 3}}
    workers: {{count: 1}}
    loadBalancers: {{count: 1}}
  artifacts: {{mirror: {}}}
  kubeadm: {{skipPhases: [preflight, addon/coredns]}}
",
            mirror()
        ),
    )
    .unwrap();
    kubeforge(dir.path())
        .args(["state", "keygen", "--out", "state.agekey"])
        .assert()
        .success();
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing to recover on a healthy cluster.
    let out = kubeforge(dir.path())
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to recover"));

    let prober = Prober::start(&format!("{SUBNET}.254:6443"));
    let mut figures = Vec::new();

    // 1. A control-plane machine is gone.
    figures.push(("cp-2", lose_and_recover(dir.path(), &["cp-2"], "cp-2 lost")));

    // 2. The same on a cluster older than 2 hours: kubeadm has deleted the uploaded
    //    control-plane certificates; recover uploads them again.
    kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "secret",
        "kubeadm-certs",
        "--ignore-not-found",
    ]);
    figures.push((
        "cp-3 (kubeadm-certs gone)",
        lose_and_recover(dir.path(), &["cp-3"], "cp-3 lost, kubeadm-certs gone"),
    ));

    // 3. The first control-plane machine (the one kubeadm init ran on).
    figures.push((
        "cp-1 (first)",
        lose_and_recover(dir.path(), &["cp-1"], "cp-1 lost"),
    ));

    // 4. The worker.
    figures.push((
        "worker-1",
        lose_and_recover(dir.path(), &["worker-1"], "worker lost"),
    ));

    // 5. An orphaned member: added by a join that never finished (no machine runs it).
    let add = docker(&[
        "exec",
        &machine("cp-2"),
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
        "https://127.0.0.1:2379/v3/cluster/member/add",
        "-d",
        &format!("{{\"peerURLs\":[\"https://{SUBNET}.99:2380\"]}}"),
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert_eq!(health().2, 4, "the orphan is a member");
    let out = recover(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"].to_string().contains("never started"),
        "{report}"
    );
    assert_eq!(health().2, 3, "the orphan was removed in one run");

    // 6. kubeforge killed (SIGKILL) in the middle of a repair: the next run finishes it.
    docker(&["rm", "-f", "-v", &machine("cp-2")]);
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let mut child = Std::new(bin)
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", dir.path().join("state.agekey"))
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.starts_with("==> phase") && line.contains(" join-control-plane:") {
            std::thread::sleep(Duration::from_secs(6));
            child.kill().unwrap();
            break;
        }
    }
    assert!(!child.wait().unwrap().success());
    // The killed holder was a process on this host that no longer exists: `state
    // unlock` breaks its lock without --force.
    let out = kubeforge(dir.path())
        .args(["state", "unlock", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = recover(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ready, started, members) = health();
    assert_eq!((ready.len(), started.len(), members), (4, 3, 3));

    std::thread::sleep(Duration::from_secs(3));
    let probed = prober.finish();
    let requests = probed.requests;
    eprintln!(
        "prober through the VIP from the first loss to the end: {requests} requests, {} failed {:?}; /readyz not ok {} times {:?}",
        probed.failed.len(),
        probed.failed,
        probed.not_ready.len(),
        probed.not_ready
    );
    let failed = probed.failed;
    for (what, took) in &figures {
        eprintln!(
            "recovery figure: {what}: {:.0} s from loss to healthy",
            took.as_secs_f64()
        );
    }
    assert!(requests > 60, "the prober ran: {requests}");
    assert_eq!(
        failed.len(),
        0,
        "API requests through the VIP failed while machines were lost and recovered"
    );

    // 7. Two of three control planes lost: quorum is gone; recover refuses, points to a
    //    restore, and changes nothing (no machine is made anew).
    docker(&["rm", "-f", "-v", &machine("cp-2")]);
    docker(&["rm", "-f", "-v", &machine("cp-3")]);
    let out = kubeforge(dir.path())
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("quorum") && stderr.contains("Restore"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    let ps = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let names = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !names.contains(&machine("cp-2")) && !names.contains(&machine("cp-3")),
        "{names}"
    );
}
