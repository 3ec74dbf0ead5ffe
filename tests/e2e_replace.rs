//! Disaster recovery on bare metal: a control-plane host is lost for good and replaced
//! by another host at a NEW address, by editing the static inventory. The hosts are real
//! systemd machines with sshd (made by the docker provider of a separate cluster file,
//! `--phases machines`); the cluster on them is a static-provider cluster with 3 control
//! planes, endpoint on the first one (external load balancer). The third machine is
//! destroyed (`docker rm -f`), the inventory names a fourth machine instead, and one
//! `apply` removes the lost host (its etcd member first: it is not healthy; its Node; the
//! state forgets it; it cannot be reset, said as a warning) and joins the new one, while
//! a 1 s prober asks the API through the endpoint.
//!
//! Needs the Docker engine, the node image and the mirror; fails, never skips, without.

mod support;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, ClusterGuard, Prober};

/// The machines' cluster (docker labels) and the static cluster's name.
const MACHINES: &str = "kf-swap-m";
const NAME: &str = "kf-swap";
const SUBNET: &str = "10.252.60";

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kubectl(args: &[&str]) -> std::process::Output {
    for m in ["cp-1", "cp-2"] {
        let mut full = vec![
            "exec".to_string(),
            format!("{MACHINES}-{m}"),
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

fn inventory(dir: &Path, hosts: &[(&str, &str)]) {
    let mut text = String::from("[kube_control_plane]\n");
    for (name, ip) in hosts {
        text.push_str(&format!("{name} ansible_host={ip}\n"));
    }
    std::fs::write(dir.join("hosts.ini"), text).unwrap();
}

#[test]
fn a_lost_control_plane_is_replaced_by_a_host_at_a_new_address() {
    require_testbed();
    let _guard = ClusterGuard::new(MACHINES);
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = (dir.path().join("machines"), dir.path().join("cluster"));
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(&c).unwrap();
    let key = dir.path().join("id_ed25519");
    let gen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    for d in [&m, &c] {
        ok(
            &kubeforge(d)
                .args(["state", "keygen", "--out", "state.agekey"])
                .output()
                .unwrap(),
            "state keygen",
        );
    }
    // Four machines with sshd and the cluster key: cp-1..3 at .10-.12, the spare at .20.
    std::fs::write(
        m.join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {{name: {MACHINES}}}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {{subnet: {SUBNET}.0/24}}
  nodePools:
    controlPlane: {{count: 3}}
    workers: {{count: 1}}
  ssh: {{keyFile: {key}}}
  loadBalancer: {{type: external, endpoint: '{SUBNET}.10:6443'}}
",
            key = key.display()
        ),
    )
    .unwrap();
    ok(
        &kubeforge(&m)
            .args([
                "apply",
                "-f",
                "cluster.yaml",
                "--yes",
                "--phases",
                "machines",
            ])
            .timeout(Duration::from_secs(300))
            .output()
            .unwrap(),
        "the machines",
    );
    // The bare-metal cluster on three of them.
    let first = format!("{SUBNET}.10");
    let second = format!("{SUBNET}.11");
    inventory(
        &c,
        &[
            ("sw-1", first.as_str()),
            ("sw-2", second.as_str()),
            ("sw-3", &format!("{SUBNET}.12")),
        ],
    );
    std::fs::write(
        c.join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {{name: {NAME}}}
spec:
  kubernetesVersion: v1.20.2
  provider:
    # The hosts are the docker provider's machines: system containers.
    static: {{inventory: hosts.ini, containerHosts: true}}
  ssh: {{user: root, keyFile: {key}}}
  loadBalancer: {{type: external, endpoint: '{first}:6443'}}
  artifacts: {{mirror: {mirror}}}
  kubeadm:
    skipPhases: [preflight, addon/coredns]
",
            key = key.display(),
            mirror = mirror()
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    ok(
        &kubeforge(&c)
            .args(["apply", "-f", "cluster.yaml", "--yes"])
            .timeout(Duration::from_secs(1200))
            .output()
            .unwrap(),
        "the static cluster",
    );
    eprintln!(
        "static 3-control-plane cluster on docker machines: {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    // sw-3's machine is lost for good; the inventory names the spare (a new address).
    let prober = Prober::start(&format!("{first}:6443"));
    let t0 = prober.destroy(&[format!("{MACHINES}-cp-3")]);
    inventory(
        &c,
        &[
            ("sw-1", first.as_str()),
            ("sw-2", second.as_str()),
            ("sw-4", &format!("{SUBNET}.20")),
        ],
    );
    let out = kubeforge(&c)
        .args(["plan", "-f", "cluster.yaml"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for want in [
        "host sw-3 (control-plane) is no longer in the cluster file",
        "remove etcd member",
        "delete the Node sw-3",
        "forget sw-3 in the state",
    ] {
        assert!(plan.contains(want), "missing {want:?} in:\n{plan}");
    }
    assert!(
        !plan.contains("delete the machine sw-3"),
        "a static host is not deleted: {plan}"
    );
    let out = kubeforge(&c)
        .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    let took = t0.elapsed();
    let probed = prober.finish();
    ok(&out, "the replacement");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "remove-nodes")
        .map(|p| p["notes"].to_string())
        .unwrap_or_default();
    assert!(
        notes.contains("warning: sw-3"),
        "the lost host could not be reset: {notes}"
    );
    assert!(notes.contains("removed etcd member"), "{notes}");

    // Three Ready control planes (sw-4 instead of sw-3), three started members, none at
    // the old address.
    let out = kubectl(&["get", "nodes", "-o", "json"]);
    let (ready, all) =
        kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        ready.contains(&"sw-4".to_string()) && ready.len() == 3,
        "{ready:?}"
    );
    let members = support::etcd_member_list(&format!("{MACHINES}-cp-1"));
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{members}");
    let text = members.to_string();
    assert!(
        text.contains(&format!("{SUBNET}.20:2380")) && !text.contains(&format!("{SUBNET}.12:2380")),
        "{text}"
    );
    eprintln!(
        "replacement at a new address: {:.0} s from the loss to 3 Ready control planes; prober through the endpoint: {} requests, {} failed {:?}",
        took.as_secs_f64(),
        probed.requests,
        probed.failed.len(),
        probed.failed
    );
    assert!(probed.requests > 10, "the prober ran");
    assert_eq!(
        probed.failed.len(),
        0,
        "API requests failed during the replacement"
    );
    // The file and the cluster agree.
    let out = kubeforge(&c)
        .args(["plan", "-f", "cluster.yaml", "--detailed-exitcode"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
