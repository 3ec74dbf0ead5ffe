//! End to end: `kubeforge apply` takes nothing to a highly-available Kubernetes v1.20.2
//! cluster on docker machines: 3 control-plane nodes (stacked etcd), 2 workers, 2
//! load balancers with a keepalived VIP, binaries and images from the local mirror
//! built from Debian's source package. Then: 5 Ready nodes through the VIP, 3 etcd
//! members, pods on the two workers reaching each other over the built-in pod network
//! (VXLAN between nodes: pod to pod, node to pod, node and pod to a ClusterIP Service
//! whose endpoints are on other nodes), a fast no-op re-run, the rolling upgrade to the
//! mirror's second version (tests/common_upgrade: killed and resumed, a blocking
//! PodDisruptionBudget, 0 failed requests through the VIP), and the API still
//! answering through the VIP with the first control-plane node stopped.
//!
//! Needs the Docker engine, the node image and the mirror (scripts/testbed/30, 40, 50);
//! fails, never skips, without them. kubelet changes three host-wide sysctls (the
//! machines share this kernel); they are restored at the end.

mod common_podnet;
mod common_upgrade;
mod support;
use common_podnet::kubectl;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, root, ClusterGuard};

const NAME: &str = "kf-e2e";
const SUBNET: &str = "10.252.20";

fn cluster_file(dir: &Path) {
    // One mirror with the Kubernetes artifacts and the pinned addon manifests
    // (scripts/testbed/50-k8s-mirror.sh and 60-addons.sh).
    let m = dir.join("mirror");
    std::fs::create_dir_all(&m).unwrap();
    // Every version the mirror carries (the second one is the upgrade's target), the
    // images and cri-tools.
    for entry in std::fs::read_dir(mirror()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            std::os::unix::fs::symlink(entry.path(), m.join(entry.file_name())).unwrap();
        }
    }
    std::os::unix::fs::symlink(support::addons_mirror().join("addons"), m.join("addons")).unwrap();
    // examples/local.yaml, renamed onto a subnet of its own, with the test mirror, plus
    // Contour (applied through the SSH tunnel to the API; its pods cannot pull images
    // here, so it is applied but not ready).
    let text = std::fs::read_to_string(root().join("examples/local.yaml"))
        .unwrap()
        .replace("name: local", &format!("name: {NAME}"))
        .replace("172.29.10.", &format!("{SUBNET}."))
        .replace("../.kubeforge/mirror", m.to_str().unwrap())
        + "  addons:\n    ingress:\n      controller: contour\n";
    assert!(
        text.contains(&format!("{SUBNET}.0/24")) && text.contains("mirror:"),
        "{text}"
    );
    std::fs::write(dir.join("cluster.yaml"), text).unwrap();
}

