//! Crash and resume: `kubeforge apply` is killed with SIGKILL at several points of a
//! bootstrap (during prepare-hosts, in the middle of kubeadm init, right after it,
//! between the control-plane joins); each time the lock it leaves names its holder, is broken on purpose, and the
//! next apply carries on. The last run converges to a 3-master cluster without running
//! kubeadm init again.
//!
//! Needs the Docker engine, the node image and the mirror; fails, never skips, without.

mod support;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command as Std, Stdio};
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, ClusterGuard};

const NAME: &str = "kf-resume";

/// Start `apply` and SIGKILL it `delay` after the line announcing `phase` appears.
/// Returns the lines it printed.
fn apply_killed_at(dir: &Path, phase: &str, delay: Duration) -> Vec<String> {
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let mut child: Child = Std::new(bin)
        .current_dir(dir)
        .env("KUBEFORGE_STATE_KEY_FILE", dir.join("state.agekey"))
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        if line.starts_with("==> phase") && line.contains(&format!(" {phase}:")) {
            std::thread::sleep(delay);
            child.kill().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "apply never reached {phase}");
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "apply finished before it reached {phase}: {lines:#?}"
    );
    lines
}

/// After a SIGKILL the lock is still held: apply refuses, naming the holder, and an
/// operator breaks it on purpose.
fn break_the_lock(dir: &Path) {
    let out = kubeforge(dir)
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a held lock is exit 3: {stderr}"
    );
    assert!(
        stderr.contains("kubeforge apply"),
        "the holder's command is named: {stderr}"
    );
    let out = kubeforge(dir)
        .args(["state", "unlock", "--force", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn apply_killed_at_several_points_resumes_and_converges() {
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
    docker: {{subnet: 10.252.30.0/24}}
  nodePools:
    controlPlane: {{count: 3}}
  loadBalancer: {{placement: control-plane, port: 8443}}
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

    // 1. Killed while preparing hosts (machines exist, artifacts half pushed).
    apply_killed_at(dir.path(), "prepare-hosts", Duration::from_secs(3));
    break_the_lock(dir.path());
    // 2. Killed in the middle of `kubeadm init` (it takes 20-30 s here): the command
    //    runs on, detached from the lost SSH session, and the next run waits for it.
    let lines = apply_killed_at(dir.path(), "init-control-plane", Duration::from_secs(8));
    assert!(
        lines.iter().any(|l| l.contains("init-control-plane")),
        "{lines:#?}"
    );
    break_the_lock(dir.path());
    // 3. Killed right after kubeadm init finished.
    apply_killed_at(dir.path(), "join-control-plane", Duration::ZERO);
    break_the_lock(dir.path());
    // 4. Killed between the two control-plane joins.
    apply_killed_at(dir.path(), "join-control-plane", Duration::from_secs(25));
    break_the_lock(dir.path());

    // The next run converges and does not run kubeadm init again.
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let init = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "init-control-plane")
        .unwrap();
    assert_eq!(init["steps_run"], 0, "kubeadm init ran again: {init}");
    assert_eq!(init["steps_skipped"], 1);

    // Three control-plane nodes Ready, three etcd members.
    let cp1 = format!("{NAME}-cp-1");
    let nodes = docker(&[
        "exec",
        &cp1,
        "/usr/local/bin/kubectl",
        "--kubeconfig=/etc/kubernetes/admin.conf",
        "get",
        "nodes",
        "-o",
        "json",
    ]);
    let (ready, all) =
        kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&nodes.stdout)).unwrap();
    assert_eq!((ready.len(), all.len()), (3, 3), "{ready:?} of {all:?}");
    let members = support::etcd_member_list(&cp1);
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");

    // kubeadm init ran exactly once, though kubeforge was killed in its middle.
    let log = docker(&[
        "exec",
        &cp1,
        "cat",
        "/var/log/kubeforge/kubeforge-kubeadm-init.log",
    ]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert_eq!(
        log.matches("[init] Using Kubernetes version").count(),
        1,
        "one kubeadm init: {log}"
    );
    assert_eq!(
        log.matches("Your Kubernetes control-plane has initialized successfully")
            .count(),
        1,
        "{log}"
    );

    // The journal shows the interrupted attempts and the final ones.
    let out = kubeforge(dir.path())
        .args(["state", "show", "-f", "cluster.yaml", "-o", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("join-control-plane"), "{text}");
    // `kubeforge reset`: the plan first (without --yes and no terminal: nothing done),
    // then the cluster taken off its machines, which stay; `apply` builds it anew.
    let ca_before = docker(&["exec", &cp1, "cat", "/etc/kubernetes/pki/ca.crt"]).stdout;
    let out = kubeforge(dir.path())
        .args(["reset", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "no confirmation, no reset: {text}");
    assert!(
        text.contains("reset-hosts") && text.contains("pass --yes"),
        "the plan, then the refusal: {text}"
    );
    assert!(
        docker(&["exec", &cp1, "test", "-d", "/var/lib/etcd/member"])
            .status
            .success(),
        "nothing was reset without confirmation"
    );
    let t0 = std::time::Instant::now();
    let out = kubeforge(dir.path())
        .args(["reset", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(600))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("reset of 3 hosts: {:.0} s", t0.elapsed().as_secs_f64());
    for n in 1..=3 {
        let m = format!("{NAME}-cp-{n}");
        let (ok, left) = {
            let o = docker(&[
                "exec",
                &m,
                "sh",
                "-c",
                "ls -d /etc/kubernetes /var/lib/etcd /var/lib/kubelet /etc/cni/net.d /etc/kubeforge /var/lib/kubeforge 2>/dev/null; \
                 systemctl is-active kubelet haproxy keepalived kubeforge-etcd-snapshot.timer 2>/dev/null | grep -x active; \
                 iptables-save | grep -c -e KUBE -e kubeforge | grep -vx 0; \
                 ctr -n k8s.io task ls -q; true",
            ]);
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            )
        };
        assert!(ok && left.is_empty(), "{m} after reset still has: {left}");
    }
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply after reset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = docker(&[
        "exec",
        &cp1,
        "/usr/local/bin/kubectl",
        "--kubeconfig=/etc/kubernetes/admin.conf",
        "get",
        "nodes",
        "-o",
        "json",
    ]);
    let (ready, all) =
        kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&nodes.stdout)).unwrap();
    assert_eq!(
        (ready.len(), all.len()),
        (3, 3),
        "after reset and apply: {ready:?} of {all:?}"
    );
    let ca_after = docker(&["exec", &cp1, "cat", "/etc/kubernetes/pki/ca.crt"]).stdout;
    assert_ne!(ca_before, ca_after, "a new cluster, with a CA of its own");
}
