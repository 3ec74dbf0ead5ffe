//! The built-in pod network on a small real cluster: `kubeforge apply` makes one
//! control-plane node and two workers on docker machines (Kubernetes v1.20.2 from the
//! test bed's mirror), then pods on the two workers reach each other, every node reaches
//! them, and the control-plane node (no pods of its own) and a pod reach a ClusterIP
//! Service whose endpoints are on the workers (tests/common_podnet). Cheaper than
//! tests/e2e_ha.rs (3 machines, no load balancers) for the same pod network checks.
//!
//! Needs the Docker engine, the node image and the mirror (scripts/testbed/30, 40, 50);
//! fails, never skips, without them. kubelet's host-wide sysctls are restored.

mod common_podnet;
mod support;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{kubeforge, mirror, require_testbed, ClusterGuard};

const NAME: &str = "kf-podnet-k8s";
const SUBNET: &str = "10.252.43";

fn cluster_file(dir: &Path) {
    let m = dir.join("mirror");
    std::fs::create_dir_all(&m).unwrap();
    for entry in ["v1.20.2", "images"] {
        std::os::unix::fs::symlink(Path::new(&mirror()).join(entry), m.join(entry)).unwrap();
    }
    let text = format!(
        "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {NAME}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker:
      subnet: {SUBNET}.0/24
  nodePools:
    controlPlane:
      count: 1
    workers:
      count: 2
  networking:
    podSubnet: 10.244.0.0/16
    serviceSubnet: 10.96.0.0/12
    cni: bridge
  loadBalancer:
    type: external
    endpoint: {SUBNET}.10:6443
  artifacts:
    mirror: {}
  kubeadm:
    skipPhases: [preflight, addon/coredns]
",
        m.display()
    );
    std::fs::write(dir.join("cluster.yaml"), text).unwrap();
}

#[test]
fn pods_services_and_nodes_reach_each_other_across_nodes() {
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
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("bootstrap: {:?}", t0.elapsed());
    let out = kubeforge(dir.path())
        .args(["kubeconfig", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("kubeconfig"), out.stdout).unwrap();
    common_podnet::check_pod_network(
        dir.path(),
        NAME,
        ["worker-1", "worker-2"],
        // cp-1 has 10.244.0.0/24, the workers the next two.
        ["10.244.1.", "10.244.2."],
        "cp-1",
    );
}