#[test]
fn apply_bootstraps_a_three_master_cluster_behind_a_vip() {
    require_testbed();
    let _guard = ClusterGuard::new(NAME);
    let dir = tempfile::tempdir().unwrap();
    cluster_file(dir.path());
    kubeforge(dir.path())
        .args(["state", "keygen", "--out", "state.agekey"])
        .assert()
        .success();

    let t0 = Instant::now();
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .timeout(Duration::from_secs(1800))
        .output()
        .unwrap();
    let bootstrap = t0.elapsed();
    assert!(
        out.status.success(),
        "apply failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in report["phases"].as_array().unwrap() {
        eprintln!(
            "  {:<20} {:>7.1}s",
            p["phase"].as_str().unwrap(),
            p["seconds"].as_f64().unwrap()
        );
        if p["phase"] != "addons" {
            for n in p["notes"].as_array().into_iter().flatten() {
                eprintln!("      note: {}", n.as_str().unwrap_or_default());
            }
        }
    }
    eprintln!("bootstrap: {bootstrap:?}");
    let addons_phase = |report: &serde_json::Value| -> Vec<String> {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == "addons")
            .expect("the addons phase ran")["notes"]
            .as_array()
            .map(|n| n.iter().map(|l| l.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let notes = addons_phase(&report);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("contour v1.19.1: ") && n.contains(" created, 0 changed")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n == "contour v1.19.1: not ready"),
        "{notes:?}"
    );

    // The admin kubeconfig comes out of the encrypted state and points at the VIP.
    let out = kubeforge(dir.path())
        .args(["kubeconfig", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = String::from_utf8(out.stdout).unwrap();
    assert!(
        conf.contains(&format!("server: https://{SUBNET}.254:6443")),
        "{conf}"
    );
    std::fs::write(dir.path().join("kubeconfig"), conf).unwrap();

    // 5 Ready nodes through the VIP.
    let out = kubectl(dir.path(), &["get", "nodes", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ready, all) =
        kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(ready.len(), 5, "ready: {ready:?} of {all:?}");

    // The workers pool's labels reached the nodes (kubelet --node-labels), and only them.
    let out = kubectl(
        dir.path(),
        &[
            "get",
            "nodes",
            "-l",
            "kubeforge.dev/pool=workers",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{NAME}-worker-1 {NAME}-worker-2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pods on different nodes reach each other (the built-in VXLAN pod network).
    common_podnet::check_pod_network(
        dir.path(),
        NAME,
        ["worker-1", "worker-2"],
        // Each node's /24 (control-plane nodes first): the workers are the 4th and 5th.
        ["10.244.3.", "10.244.4."],
        "cp-1",
    );

    // Contour's objects went in through the API (server-side apply, kubeforge's labels).
    let out = kubectl(
        dir.path(),
        &[
            "get",
            "service",
            "-n",
            "projectcontour",
            "envoy",
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envoy["spec"]["type"], "LoadBalancer");
    assert_eq!(
        envoy["metadata"]["labels"]["kubeforge.dev/addon"],
        "contour"
    );

    // etcd has 3 started members.
    let cp1 = format!("{NAME}-cp-1");
    let members = support::etcd_member_list(&cp1);
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");

    // A second run changes nothing and is quick.
    let t1 = Instant::now();
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .output()
        .unwrap();
    let rerun = t1.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in report["phases"].as_array().unwrap() {
        assert_eq!(p["files_sent"], 0, "nothing to send on a re-run: {p}");
        assert_eq!(p["steps_run"], 0, "nothing to run on a re-run: {p}");
    }
    // A no-op run writes at most one state generation (its journal).
    assert!(
        report["state_writes"].as_u64().unwrap() <= 1,
        "a no-op apply wrote {} state generations",
        report["state_writes"]
    );
    let notes = addons_phase(&report);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("contour v1.19.1: 0 created, 0 changed, ")),
        "the addons are applied again without change: {notes:?}"
    );
    eprintln!("re-run: {rerun:?}");

    // The cluster part of the facts (node list, etcd members, every member's health)
    // reads the same on a first control plane whose curl has no `-Z` (before 7.66: one
    // curl per request) and when curl's node list fails (kubectl asks): a shim in
    // /usr/local/bin, ahead of /usr/bin in the PATH of an SSH command, logs each call.
    let cluster_facts = || -> serde_json::Value {
        let out = kubeforge(dir.path())
            .args(["plan", "-f", "cluster.yaml", "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let facts = &plan["facts"];
        assert_eq!(facts["nodes"].as_array().map(Vec::len), Some(5), "{facts}");
        assert_eq!(
            facts["etcd"]["healthy"].as_array().map(Vec::len),
            Some(3),
            "{facts}"
        );
        serde_json::json!({ "nodes": facts["nodes"], "etcd": facts["etcd"] })
    };
    let with_curl = cluster_facts();
    for (shim, logged) in [
        (
            "for a in \"$@\"; do [ \"$a\" = -Z ] && { echo 'curl: option -Z: is unknown' >&2; exit 2; }; done; echo \"$*\" >> /run/kf-curl.log; exec /usr/bin/curl \"$@\"",
            ":2379/health -o ",
        ),
        (
            "n=0; for a in \"$@\"; do case $a in */api/v1/nodes) a=${a%nodes}no-such-list;; esac; [ $n = 0 ] && set --; n=1; set -- \"$@\" \"$a\"; done; echo \"$*\" >> /run/kf-curl.log; exec /usr/bin/curl \"$@\"",
            "/api/v1/no-such-list",
        ),
    ] {
        let out = docker(&[
            "exec",
            &cp1,
            "sh",
            "-c",
            &format!(
                "rm -f /run/kf-curl.log; printf '#!/bin/sh\\n%s\\n' '{}' > /usr/local/bin/curl && chmod 755 /usr/local/bin/curl",
                shim.replace('\'', "'\\''")
            ),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = cluster_facts();
        let log = docker(&["exec", &cp1, "cat", "/run/kf-curl.log"]);
        docker(&["exec", &cp1, "rm", "-f", "/usr/local/bin/curl", "/run/kf-curl.log"]);
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        assert!(log.contains(logged), "the shim was not used as meant: {log}");
        assert_eq!(got, with_curl, "with the shim: {shim}");
    }

    // The admin kubeconfig changed on the first control plane outside kubeforge: a run
    // that changes nothing else still notices (its digest differs from the state's)
    // and keeps the new one.
    let touched = "# touched outside kubeforge";
    let out = docker(&[
        "exec",
        &cp1,
        "sh",
        "-c",
        &format!("echo '{touched}' >> /etc/kubernetes/admin.conf"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .assert()
        .success();
    let out = kubeforge(dir.path())
        .args(["kubeconfig", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(touched),
        "the state keeps the admin kubeconfig as it was before the change on the host"
    );

    // The rolling upgrade on this live cluster (tests/common_upgrade).
    common_upgrade::upgrade_scenarios(dir.path(), NAME, &format!("{SUBNET}.254"));

    // Certificates renewed on the live cluster, one control plane at a time out of the
    // load balancers: every one of them later than before, the API up throughout.
    let expiries = |dir: &Path| -> std::collections::BTreeMap<String, String> {
        let out = kubeforge(dir)
            .args(["certs", "check", "-f", "cluster.yaml", "-o", "json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    format!(
                        "{}/{}",
                        c["node"].as_str().unwrap(),
                        c["name"].as_str().unwrap()
                    ),
                    c["expires"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = expiries(dir.path());
    assert!(
        before.keys().any(|k| k.ends_with("/apiserver.crt")),
        "{before:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let prober = support::Prober::start(&format!("{SUBNET}.254:6443"));
    let t0 = Instant::now();
    let out = kubeforge(dir.path())
        .args(["certs", "renew", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(900))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probed = prober.finish();
    let after = expiries(dir.path());
    for (k, v) in &before {
        let renewable = !k.ends_with("ca.crt") && !k.ends_with("/kubelet-client");
        if renewable {
            assert!(
                after.get(k).is_some_and(|a| a > v),
                "{k}: {v} -> {:?}",
                after.get(k)
            );
        } else {
            assert_eq!(
                after.get(k),
                Some(v),
                "{k} (a CA or the kubelet's own) is unchanged"
            );
        }
    }
    eprintln!(
        "certs renew: {:.0} s for 3 control planes; prober through the VIP: {} requests, {} failed {:?}",
        t0.elapsed().as_secs_f64(),
        probed.requests,
        probed.failed.len(),
        probed.failed
    );
    assert!(probed.requests > 10, "the prober ran");
    assert_eq!(
        probed.failed.len(),
        0,
        "API requests through the VIP failed during the renewal"
    );
    // The refreshed admin kubeconfig in the state still works.
    let out = kubectl(dir.path(), &["get", "--raw", "/readyz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stopping the load balancer that holds the VIP moves it; the API stays up.
    let holder = ["lb-1", "lb-2"]
        .iter()
        .map(|n| format!("{NAME}-{n}"))
        .find(|m| {
            let out = docker(&["exec", m, "ip", "-o", "-4", "addr", "show"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet {SUBNET}.254/"))
        })
        .expect("one load balancer holds the VIP");
    docker(&["stop", "-t", "1", &holder]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let out = kubectl(dir.path(), &["get", "--raw", "/readyz"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        moved,
        "the API did not answer through the VIP with {holder} stopped"
    );
    docker(&["start", &holder]);

    // With the first control-plane node stopped, the API still answers through the VIP.
    docker(&["stop", "-t", "2", &cp1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    // (etcd may elect a new leader and HAProxy marks the node down within seconds.)
    let answered = loop {
        let out = kubectl(dir.path(), &["get", "--raw", "/readyz"]);
        let nodes = kubectl(dir.path(), &["get", "nodes"]);
        if out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "ok"
            && nodes.status.success()
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        answered,
        "the API did not answer through the VIP with {cp1} stopped"
    );

    removals(dir.path(), &cp1);
}

/// The cluster file with other pool counts.
fn set_counts(dir: &Path, control_planes: u32, workers: u32) {
    let path = dir.join("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut pool = "";
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("controlPlane:") {
            pool = "cp";
        } else if t.starts_with("workers:") {
            pool = "w";
        } else if t.starts_with("loadBalancers:") {
            pool = "lb";
        }
        if t.starts_with("count:") && (pool == "cp" || pool == "w") {
            let n = if pool == "cp" {
                control_planes
            } else {
                workers
            };
            out.push_str(&format!("{}count: {n}\n", &line[..line.len() - t.len()]));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).unwrap();
}

fn node_names(dir: &Path) -> Vec<String> {
    let out = kubectl(dir, &["get", "nodes", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn machine_exists(name: &str) -> bool {
    docker(&["inspect", name]).status.success()
}

/// Nodes leave the cluster when the file no longer lists them: refused while it would
/// cost etcd its quorum (cp-1 stopped), then a worker, then two control planes, each
/// with the prober through the VIP.
fn removals(dir: &Path, cp1: &str) {
    let cp = |n: u32| format!("{NAME}-cp-{n}");
    let worker2 = format!("{NAME}-worker-2");
    // The cluster runs the upgrade's target now; the file says so too.
    let path = dir.join("cluster.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        yaml.replace(
            "kubernetesVersion: v1.20.2",
            &format!("kubernetesVersion: {}", common_upgrade::TARGET),
        ),
    )
    .unwrap();
    // cp-1 is stopped (above): cp-2 and cp-3 leaving would leave {cp-1 down, cp-3} after
    // the first removal. Refused, nothing changed.
    set_counts(dir, 1, 2);
    let out = kubeforge(dir)
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("would leave 2 etcd members of which 1 are healthy")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        support::etcd_member_list(&cp(2))["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(machine_exists(&cp(3)));

    // cp-1 back; wait until kubeforge sees its etcd member healthy.
    docker(&["start", cp1]);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = kubeforge(dir)
            .args(["plan", "-f", "cluster.yaml", "-o", "json"])
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap();
        let healthy = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["facts"]["etcd"]["healthy"].as_array().map(Vec::len));
        if healthy == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{cp1}'s etcd did not come back: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(5));
    }

    // A worker leaves: the plan says what happens to it, the apply does it.
    set_counts(dir, 3, 1);
    let out = kubeforge(dir)
        .args(["plan", "-f", "cluster.yaml"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Remove from the cluster (phase remove-nodes",
        &format!("kubectl drain {worker2} --ignore-daemonsets"),
        &format!("delete the Node {worker2}"),
        &format!("delete the machine {worker2}"),
        &format!("host {worker2} (worker) is no longer in the cluster file"),
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let leave = |what: &str| {
        let prober = support::Prober::start(&format!("{SUBNET}.254:6443"));
        let t0 = Instant::now();
        let out = kubeforge(dir)
            .args(["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])
            .timeout(Duration::from_secs(900))
            .output()
            .unwrap();
        let probed = prober.finish();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let notes = report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == "remove-nodes")
            .map(|p| p["notes"].clone())
            .unwrap_or_default();
        eprintln!(
            "{what}: apply {:.0} s; prober through the VIP: {} requests, {} failed {:?}, {} not ready; notes {notes}",
            t0.elapsed().as_secs_f64(),
            probed.requests,
            probed.failed.len(),
            probed.failed,
            probed.not_ready.len()
        );
        assert_eq!(
            probed.failed.len(),
            0,
            "API requests through the VIP failed while {what}"
        );
        notes
    };
    let notes = leave("a worker left");
    assert!(
        notes.to_string().contains(&format!("drained {worker2}")),
        "{notes}"
    );
    assert!(!node_names(dir).contains(&worker2));
    assert!(!machine_exists(&worker2), "{worker2} was deleted");

    // Two control planes leave (3 -> 1), one at a time, etcd's quorum checked before each;
    // the worker keeps its pod /24 (its pods keep their addresses and routes).
    let pod_subnet = |m: &str| {
        let out = docker(&[
            "exec",
            m,
            "grep",
            "subnet",
            "/etc/kubeforge/podnet/10-kubeforge.conflist.in",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let worker1 = format!("{NAME}-worker-1");
    let before = pod_subnet(&worker1);
    assert!(before.contains("10.244.3.0/24"), "{before}");
    set_counts(dir, 1, 1);
    let notes = leave("two control planes left");
    assert!(notes.to_string().contains("removed etcd member"), "{notes}");
    let nodes = node_names(dir);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(!machine_exists(&cp(2)) && !machine_exists(&cp(3)));
    assert_eq!(pod_subnet(&worker1), before);
    let members = support::etcd_member_list(cp1);
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    // The cluster file and the cluster agree again.
    let out = kubeforge(dir)
        .args(["plan", "-f", "cluster.yaml", "--detailed-exitcode"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
