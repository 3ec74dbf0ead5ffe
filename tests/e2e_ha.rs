//! End to end: `kubeforge apply` takes nothing to a highly-available Kubernetes v1.20.2
//! cluster on docker machines: 3 control-plane nodes (stacked etcd), 2 workers, 2
//! load balancers with a keepalived VIP, binaries and images from the local mirror
//! built from Debian's source package. Then: 5 Ready nodes through the VIP, 3 etcd
//! members, pods on the two workers reaching each other over the built-in pod network
//! (VXLAN between nodes: pod to pod, node to pod, node and pod to a ClusterIP Service
//! whose endpoints are on other nodes), a fast no-op re-run, and the API still
//! answering through the VIP with the first control-plane node stopped.
//!
//! Needs the Docker engine, the node image and the mirror (scripts/testbed/30, 40, 50);
//! fails, never skips, without them. kubelet changes three host-wide sysctls (the
//! machines share this kernel); they are restored at the end.

mod support;
use std::path::Path;
use std::process::Command as Std;
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, root, ClusterGuard};

const NAME: &str = "kf-e2e";
const SUBNET: &str = "10.252.20";

fn cluster_file(dir: &Path) {
    // One mirror with the Kubernetes artifacts and the pinned addon manifests
    // (scripts/testbed/50-k8s-mirror.sh and 60-addons.sh).
    let m = dir.join("mirror");
    std::fs::create_dir_all(&m).unwrap();
    for entry in ["v1.20.2", "images"] {
        std::os::unix::fs::symlink(Path::new(&mirror()).join(entry), m.join(entry)).unwrap();
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

fn kubectl(dir: &Path, args: &[&str]) -> std::process::Output {
    let bin = Path::new(&mirror()).join("v1.20.2/bin/linux/amd64/kubectl");
    Std::new(bin)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .unwrap()
}

/// `sh -c script` inside a machine: (succeeded, stdout + stderr).
fn in_machine(machine: &str, script: &str) -> (bool, String) {
    let out = docker(&["exec", machine, "sh", "-c", script]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Like `in_machine`, but the command must succeed; returns its output.
fn in_machine_ok(machine: &str, script: &str) -> String {
    let (ok, out) = in_machine(machine, script);
    assert!(ok, "{machine}: `{script}` failed: {out}");
    out
}

/// Pods on the two workers serving HTTP (Debian's etcd in the mirror's etcd image: the
/// only server image a node has offline), and a ClusterIP Service over both.
fn podnet_manifest() -> String {
    let mut m = String::new();
    for w in ["worker-1", "worker-2"] {
        m.push_str(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: podnet-{w}
  namespace: default
  labels: {{app: kf-podnet}}
spec:
  nodeName: {NAME}-{w}
  containers:
  - name: http
    image: k8s.gcr.io/etcd:3.4.13-0
    imagePullPolicy: Never
    command: [/usr/local/bin/etcd, --data-dir=/var/lib/etcd/data,
      --listen-client-urls=http://0.0.0.0:2379, --advertise-client-urls=http://127.0.0.1:2379,
      --listen-peer-urls=http://127.0.0.1:2380, --initial-advertise-peer-urls=http://127.0.0.1:2380,
      --initial-cluster=default=http://127.0.0.1:2380]
    ports: [{{containerPort: 2379, protocol: TCP}}]
    readinessProbe:
      httpGet: {{path: /version, port: 2379}}
      periodSeconds: 2
---
"
        ));
    }
    m.push_str(
        "apiVersion: v1
kind: Service
metadata:
  name: kf-podnet
  namespace: default
spec:
  type: ClusterIP
  selector: {app: kf-podnet}
  ports: [{port: 2379, targetPort: 2379, protocol: TCP}]
",
    );
    m
}

/// The network namespace of the pod with address `ip` on `machine` (containerd's CNI
/// namespaces are in /run/netns).
fn pod_netns(machine: &str, ip: &str) -> String {
    let ns = in_machine_ok(
        machine,
        &format!(
            "for n in $(ip netns list | awk '{{print $1}}'); do \
               ip -n \"$n\" -o -4 addr show | grep -q \" inet {ip}/\" && echo \"$n\"; done; true"
        ),
    );
    let ns = ns.trim().to_string();
    assert!(
        !ns.is_empty() && !ns.contains('\n'),
        "{machine}: no single netns holds {ip}: {ns:?}"
    );
    ns
}

/// Pod to pod and node to pod across nodes, and to a ClusterIP Service, over the
/// built-in pod network.
fn check_pod_network(dir: &Path) {
    let manifest = dir.join("podnet.yaml");
    std::fs::write(&manifest, podnet_manifest()).unwrap();
    let out = kubectl(dir, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    let pods: Vec<(String, String)> = loop {
        let out = kubectl(dir, &["get", "pods", "-l", "app=kf-podnet", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready: Vec<(String, String)> = v["items"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| {
                (
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if ready.len() == 2 {
            break ready;
        }
        if Instant::now() > deadline {
            let wide = kubectl(dir, &["get", "pods", "-o", "wide"]);
            let desc = kubectl(dir, &["describe", "pods", "-l", "app=kf-podnet"]);
            panic!(
                "the pod network's test pods are not Ready:\n{}\n{}",
                String::from_utf8_lossy(&wide.stdout),
                String::from_utf8_lossy(&desc.stdout)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("pod network: pods Ready in {:?}: {pods:?}", t.elapsed());
    let ip_on = |w: &str| -> String {
        pods.iter()
            .find(|(n, _)| n == &format!("{NAME}-{w}"))
            .unwrap_or_else(|| panic!("no pod on {w}: {pods:?}"))
            .1
            .clone()
    };
    let (w1, w2) = (format!("{NAME}-worker-1"), format!("{NAME}-worker-2"));
    let (ip1, ip2) = (ip_on("worker-1"), ip_on("worker-2"));
    // Each node's /24 (control-plane nodes first): worker-1 is the 4th node, worker-2 the 5th.
    assert!(ip1.starts_with("10.244.3."), "{ip1}");
    assert!(ip2.starts_with("10.244.4."), "{ip2}");
    let version = |machine: &str, prefix: &str, url: &str| {
        let out = in_machine_ok(
            machine,
            &format!("{prefix}curl -sS --max-time 10 {url}/version"),
        );
        assert!(out.contains("\"etcdserver\""), "{machine}: {url}: {out}");
    };

    // Node to a pod on another node.
    version(&w1, "", &format!("http://{ip2}:2379"));
    version(&w2, "", &format!("http://{ip1}:2379"));
    let cp1 = format!("{NAME}-cp-1");
    for ip in [&ip1, &ip2] {
        version(&cp1, "", &format!("http://{ip}:2379"));
    }
    // Pod to pod across nodes: from inside each pod's network namespace.
    let ns1 = pod_netns(&w1, &ip1);
    let ns2 = pod_netns(&w2, &ip2);
    version(
        &w1,
        &format!("ip netns exec {ns1} "),
        &format!("http://{ip2}:2379"),
    );
    version(
        &w2,
        &format!("ip netns exec {ns2} "),
        &format!("http://{ip1}:2379"),
    );
    in_machine_ok(&w1, &format!("ip netns exec {ns1} ping -c 2 -W 5 {ip2}"));

    // The MTU: the node interface's less VXLAN's 50 bytes, on the device and in the pod.
    let under = in_machine_ok(&w1, "cat /sys/class/net/eth0/mtu");
    let vx = in_machine_ok(&w1, "cat /sys/class/net/kubeforge.vxlan/mtu");
    let pod = in_machine_ok(
        &w1,
        &format!("ip netns exec {ns1} cat /sys/class/net/eth0/mtu"),
    );
    let under: u32 = under.trim().parse().unwrap();
    assert_eq!(vx.trim(), (under - 50).to_string());
    assert_eq!(pod.trim(), vx.trim());

    // A ClusterIP Service: from cp-1 (no pods there, so every answer crosses nodes) and
    // from a pod. Its Endpoints first (kube-controller-manager fills them in).
    let out = kubectl(
        dir,
        &[
            "get",
            "service",
            "kf-podnet",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let cluster_ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(cluster_ip.starts_with("10."), "{cluster_ip}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = kubectl(
            dir,
            &[
                "get",
                "endpoints",
                "kf-podnet",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
        );
        let eps = String::from_utf8_lossy(&out.stdout).to_string();
        if eps.split_whitespace().count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Service's Endpoints: {eps:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let url = format!("http://{cluster_ip}:2379");
    for _ in 0..6 {
        version(&cp1, "", &url);
        version(&w1, &format!("ip netns exec {ns1} "), &url);
    }
    eprintln!(
        "pod network: pod-to-pod, node-to-pod and ClusterIP {cluster_ip} across nodes ok (MTU {})",
        vx.trim()
    );
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

    // Pods on different nodes reach each other (the built-in VXLAN pod network).
    check_pod_network(dir.path());

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
    let notes = addons_phase(&report);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("contour v1.19.1: 0 created, 0 changed, ")),
        "the addons are applied again without change: {notes:?}"
    );
    eprintln!("re-run: {rerun:?}");

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
}
