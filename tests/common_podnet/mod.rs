//! The pod network checked on a real cluster: pods on two nodes (Debian's etcd in the
//! mirror's etcd image serving HTTP: the only server image a node has offline), a
//! ClusterIP Service over them, and traffic between nodes, pods and the Service.
#![allow(dead_code)]

use crate::support::{docker, mirror};
use std::path::Path;
use std::process::Command as Std;
use std::time::{Duration, Instant};

/// `sh -c script` inside a machine: (succeeded, stdout + stderr).
pub fn in_machine(machine: &str, script: &str) -> (bool, String) {
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
pub fn in_machine_ok(machine: &str, script: &str) -> String {
    let (ok, out) = in_machine(machine, script);
    assert!(ok, "{machine}: `{script}` failed: {out}");
    out
}

/// Pods on the two workers serving HTTP (Debian's etcd in the mirror's etcd image: the
/// only server image a node has offline), and a ClusterIP Service over both.
pub fn podnet_manifest(cluster: &str, nodes: &[&str]) -> String {
    let mut m = String::new();
    for w in nodes {
        m.push_str(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: podnet-{w}
  namespace: default
  labels: {{app: kf-podnet}}
spec:
  nodeName: {cluster}-{w}
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
pub fn pod_netns(machine: &str, ip: &str) -> String {
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

/// `kubectl --kubeconfig DIR/kubeconfig ARGS` with the mirror's kubectl.
pub fn kubectl(dir: &Path, args: &[&str]) -> std::process::Output {
    let bin = Path::new(&mirror()).join("v1.20.2/bin/linux/amd64/kubectl");
    Std::new(bin)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .unwrap()
}

/// What the nodes' networking looks like, for a failure message.
fn diagnose(machine: &str, cluster_ip: &str) -> String {
    in_machine(
        machine,
        &format!(
            "echo '--- nat rules for {cluster_ip} / masquerade'; iptables-save -t nat | grep -E '{cluster_ip}|KUBE-MARK-MASQ -j|KUBE-POSTROUTING|KUBEFORGE' | head -n 30; \
             echo '--- routes'; ip route; echo '--- vxlan'; ip -d link show kubeforge.vxlan; ip -4 neigh show dev kubeforge.vxlan; \
             bridge fdb show dev kubeforge.vxlan; echo '--- kube-proxy config'; \
             grep -h clusterCIDR /var/lib/kube-proxy/config.conf 2>/dev/null; true"
        ),
    )
    .1
}

/// Pods on `nodes` (two nodes, short names like `worker-1`) reach each other, every
/// node reaches them, and `observer` (a node without these pods) and a pod reach the
/// ClusterIP Service in front of them: all across nodes, over the built-in pod network.
/// `subnets` are the /24 prefixes the two pods must be in (the nodes' pod CIDRs).
pub fn check_pod_network(
    dir: &Path,
    cluster: &str,
    nodes: [&str; 2],
    subnets: [&str; 2],
    observer: &str,
) {
    let manifest = dir.join("podnet.yaml");
    std::fs::write(&manifest, podnet_manifest(cluster, &nodes)).unwrap();
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
            .find(|(n, _)| n == &format!("{cluster}-{w}"))
            .unwrap_or_else(|| panic!("no pod on {w}: {pods:?}"))
            .1
            .clone()
    };
    let (m1, m2) = (
        format!("{cluster}-{}", nodes[0]),
        format!("{cluster}-{}", nodes[1]),
    );
    let (ip1, ip2) = (ip_on(nodes[0]), ip_on(nodes[1]));
    assert!(ip1.starts_with(subnets[0]), "{ip1} not in {}", subnets[0]);
    assert!(ip2.starts_with(subnets[1]), "{ip2} not in {}", subnets[1]);
    let version = |machine: &str, prefix: &str, url: &str| {
        let out = in_machine_ok(
            machine,
            &format!("{prefix}curl -sS --max-time 10 {url}/version"),
        );
        assert!(out.contains("\"etcdserver\""), "{machine}: {url}: {out}");
    };

    // Node to a pod on another node.
    version(&m1, "", &format!("http://{ip2}:2379"));
    version(&m2, "", &format!("http://{ip1}:2379"));
    let obs = format!("{cluster}-{observer}");
    for ip in [&ip1, &ip2] {
        version(&obs, "", &format!("http://{ip}:2379"));
    }
    // Pod to pod across nodes: from inside each pod's network namespace.
    let ns1 = pod_netns(&m1, &ip1);
    let ns2 = pod_netns(&m2, &ip2);
    version(
        &m1,
        &format!("ip netns exec {ns1} "),
        &format!("http://{ip2}:2379"),
    );
    version(
        &m2,
        &format!("ip netns exec {ns2} "),
        &format!("http://{ip1}:2379"),
    );
    in_machine_ok(&m1, &format!("ip netns exec {ns1} ping -c 2 -W 5 {ip2}"));

    // The MTU: the node interface's less VXLAN's 50 bytes, on the device and in the pod.
    let under = in_machine_ok(&m1, "cat /sys/class/net/eth0/mtu");
    let vx = in_machine_ok(&m1, "cat /sys/class/net/kubeforge.vxlan/mtu");
    let pod = in_machine_ok(
        &m1,
        &format!("ip netns exec {ns1} cat /sys/class/net/eth0/mtu"),
    );
    let under: u32 = under.trim().parse().unwrap();
    assert_eq!(vx.trim(), (under - 50).to_string());
    assert_eq!(pod.trim(), vx.trim());

    // A ClusterIP Service: from the observer (no pods there, so every answer crosses
    // nodes) and from a pod. Its Endpoints first (kube-controller-manager fills them
    // in), then kube-proxy's rules on the observer (it programs them asynchronously).
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, _) = in_machine(
            &obs,
            &format!("iptables-save -t nat | grep -q -- '-d {cluster_ip}/32'"),
        );
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kube-proxy on {obs} never programmed {cluster_ip}:\n{}",
            diagnose(&obs, &cluster_ip)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let url = format!("http://{cluster_ip}:2379");
    for _ in 0..6 {
        let (ok, out) = in_machine(&obs, &format!("curl -sS --max-time 10 {url}/version"));
        assert!(
            ok && out.contains("\"etcdserver\""),
            "{obs}: {url}: {out}\n{}",
            diagnose(&obs, &cluster_ip)
        );
        version(&m1, &format!("ip netns exec {ns1} "), &url);
    }
    eprintln!(
        "pod network: pod-to-pod, node-to-pod and ClusterIP {cluster_ip} across nodes ok (MTU {})",
        vx.trim()
    );
}
