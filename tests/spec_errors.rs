//! Bad cluster files and inventories: each case asserts the exact messages, with file,
//! line, column and field. The loader is the library's; `cli.rs` runs the binary.

use kubeforge::spec::{load_str, SpecErrors};

mod support;
use std::path::Path;

const HEAD: &str = "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: t
spec:
  kubernetesVersion: v1.30.2
";

/// A docker cluster with `extra` appended under `spec:` (two-space indented lines).
/// `extra` starts at line 9.
fn docker(extra: &str) -> String {
    format!("{HEAD}  provider:\n    docker: {{}}\n{extra}")
}

/// A static cluster reading `hosts.yaml` (written by the test), `extra` from line 12.
fn static_(extra: &str) -> String {
    format!(
        "{HEAD}  provider:\n    static: {{inventory: hosts.yaml}}\n  ssh: {{keyFile: id_ed25519}}\n  networking: {{nodeSubnet: 10.0.0.0/24}}\n{extra}"
    )
}

const INVENTORY: &str = "apiVersion: kubeforge.dev/v1alpha1
kind: Inventory
hosts:
  - {name: m1, address: 10.0.0.11, roles: [controlPlane]}
  - {name: m2, address: 10.0.0.12, roles: [controlPlane]}
  - {name: m3, address: 10.0.0.13, roles: [controlPlane]}
  - {name: w1, address: 10.0.0.21, roles: [worker]}
";

/// The same hosts, all but w1 with a key of their own.
const INVENTORY_KEYS: &str = "apiVersion: kubeforge.dev/v1alpha1
kind: Inventory
hosts:
  - {name: m1, address: 10.0.0.11, roles: [controlPlane], sshKeyFile: k1}
  - {name: m2, address: 10.0.0.12, roles: [controlPlane], sshKeyFile: k2}
  - {name: m3, address: 10.0.0.13, roles: [controlPlane], sshKeyFile: k3}
  - {name: w1, address: 10.0.0.21, roles: [worker]}
";

fn errors(text: &str, inventory: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    if let Some(inv) = inventory {
        std::fs::write(dir.path().join("hosts.yaml"), inv).unwrap();
    }
    match load_str(text, Path::new("cluster.yaml"), dir.path()) {
        Ok(_) => vec![],
        Err(SpecErrors { errors }) => errors
            .iter()
            .map(|e| {
                // Inventory errors carry the temp dir; show the file name only.
                let s = e.to_string();
                s.replace(&format!("{}/", dir.path().display()), "")
            })
            .collect(),
    }
}

#[test]
fn the_valid_bases_are_valid() {
    assert_eq!(errors(&docker(""), None), Vec::<String>::new());
    let ok = static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n");
    assert_eq!(errors(&ok, Some(INVENTORY)), Vec::<String>::new());
}

/// (name, cluster text, inventory, exact message)
fn cases() -> Vec<(&'static str, String, Option<&'static str>, &'static str)> {
    vec![
        (
            "malformed yaml",
            format!("{HEAD}  provider: [docker\n"),
            None,
            "cluster.yaml:8:1: not valid YAML: did not find expected ',' or ']'",
        ),
        (
            "empty file",
            String::new(),
            None,
            "cluster.yaml: the file is empty: expected a Cluster (apiVersion: kubeforge.dev/v1alpha1, kind: Cluster)",
        ),
        (
            "wrong apiVersion",
            docker("").replace("kubeforge.dev/v1alpha1", "kubeforge.dev/v2"),
            None,
            "cluster.yaml:1:1: apiVersion: expected `kubeforge.dev/v1alpha1`, found `kubeforge.dev/v2`",
        ),
        (
            "wrong kind",
            docker("").replace("kind: Cluster", "kind: Inventory"),
            None,
            "cluster.yaml:2:1: kind: expected `Cluster`, found `Inventory`",
        ),
        (
            "missing kubernetesVersion",
            docker("").replace("  kubernetesVersion: v1.30.2\n", ""),
            None,
            "cluster.yaml:5:1: spec.kubernetesVersion: required field is missing",
        ),
        (
            "unknown top-level field",
            format!("{}status: {{}}\n", docker("")),
            None,
            "cluster.yaml:9:1: status: unknown field `status`, expected one of apiVersion, kind, metadata, spec",
        ),
        (
            "unknown nested field",
            docker("  networking:\n    podCidr: 10.244.0.0/16\n"),
            None,
            "cluster.yaml:10:5: spec.networking.podCidr: unknown field `podCidr`, expected one of podSubnet, serviceSubnet, nodeSubnet, dnsDomain, cni, apiServerPort",
        ),
        (
            "count of the wrong type",
            docker("  nodePools:\n    workers: {count: three}\n"),
            None,
            "cluster.yaml:10:15: spec.nodePools.workers.count: invalid type: string \"three\", expected a whole number from 0 to 4294967295",
        ),
        (
            "negative count",
            docker("  nodePools:\n    workers: {count: -2}\n"),
            None,
            "cluster.yaml:10:15: spec.nodePools.workers.count: invalid value: integer `-2`, expected a whole number from 0 to 4294967295",
        ),
        (
            "even control-plane count",
            docker("  nodePools:\n    controlPlane: {count: 4}\n"),
            None,
            "cluster.yaml:10:20: spec.nodePools.controlPlane.count: an even number of control-plane nodes (4) tolerates no more failures than 3: use an odd number (3 or 5)",
        ),
        (
            "no control plane",
            docker("  nodePools:\n    controlPlane: {count: 0}\n"),
            None,
            "cluster.yaml:10:20: spec.nodePools.controlPlane.count: at least one control-plane node is needed",
        ),
        (
            "version not semver",
            docker("").replace("v1.30.2", "v1.30"),
            None,
            "cluster.yaml:6:3: spec.kubernetesVersion: `v1.30` is not a Kubernetes version like v1.30.4 (semantic version, major 1)",
        ),
        (
            "version written as a number",
            docker("").replace("v1.30.2", "1.30"),
            None,
            "cluster.yaml:6:3: spec.kubernetesVersion: invalid type: floating point `1.3`, expected a string (put the value in quotes)",
        ),
        (
            "version too old",
            docker("").replace("v1.30.2", "v1.19.16"),
            None,
            "cluster.yaml:6:3: spec.kubernetesVersion: Kubernetes v1.19.16 is not supported: kubeforge supports 1.20 and later",
        ),
        (
            "bad CIDR",
            docker("  networking: {podSubnet: 10.244.0.0/33}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.podSubnet: `10.244.0.0/33` is not a CIDR like 10.244.0.0/16",
        ),
        (
            "CIDR with host bits",
            docker("  networking: {podSubnet: 10.244.1.0/16}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.podSubnet: `10.244.1.0/16` has host bits set; did you mean 10.244.0.0/16?",
        ),
        (
            "service subnet overlaps pod subnet",
            docker("  networking: {podSubnet: 10.96.0.0/16, serviceSubnet: 10.96.0.0/12}\n"),
            None,
            "cluster.yaml:9:41: spec.networking.serviceSubnet: 10.96.0.0/12 overlaps spec.networking.podSubnet 10.96.0.0/16",
        ),
        (
            "service subnet too large",
            docker("  networking: {serviceSubnet: 172.0.0.0/8}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.serviceSubnet: 172.0.0.0/8 is too large: the apiserver allows at most a /12 for services",
        ),
        (
            "pod subnet too small",
            docker("  networking: {podSubnet: 10.244.0.0/25}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.podSubnet: 10.244.0.0/25 is too small: every node gets a /24 of pod addresses, so use /24 or larger",
        ),
        (
            "bad DNS domain",
            docker("  networking: {dnsDomain: Cluster_Local}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.dnsDomain: `Cluster_Local` is not a DNS domain like cluster.local",
        ),
        (
            "unknown provider",
            docker("").replace("docker: {}", "gcp: {}"),
            None,
            "cluster.yaml:8:5: spec.provider.gcp: unknown field `gcp`, expected one of docker, static, aws, hetzner, sakura",
        ),
        (
            "two providers",
            docker("").replace("docker: {}", "docker: {}\n    static: {inventory: x}"),
            None,
            "cluster.yaml:7:3: spec.provider: name only one provider, not docker and static",
        ),
        (
            "docker network on a public range",
            docker("").replace("docker: {}", "docker: {subnet: 8.8.8.0/24}"),
            None,
            "cluster.yaml:8:14: spec.provider.docker.subnet: 8.8.8.0/24 is not a private range: the docker network must stay inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
        ),
        (
            "VIP outside the node subnet",
            docker("  loadBalancer: {vip: 10.9.9.9}\n"),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.vip: VIP 10.9.9.9 is outside the node subnet 172.29.10.0/24",
        ),
        (
            "VIP taken by a node",
            docker("  loadBalancer: {vip: 172.29.10.10}\n"),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.vip: VIP 172.29.10.10 is already the address of host `t-cp-1`",
        ),
        (
            "VIP not an address",
            docker("  loadBalancer: {vip: api.local}\n"),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.vip: `api.local` is not an IP address",
        ),
        (
            "external load balancer without endpoint",
            docker("  loadBalancer: {type: external}\n"),
            None,
            "cluster.yaml:9:3: spec.loadBalancer.endpoint: type external needs `endpoint: HOST:PORT` naming the load balancer",
        ),
        (
            "external endpoint without port",
            docker("  loadBalancer: {type: external, endpoint: api.example.com}\n"),
            None,
            "cluster.yaml:9:34: spec.loadBalancer.endpoint: `api.example.com` is not HOST:PORT like api.example.com:6443",
        ),
        (
            "endpoint with the keepalived type",
            docker("  loadBalancer: {endpoint: lb:6443}\n"),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.endpoint: endpoint is only used with type external",
        ),
        (
            "dedicated placement without load balancers",
            docker("  loadBalancer: {placement: dedicated}\n"),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.placement: placement dedicated needs load-balancer nodes: set spec.nodePools.loadBalancers.count or put hosts in the inventory's load-balancer group",
        ),
        (
            "HAProxy on control-plane nodes on the apiserver port",
            docker("  loadBalancer: {placement: control-plane, port: 6443}\n"),
            None,
            "cluster.yaml:9:44: spec.loadBalancer.port: port 6443 is taken by the kube-apiserver on the control-plane nodes where HAProxy runs: choose another (default 8443)",
        ),
        (
            "BGP mode without peers",
            docker("  addons:\n    metallb:\n      mode: bgp\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n      bgp: {myASN: 64512}\n"),
            None,
            "cluster.yaml:13:7: spec.addons.metallb.bgp.peers: BGP mode needs at least one peer",
        ),
        (
            "BGP mode without BGP settings",
            docker("  addons:\n    metallb:\n      mode: bgp\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n"),
            None,
            "cluster.yaml:11:7: spec.addons.metallb.mode: BGP mode needs spec.addons.metallb.bgp with myASN and at least one peer",
        ),
        (
            "BGP settings in L2 mode",
            docker("  addons:\n    metallb:\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n      bgp: {myASN: 64512, peers: [{address: 10.0.0.1, asn: 64513}]}\n"),
            None,
            "cluster.yaml:12:7: spec.addons.metallb.bgp: BGP settings are only used with mode: bgp",
        ),
        (
            "pool address that is not a range",
            docker("  addons:\n    metallb:\n      pools:\n        - name: p\n          addresses: [192.168.50.9-192.168.50.1]\n"),
            None,
            "cluster.yaml:13:23: spec.addons.metallb.pools[0].addresses[0]: `192.168.50.9-192.168.50.1` ends before it starts",
        ),
        (
            "pools that overlap",
            docker("  addons:\n    metallb:\n      pools:\n        - {name: a, addresses: [192.168.50.0/28]}\n        - {name: b, addresses: [192.168.50.8-192.168.50.20]}\n"),
            None,
            "cluster.yaml:13:33: spec.addons.metallb.pools[1].addresses[0]: 192.168.50.8-192.168.50.20 overlaps 192.168.50.0/28 of pool `a`",
        ),
        (
            "pool holding a node address",
            docker("  addons:\n    metallb:\n      pools: [{name: p, addresses: [172.29.10.0/27]}]\n"),
            None,
            "cluster.yaml:11:37: spec.addons.metallb.pools[0].addresses[0]: 172.29.10.0/27 contains the address of host `t-cp-1`",
        ),
        (
            "ingress pool without MetalLB",
            // (Kubernetes 1.33: no known Contour release supports 1.30.)
            docker("  addons:\n    ingress: {controller: contour, pool: p}\n").replace("v1.30.2", "v1.33.2"),
            None,
            "cluster.yaml:10:36: spec.addons.ingress.pool: refers to MetalLB, but spec.addons.metallb is not configured",
        ),
        (
            "ingress pool that does not exist",
            docker("  addons:\n    metallb: {pools: [{name: p, addresses: [192.168.50.0/28]}]}\n    ingress: {pool: q}\n")
                .replace("v1.30.2", "v1.33.2"),
            None,
            "cluster.yaml:11:15: spec.addons.ingress.pool: no MetalLB pool named `q`",
        ),
        (
            "even Ceph monitor count",
            docker("  addons:\n    rookCeph: {monCount: 2, deviceFilter: sdb}\n"),
            None,
            "cluster.yaml:10:16: spec.addons.rookCeph.monCount: 2 monitors cannot keep a quorum well: use an odd number (1, 3 or 5)",
        ),
        (
            "Ceph node that does not exist",
            docker("  addons:\n    rookCeph:\n      nodes: [{name: t-worker-9, devices: [sdb]}]\n"),
            None,
            "cluster.yaml:11:16: spec.addons.rookCeph.nodes[0].name: no host named `t-worker-9`",
        ),
        (
            "state URL with an unknown scheme",
            docker("  state: {url: ftp://x/y}\n"),
            None,
            "cluster.yaml:9:11: spec.state.url: `ftp://x/y` is not a state store URL: expected file://DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX",
        ),
        (
            "plain http S3 endpoint",
            docker("  state: {url: s3://b/p, endpoint: http://127.0.0.1:9000}\n"),
            None,
            "cluster.yaml:9:26: spec.state.endpoint: `http://127.0.0.1:9000` is plain http: set allowHttp: true to allow it (local emulators only)",
        ),
        (
            "zero command timeout",
            docker("  ssh: {commandTimeoutSeconds: 0}\n"),
            None,
            "cluster.yaml:9:9: spec.ssh.commandTimeoutSeconds: must be at least 1 second",
        ),
        (
            "plain http artifact mirror",
            docker("  artifacts: {mirror: 'http://mirror.example.com/k8s'}\n"),
            None,
            "cluster.yaml:9:15: spec.artifacts.mirror: `http://mirror.example.com/k8s` is plain http: set allowHttp: true next to it to allow it (a mirror on a network you control; use https otherwise)",
        ),
        (
            "plain http artifact mirror on loopback",
            docker("  artifacts:\n    mirror: http://127.0.0.1:8000/k8s\n"),
            None,
            "cluster.yaml:10:5: spec.artifacts.mirror: `http://127.0.0.1:8000/k8s` is plain http: set allowHttp: true next to it to allow it (a mirror on a network you control; use https otherwise)",
        ),
        (
            "half of the S3 credential settings",
            docker("  state: {url: s3://b/p, accessKeyIdEnv: MINIO_USER}\n"),
            None,
            "cluster.yaml:9:3: spec.state: set both accessKeyIdEnv and secretAccessKeyEnv, or neither (then the AWS environment variables are used)",
        ),
        (
            "invalid cluster name",
            docker("").replace("name: t", "name: My_Cluster"),
            None,
            "cluster.yaml:4:3: metadata.name: `My_Cluster` is not a valid cluster name: use lower-case letters, digits and `-`, start with a letter, at most 40 characters",
        ),
        (
            "static: duplicate host names",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.11, roles: [controlPlane]}\n  - {name: m1, address: 10.0.0.12, roles: [controlPlane]}\n  - {name: m3, address: 10.0.0.13, roles: [controlPlane]}\n"),
            "hosts.yaml:5:6: hosts[1]: duplicate host name `m1` (first defined at hosts.yaml:4)",
        ),
        (
            "static: duplicate addresses",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.11, roles: [controlPlane]}\n  - {name: m2, address: 10.0.0.12, roles: [controlPlane]}\n  - {name: m3, address: 10.0.0.11, roles: [controlPlane]}\n"),
            "hosts.yaml:6:6: hosts[2]: duplicate address 10.0.0.11: host `m1` also uses it (at hosts.yaml:4)",
        ),
        (
            "static: host outside the node subnet",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.11, roles: [controlPlane]}\n  - {name: m2, address: 10.0.0.12, roles: [controlPlane]}\n  - {name: m3, address: 10.0.1.13, roles: [controlPlane]}\n"),
            "hosts.yaml:6:6: hosts[2]: address 10.0.1.13 of host `m3` is outside spec.networking.nodeSubnet 10.0.0.0/24",
        ),
        (
            "static: no VIP",
            static_(""),
            Some(INVENTORY),
            "cluster.yaml:5:1: spec.loadBalancer.vip: type haproxy-keepalived needs a VIP: a free address in the nodes' subnet",
        ),
        (
            "static: VIP without a node subnet",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n").replace("  networking: {nodeSubnet: 10.0.0.0/24}\n", ""),
            Some(INVENTORY),
            "cluster.yaml:5:1: spec.networking.nodeSubnet: required with a keepalived VIP on the static provider, to check that the VIP 10.0.0.10 is in the nodes' subnet",
        ),
        (
            "static: no way to log in",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n").replace("  ssh: {keyFile: id_ed25519}\n", ""),
            Some(INVENTORY),
            "cluster.yaml:5:1: spec.ssh: the static provider needs a way to log in: set keyFile or agent: true (or give every host its own key; m1 has none)",
        ),
        (
            "static: every host but one has its own key",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n").replace("  ssh: {keyFile: id_ed25519}\n", ""),
            Some(INVENTORY_KEYS),
            "cluster.yaml:5:1: spec.ssh: the static provider needs a way to log in: set keyFile or agent: true (or give every host its own key; w1 has none)",
        ),
        (
            "static: inventory file missing",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            None,
            "hosts.yaml: cannot read the inventory: No such file or directory (os error 2)",
        ),
        (
            "static: count does not match the inventory",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n  nodePools:\n    workers: {count: 2}\n"),
            Some(INVENTORY),
            "cluster.yaml:13:15: spec.nodePools.workers.count: 2 worker nodes requested, but the inventory lists 1",
        ),
        (
            "static: even number of control-plane hosts",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.11, roles: [controlPlane]}\n  - {name: m2, address: 10.0.0.12, roles: [controlPlane]}\n"),
            "cluster.yaml:8:14: spec.provider.static.inventory: the inventory lists an even number of control-plane hosts (2): use an odd number (3 or 5)",
        ),
        (
            "static: inventory host without roles",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.11, roles: []}\n"),
            "hosts.yaml:4:36: hosts[0].roles: a host needs at least one role (controlPlane, worker, loadBalancer)",
        ),
        (
            "addon release pinned outside its Kubernetes range",
            docker("  addons:\n    ingress:\n      controller: contour\n      version: v1.33.6\n").replace("v1.30.2", "v1.20.2"),
            None,
            "cluster.yaml:12:7: spec.addons.ingress.version: Contour v1.33.6 supports Kubernetes 1.32-1.34, not 1.20; v1.19.1 supports it",
        ),
        (
            "addon release kubeforge does not know",
            docker("  addons:\n    metallb:\n      version: v0.9.7\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n"),
            None,
            "cluster.yaml:11:7: spec.addons.metallb.version: MetalLB v0.9.7 is not a release kubeforge knows (known: v0.13.12 (>= 1.13), v0.16.1 (>= 1.21))",
        ),
        (
            "no known addon release supports the cluster's Kubernetes",
            docker("  addons:\n    ingress: {controller: contour}\n").replace("v1.30.2", "v1.27.3"),
            None,
            "cluster.yaml:10:5: spec.addons.ingress: no release of Contour that kubeforge knows supports Kubernetes 1.27 (known: v1.19.1 (1.20-1.22), v1.33.6 (1.32-1.34))",
        ),
        (
            "static: inventory host address is not an IP",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 10.0.0.300, roles: [controlPlane]}\n"),
            "hosts.yaml:4:6: hosts[0]: host `m1`: `10.0.0.300` is not an IP address",
        ),
    ]
}

#[test]
fn every_bad_input_gets_its_exact_message() {
    let cases = cases();
    assert!(cases.len() >= 30, "the table keeps at least 30 cases");
    let mut failures = Vec::new();
    for (name, text, inv, want) in &cases {
        let errs = errors(text, *inv);
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_errors_are_collected_not_just_the_first() {
    let text = docker(
        "  nodePools:\n    controlPlane: {count: two}\n    workers: {count: 1}\n  networking:\n    podSubnet: 10.96.0.0/16\n    bogus: 1\n  loadBalancer: {type: nginx}\n",
    )
    .replace("name: t", "name: T");
    let errs = errors(&text, None);
    assert_eq!(
        errs,
        vec![
            "cluster.yaml:4:3: metadata.name: `T` is not a valid cluster name: use lower-case letters, digits and `-`, start with a letter, at most 40 characters",
            "cluster.yaml:10:20: spec.nodePools.controlPlane.count: invalid type: string \"two\", expected a whole number from 0 to 4294967295",
            "cluster.yaml:12:3: spec.networking.serviceSubnet: 10.96.0.0/12 overlaps spec.networking.podSubnet 10.96.0.0/16",
            "cluster.yaml:14:5: spec.networking.bogus: unknown field `bogus`, expected one of podSubnet, serviceSubnet, nodeSubnet, dnsDomain, cni, apiServerPort",
            "cluster.yaml:15:18: spec.loadBalancer.type: unknown value `nginx`, expected one of haproxy-keepalived, external, cloud",
        ]
    );
}

#[test]
fn a_single_control_plane_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = docker("  nodePools:\n    controlPlane: {count: 1}\n");
    let loaded = load_str(&text, Path::new("cluster.yaml"), dir.path()).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        vec!["cluster.yaml:10:20: spec.nodePools.controlPlane.count: a single control-plane node is not highly available: use 3 for production"]
    );
    assert_eq!(loaded.topology.control_planes().len(), 1);
}

#[test]
fn garbage_never_panics() {
    // Inputs of every shape: the loader returns errors, never panics.
    for text in [
        "",
        "~",
        "[]",
        "42",
        "spec: 1",
        "apiVersion: 1\nkind: [a]\nmetadata: x\nspec: {}",
        "a: &x [*x]",
        "\u{0}",
        "{{{{",
        "- - - -",
        "spec:\n  provider:\n    docker:\n      subnet: [1,2]\n",
        &docker("  addons:\n    metallb: {pools: [{name: x, addresses: [\"::1-1.2.3.4\"]}]}\n"),
        &docker("  nodePools: {workers: {count: 99999}}\n"),
    ] {
        let _ = errors(text, None);
    }
}

/// A cluster on a cloud provider: `provider` is the YAML under `provider:` (4-space
/// indented lines), `extra` follows under `spec:`.
fn cloud(provider: &str, extra: &str) -> String {
    format!("{HEAD}  provider:\n{provider}{extra}")
}

#[test]
fn cloud_provider_inputs_get_their_exact_messages() {
    let aws = "    aws: {image: ami-1}\n";
    assert_eq!(errors(&cloud(aws, ""), None), Vec::<String>::new());
    assert_eq!(
        errors(&cloud("    hetzner: {}\n", ""), None),
        Vec::<String>::new()
    );
    // The opt-in next to the setting allows plain http.
    for ok in [
        "    aws: {image: ami-1, endpoint: 'http://127.0.0.1:5000', allowHttp: true}\n",
        "    hetzner: {endpoint: 'http://127.0.0.1:8080/v1', allowHttp: true}\n",
        "    sakura: {archive: '1', endpoint: 'http://127.0.0.1:8080/api', allowHttp: true}\n",
        "    aws: {image: ami-1, endpoint: 'https://ec2.example.com'}\n",
    ] {
        assert_eq!(errors(&cloud(ok, ""), None), Vec::<String>::new(), "{ok}");
    }
    assert_eq!(
        errors(
            &docker("  artifacts: {mirror: 'http://127.0.0.1:8000/k8s', allowHttp: true}\n"),
            None
        ),
        Vec::<String>::new()
    );
    // The cloud's own load balancer, and keepalived's VIP moved through the API.
    for ok in [
        cloud(aws, "  loadBalancer: {type: cloud}\n"),
        cloud(aws, "  loadBalancer: {type: cloud, port: 443, healthCheck: tcp}\n"),
        cloud("    hetzner: {}\n", "  loadBalancer: {type: cloud, vip: 10.42.0.100}\n"),
        cloud(aws, "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {}}\n"),
        cloud(aws, "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {accessKeyIdEnv: A, secretAccessKeyEnv: B_2}}\n"),
        cloud("    hetzner: {}\n", "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {tokenEnv: HCLOUD_FAILOVER}}\n"),
    ] {
        assert_eq!(errors(&ok, None), Vec::<String>::new(), "{ok}");
    }
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "cloud load balancer on docker",
            docker("  loadBalancer: {type: cloud}\n"),
            "cluster.yaml:9:18: spec.loadBalancer.type: type cloud is the load balancer of the aws and hetzner providers, not of docker (use haproxy-keepalived or external)",
        ),
        (
            "cloud load balancer on sakura",
            cloud("    sakura: {archive: '1'}\n", "  loadBalancer: {type: cloud}\n"),
            "cluster.yaml:9:18: spec.loadBalancer.type: type cloud is the load balancer of the aws and hetzner providers, not of sakura (use haproxy-keepalived: Sakura's switch carries keepalived's VIP as it is)",
        ),
        (
            "cloud load balancer with load-balancer nodes",
            cloud(aws, "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {type: cloud}\n"),
            "cluster.yaml:10:21: spec.nodePools.loadBalancers.count: the cloud load balancer replaces the load-balancer nodes (`t-lb-1` would be unused): set the count to 0",
        ),
        (
            "cloud load balancer with an interface",
            cloud(aws, "  loadBalancer: {type: cloud, interface: ens5}\n"),
            "cluster.yaml:9:31: spec.loadBalancer.interface: interface is only used with type haproxy-keepalived (the cloud load balancer needs no nodes of its own)",
        ),
        (
            "cloud load balancer outside the subnet",
            cloud(aws, "  loadBalancer: {type: cloud, vip: 10.9.0.1}\n"),
            "cluster.yaml:9:31: spec.loadBalancer.vip: VIP 10.9.0.1 is outside the node subnet 10.42.0.0/24",
        ),
        (
            "failover on docker",
            docker("  loadBalancer: {failover: {}}\n"),
            "cluster.yaml:9:18: spec.loadBalancer.failover: failover through a cloud API is for the aws and hetzner providers; on docker keepalived moves the VIP itself",
        ),
        (
            "failover with the cloud load balancer",
            cloud(aws, "  loadBalancer: {type: cloud, failover: {}}\n"),
            "cluster.yaml:9:31: spec.loadBalancer.failover: failover moves keepalived's VIP: it is only used with type haproxy-keepalived",
        ),
        (
            "failover key id without its secret",
            cloud(aws, "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {accessKeyIdEnv: KF_ID}}\n"),
            "cluster.yaml:11:18: spec.loadBalancer.failover: set both accessKeyIdEnv and secretAccessKeyEnv, or neither (the load balancers' instance role)",
        ),
        (
            "failover token on aws",
            cloud(aws, "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {tokenEnv: T}}\n"),
            "cluster.yaml:11:29: spec.loadBalancer.failover.tokenEnv: tokenEnv is not used with the aws provider",
        ),
        (
            "failover token variable that is no name",
            cloud("    hetzner: {}\n", "  nodePools:\n    loadBalancers: {count: 2}\n  loadBalancer: {failover: {tokenEnv: 'A B;rm'}}\n"),
            "cluster.yaml:11:29: spec.loadBalancer.failover.tokenEnv: `A B;rm` is not an environment variable name",
        ),
        (
            "aws without image",
            cloud("    aws: {region: eu-west-1}\n", ""),
            "cluster.yaml:8:5: spec.provider.aws.image: required field is missing",
        ),
        (
            "aws unknown field",
            cloud("    aws: {image: ami-1, instanceTyp: t3.large}\n", ""),
            "cluster.yaml:8:25: spec.provider.aws.instanceTyp: unknown field `instanceTyp`, expected one of image, region, endpoint, profile, availabilityZone, instanceType, controlPlaneInstanceType, loadBalancerInstanceType, vpcCidr, subnet, useDefaultVpc, allowedCidrs, rootVolumeGb, loadBalancerInstanceProfile, elbEndpoint, allowHttp",
        ),
        (
            "aws and docker at once",
            cloud("    docker: {}\n    aws: {image: ami-1}\n", ""),
            "cluster.yaml:7:3: spec.provider: name only one provider, not docker and aws",
        ),
        (
            "aws subnet on a public range",
            cloud("    aws: {image: ami-1, subnet: 8.8.8.0/24}\n", ""),
            "cluster.yaml:8:25: spec.provider.aws.subnet: 8.8.8.0/24 is not a private range: the aws subnet must stay inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
        ),
        (
            "aws subnet not a CIDR",
            cloud("    aws: {image: ami-1, subnet: 10.1.0.0}\n", ""),
            "cluster.yaml:8:25: spec.provider.aws.subnet: `10.1.0.0` is not a CIDR like 10.244.0.0/16",
        ),
        (
            "extra disk size",
            cloud(aws, "  nodePools:\n    workers: {count: 1, extraDisks: [100Q]}\n"),
            "cluster.yaml:10:38: spec.nodePools.workers.extraDisks[0]: `100Q`: unknown size unit `Q` (use G, Gi, GB, ...)",
        ),
        (
            "hetzner unknown field",
            cloud("    hetzner: {serverTyp: cx32}\n", ""),
            "cluster.yaml:8:15: spec.provider.hetzner.serverTyp: unknown field `serverTyp`, expected one of tokenEnv, endpoint, location, networkZone, serverType, controlPlaneServerType, loadBalancerServerType, loadBalancerType, image, ipRange, subnet, allowedCidrs, allowHttp",
        ),
        (
            "sakura without an archive",
            cloud("    sakura: {zone: tk1a}\n", ""),
            "cluster.yaml:8:5: spec.provider.sakura.archive: required field is missing",
        ),
        (
            "sakura disk plan",
            cloud("    sakura: {archive: '1', diskPlan: nvme}\n", ""),
            "cluster.yaml:8:28: spec.provider.sakura.diskPlan: unknown value `nvme`, expected ssd or hdd",
        ),
        (
            "extra disk size on docker",
            cloud("    docker: {}\n", "  nodePools:\n    workers: {count: 1, extraDisks: [ten]}\n"),
            "cluster.yaml:10:38: spec.nodePools.workers.extraDisks[0]: `ten` is not a size like 100G or 107374182400",
        ),
        (
            "aws endpoint in plain http",
            cloud("    aws: {image: ami-1, endpoint: 'http://127.0.0.1:5000'}\n", ""),
            "cluster.yaml:8:25: spec.provider.aws.endpoint: `http://127.0.0.1:5000` is plain http (the API credentials would travel in clear): set allowHttp: true next to it to allow it (local emulators only)",
        ),
        (
            "hetzner endpoint in plain http",
            cloud("    hetzner:\n      endpoint: HTTP://api.example.com/v1\n", ""),
            "cluster.yaml:9:7: spec.provider.hetzner.endpoint: `HTTP://api.example.com/v1` is plain http (the API credentials would travel in clear): set allowHttp: true next to it to allow it (local emulators only)",
        ),
        (
            "sakura endpoint in plain http",
            cloud("    sakura: {archive: '1', endpoint: 'http://10.0.0.1/api'}\n", ""),
            "cluster.yaml:8:28: spec.provider.sakura.endpoint: `http://10.0.0.1/api` is plain http (the API credentials would travel in clear): set allowHttp: true next to it to allow it (local emulators only)",
        ),
        (
            "sakura endpoint that is not a URL",
            cloud("    sakura: {archive: '1', endpoint: 'ftp://x', allowHttp: true}\n", ""),
            "cluster.yaml:8:28: spec.provider.sakura.endpoint: `ftp://x` is not a URL like https://api.example.com",
        ),
        (
            "too many load balancers on a cloud",
            cloud(aws, "  nodePools:\n    loadBalancers: {count: 7}\n"),
            "cluster.yaml:10:21: spec.nodePools.loadBalancers.count: the aws provider supports at most 6 load-balancer nodes",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        let errs = errors(text, None);
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Values that would reach a root shell or a config file: each is refused at its
/// position, saying what the field may hold (issue 15, item 2).
#[test]
fn hostile_values_get_their_exact_messages() {
    let inv_with = |extra: &str| -> String {
        format!("{INVENTORY}  - {{name: w2, address: 10.0.0.22, roles: [worker], {extra}}}\n")
    };
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "newline in the keepalived interface",
            docker("  loadBalancer:\n    interface: \"eth0\\n}\\nvrrp_script x {\"\n"),
            None,
            "cluster.yaml:10:5: spec.loadBalancer.interface: `eth0\\n}\\nvrrp_script x {` is not a network interface name like eth0 or bond0.100 (letters, digits, `.`, `_`, `-`, at most 15 characters)",
        ),
        (
            "shell in skipPhases",
            docker("  kubeadm: {skipPhases: ['preflight; touch /pwned']}\n"),
            None,
            "cluster.yaml:9:26: spec.kubeadm.skipPhases[0]: `preflight; touch /pwned` is not a phase of kubeadm init or join 1.30 (e.g. preflight, addon/coredns; `kubeadm init --help` lists them)",
        ),
        (
            "phase of a later release",
            docker("  kubeadm: {skipPhases: [kubelet-finalize/enable-client-cert-rotation]}\n"),
            None,
            "cluster.yaml:9:26: spec.kubeadm.skipPhases[0]: `kubelet-finalize/enable-client-cert-rotation` is not a phase of kubeadm init or join 1.30 (e.g. preflight, addon/coredns; `kubeadm init --help` lists them)",
        ),
        (
            "two preflight checks in one item",
            docker("  kubeadm: {ignorePreflightErrors: ['Swap,all']}\n"),
            None,
            "cluster.yaml:9:37: spec.kubeadm.ignorePreflightErrors[0]: `Swap,all` is not a kubeadm preflight check name like Swap, NumCPU, Port-6443 or all",
        ),
        (
            "mirror with a control character",
            docker("  artifacts: {mirror: \"/srv/mirror\\r\\u001b[2J\"}\n"),
            None,
            "cluster.yaml:9:15: spec.artifacts.mirror: `/srv/mirror\\r\\u{1b}[2J` is not a mirror: an http(s) URL or a directory, without control characters",
        ),
        (
            "image repository with upper case",
            docker("  artifacts: {imageRepository: Registry.example.com/K8s}\n"),
            None,
            "cluster.yaml:9:15: spec.artifacts.imageRepository: `Registry.example.com/K8s` is not an image repository like registry.k8s.io or registry.example.com:5000/k8s (lower-case registry host[:port], then /path)",
        ),
        (
            "image repository with a command",
            docker("  artifacts: {imageRepository: 'r.io/k8s$(id)'}\n"),
            None,
            "cluster.yaml:9:15: spec.artifacts.imageRepository: `r.io/k8s$(id)` is not an image repository like registry.k8s.io or registry.example.com:5000/k8s (lower-case registry host[:port], then /path)",
        ),
        (
            "certSans with a space",
            docker("  loadBalancer: {certSans: [api.example.com, 'evil name']}\n"),
            None,
            "cluster.yaml:9:46: spec.loadBalancer.certSans[1]: `evil name` is not a certificate SAN: use a lower-case DNS name (api.example.com), a wildcard (*.example.com) or an IP address",
        ),
        (
            "certSans wildcard not leftmost",
            docker("  loadBalancer: {certSans: ['api.*.example.com']}\n"),
            None,
            "cluster.yaml:9:29: spec.loadBalancer.certSans[0]: `api.*.example.com` is not a certificate SAN: use a lower-case DNS name (api.example.com), a wildcard (*.example.com) or an IP address",
        ),
        (
            "ssh user with a command",
            docker("  ssh: {user: 'root;id'}\n"),
            None,
            "cluster.yaml:9:9: spec.ssh.user: `root;id` is not a user name like root or debian (letters, digits, `.`, `_`, `-`, at most 32 characters)",
        ),
        (
            "bastion host with a space",
            docker("  ssh: {bastion: {host: 'jump host'}}\n"),
            None,
            "cluster.yaml:9:19: spec.ssh.bastion.host: `jump host` is not a host name or IPv4 address like bastion.example.com or 192.0.2.1",
        ),
        (
            "kubelet-restricted label",
            docker("  nodePools:\n    workers:\n      count: 1\n      labels: {node-role.kubernetes.io/worker: ''}\n"),
            None,
            "cluster.yaml:12:16: spec.nodePools.workers.labels.node-role.kubernetes.io/worker: `node-role.kubernetes.io/worker` is in the kubernetes.io/k8s.io namespace, which kubelet may not set on its own node (it refuses to start): use your own prefix like example.com/role, or node.kubernetes.io/...",
        ),
        (
            "label value with a comma",
            docker("  nodePools:\n    workers:\n      count: 1\n      labels: {tier: 'a,b=c'}\n"),
            None,
            "cluster.yaml:12:16: spec.nodePools.workers.labels.tier: `a,b=c` is not a label value: at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
        ),
        (
            "label key with upper-case prefix",
            docker("  nodePools:\n    workers:\n      count: 1\n      labels: {Example.com/tier: a}\n"),
            None,
            "cluster.yaml:12:16: spec.nodePools.workers.labels.Example.com/tier: `Example.com/tier` is not a label key: the prefix before `/` must be a lower-case DNS name like example.com",
        ),
        (
            "docker image with a space",
            docker("").replace("docker: {}", "docker: {image: 'kubeforge/node:1 --privileged'}"),
            None,
            "cluster.yaml:8:14: spec.provider.docker.image: `kubeforge/node:1 --privileged` is not an image reference like kubeforge/node:1 or registry.example.com/node@sha256:...",
        ),
        (
            "external endpoint host with a command",
            docker("  loadBalancer: {type: external, endpoint: '$(id).example.com:6443'}\n"),
            None,
            "cluster.yaml:9:34: spec.loadBalancer.endpoint: `$(id).example.com` is not a lower-case DNS name or IPv4 address before the port",
        ),
        (
            "MetalLB interface with a space",
            docker("  addons:\n    metallb:\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n      interfaces: ['eth0 eth1']\n"),
            None,
            "cluster.yaml:12:20: spec.addons.metallb.interfaces[0]: `eth0 eth1` is not a network interface name like eth0 or bond0.100 (letters, digits, `.`, `_`, `-`, at most 15 characters)",
        ),
        (
            "Ceph data dir escaping upwards",
            docker("  addons:\n    rookCeph: {deviceFilter: sdb, dataDirHostPath: /var/lib/../../etc}\n"),
            None,
            "cluster.yaml:10:35: spec.addons.rookCeph.dataDirHostPath: `/var/lib/../../etc` is not an absolute path like /var/lib/rook (letters, digits, `/`, `.`, `_`, `-`, no `..`)",
        ),
        (
            "Ceph device with a space",
            docker("  addons:\n    rookCeph:\n      nodes: [{name: t-cp-1, devices: ['sdb sdc']}]\n"),
            None,
            "cluster.yaml:11:40: spec.addons.rookCeph.nodes[0].devices[0]: `sdb sdc` is not a device name like sdb or /dev/disk/by-id/...",
        ),
        (
            "static: inventory ssh user with a command",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some(inv_with("sshUser: '$(reboot)'")),
            "hosts.yaml:8:6: hosts[4].sshUser: `$(reboot)` is not a user name like root or debian (letters, digits, `.`, `_`, `-`, at most 32 characters)",
        ),
        (
            "static: inventory label kubelet may not set",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some(inv_with("labels: {kubernetes.io/role: worker}")),
            "hosts.yaml:8:6: hosts[4].labels.kubernetes.io/role: `kubernetes.io/role` is in the kubernetes.io/k8s.io namespace, which kubelet may not set on its own node (it refuses to start): use your own prefix like example.com/role, or node.kubernetes.io/...",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, inv, want) in &cases {
        let errs = errors(text, inv.as_deref());
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sizes are bounded (issue 15, item 3): counts, inventories and lists past the limits
/// are refused at their position, before anything proportional to them is built.
#[test]
fn sizes_past_the_limits_are_refused() {
    let many_sans: Vec<String> = (0..101).map(|i| format!("n{i}.example.com")).collect();
    let big_inventory = {
        let mut s = String::from("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n");
        for i in 0..5001u32 {
            s.push_str(&format!(
                "  - {{name: h{i}, address: 10.{}.{}.{}, roles: [{}]}}\n",
                i / 65536,
                (i / 256) % 256,
                i % 256,
                if i < 3 { "controlPlane" } else { "worker" }
            ));
        }
        s
    };
    let many_addresses: Vec<String> = (0..65).map(|i| format!("192.168.{i}.0/28")).collect();
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "five million workers",
            docker("  nodePools:\n    workers: {count: 5000000}\n")
                .replace("docker: {}", "docker: {subnet: 172.16.0.0/12}"),
            None,
            "cluster.yaml:10:15: spec.nodePools.workers.count: 5000000 machines are more than the 5000 kubeforge manages in one cluster",
        ),
        (
            "pools adding up past the limit",
            docker("  nodePools:\n    workers: {count: 4999}\n    loadBalancers: {count: 2}\n")
                .replace("docker: {}", "docker: {subnet: 172.16.0.0/12}"),
            None,
            "cluster.yaml:9:3: spec.nodePools: the pools add up to 5004 machines, more than the 5000 kubeforge manages in one cluster",
        ),
        (
            "101 certificate SANs",
            docker(&format!("  loadBalancer: {{certSans: [{}]}}\n", many_sans.join(", "))),
            None,
            "cluster.yaml:9:18: spec.loadBalancer.certSans: 101 SANs are more than the 100 kubeforge allows",
        ),
        (
            "65 addresses in a MetalLB pool",
            docker(&format!(
                "  addons:\n    metallb:\n      pools: [{{name: p, addresses: [{}]}}]\n",
                many_addresses.join(", ")
            )),
            None,
            "cluster.yaml:11:25: spec.addons.metallb.pools[0].addresses: 65 addresses are more than the 64 kubeforge allows",
        ),
        (
            "static: 5001 inventory hosts",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n")
                .replace("nodeSubnet: 10.0.0.0/24", "nodeSubnet: 10.0.0.0/8, podSubnet: 192.168.0.0/16, serviceSubnet: 172.16.0.0/16"),
            Some(Box::leak(big_inventory.into_boxed_str())),
            "cluster.yaml:8:14: spec.provider.static.inventory: the inventory lists 5001 hosts, more than the 5000 kubeforge manages in one cluster",
        ),
        (
            "bridge CNI on 300 nodes",
            docker("  nodePools:\n    workers: {count: 297}\n  networking: {podSubnet: 10.128.0.0/9}\n")
                .replace("docker: {}", "docker: {subnet: 172.30.0.0/16}"),
            None,
            "cluster.yaml:11:3: spec.networking.cni: the bridge CNI routes every node to every other node and serves at most 256 Kubernetes nodes; this cluster has 300: use cni: none and install a CNI for larger clusters",
        ),
        (
            "pod subnet without a /24 per node",
            docker("  nodePools:\n    workers: {count: 3}\n  networking: {podSubnet: 10.244.0.0/23}\n"),
            None,
            "cluster.yaml:11:16: spec.networking.podSubnet: 10.244.0.0/23 holds 2 node /24s, but the cluster has 6 Kubernetes nodes: use a larger pod subnet",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, inv, want) in &cases {
        let errs = errors(text, *inv);
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // At the limit it validates.
    let at_limit = docker("  nodePools:\n    workers: {count: 4995}\n    loadBalancers: {count: 2}\n  networking: {cni: none}\n")
        .replace("docker: {}", "docker: {subnet: 172.16.0.0/12}");
    assert_eq!(errors(&at_limit, None), Vec::<String>::new());
}

/// An input file past 4 MiB is refused before it is read or parsed: a sparse 1 GiB
/// file, and an endless stream (/dev/zero) read only up to the limit.
#[test]
fn oversized_input_files_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = kubeforge::spec::load_file(&big).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: the cluster file is 1073741824 bytes, more than the 4194304 bytes (4 MiB) kubeforge reads",
            big.display()
        )
    );
    let err = kubeforge::spec::load_file(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/dev/zero: the cluster file is more than 4194304 bytes, more than the 4194304 bytes (4 MiB) kubeforge reads"
    );
    // The inventory too.
    std::fs::write(
        dir.path().join("c.yaml"),
        static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
    )
    .unwrap();
    std::fs::File::create(dir.path().join("hosts.yaml"))
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    let err = kubeforge::spec::load_file(&dir.path().join("c.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("hosts.yaml: the inventory is 5242880 bytes, more than the 4194304 bytes (4 MiB) kubeforge reads"),
        "{err}"
    );
}

/// A YAML alias bomb (10^10 strings from 600 bytes) is refused by the parser, not
/// expanded.
#[test]
fn an_alias_bomb_is_refused() {
    let mut text = docker("  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("  x{i}: &a{i} [{refs}]\n"));
    }
    text.push_str("  kubeadm: {skipPhases: *a9}\n");
    let errs = errors(&text, None);
    assert_eq!(
        errs,
        vec!["cluster.yaml: not valid YAML: repetition limit exceeded"]
    );
}

/// IPv6 is refused everywhere a cluster address is given, saying so (issue 15, item 10).
#[test]
fn ipv6_is_refused_clearly() {
    let v6_inventory = "apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n  - {name: m1, address: 'fd00::11', roles: [controlPlane]}\n";
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "IPv6 pod subnet",
            docker("  networking: {podSubnet: 'fd00:244::/56'}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.podSubnet: `fd00:244::/56` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 service subnet",
            docker("  networking: {serviceSubnet: 'fd00:96::/112'}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.serviceSubnet: `fd00:96::/112` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 docker network",
            docker("").replace("docker: {}", "docker: {subnet: 'fd00:29::/64'}"),
            None,
            "cluster.yaml:8:14: spec.provider.docker.subnet: `fd00:29::/64` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "static: IPv6 node subnet",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n")
                .replace("nodeSubnet: 10.0.0.0/24", "nodeSubnet: 'fd00::/64'"),
            Some(INVENTORY),
            "cluster.yaml:10:16: spec.networking.nodeSubnet: `fd00::/64` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "static: IPv6 VIP",
            static_("  loadBalancer: {placement: control-plane, vip: 'fd00::10'}\n"),
            Some(INVENTORY),
            "cluster.yaml:11:44: spec.loadBalancer.vip: `fd00::10` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 external endpoint",
            docker("  loadBalancer: {type: external, endpoint: '[2001:db8::1]:6443'}\n"),
            None,
            "cluster.yaml:9:34: spec.loadBalancer.endpoint: `2001:db8::1` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "static: IPv6 host address",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n"),
            Some(v6_inventory),
            "hosts.yaml:4:6: hosts[0]: host `m1`: `fd00::11` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 MetalLB pool",
            docker("  addons:\n    metallb: {pools: [{name: p, addresses: ['2001:db8::/120']}]}\n"),
            None,
            "cluster.yaml:10:45: spec.addons.metallb.pools[0].addresses[0]: `2001:db8::/120` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 MetalLB range",
            docker("  addons:\n    metallb: {pools: [{name: p, addresses: ['2001:db8::1-2001:db8::9']}]}\n"),
            None,
            "cluster.yaml:10:45: spec.addons.metallb.pools[0].addresses[0]: `2001:db8::1-2001:db8::9` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
        (
            "IPv6 BGP peer",
            docker("  addons:\n    metallb:\n      mode: bgp\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n      bgp: {myASN: 64512, peers: [{address: '2001:db8::1', asn: 64513}]}\n"),
            None,
            "cluster.yaml:13:36: spec.addons.metallb.bgp.peers[0].address: `2001:db8::1` is IPv6: IPv6 is not supported yet, use IPv4",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, inv, want) in &cases {
        let errs = errors(text, *inv);
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Fields that would do nothing in their combination are refused (issue 15, item 12).
#[test]
fn fields_that_would_do_nothing_are_refused() {
    let inv_with = |extra: &str, roles: &str| -> String {
        format!("{INVENTORY}  - {{name: x1, address: 10.0.0.31, roles: [{roles}], {extra}}}\n")
    };
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "labels on load-balancer nodes",
            docker("  nodePools:\n    loadBalancers: {count: 2, labels: {example.com/x: y}}\n"),
            None,
            "cluster.yaml:10:31: spec.nodePools.loadBalancers.labels: load-balancer nodes run no kubelet: their labels would never be applied",
        ),
        (
            "static: labels on a load-balancer host",
            static_("  loadBalancer: {vip: 10.0.0.10}\n"),
            Some(inv_with("labels: {example.com/x: y}", "loadBalancer")),
            "hosts.yaml:8:6: hosts[4].labels: host `x1` is a load-balancer node and runs no kubelet: its labels would never be applied",
        ),
        (
            "nodeSubnet with the docker provider",
            docker("  networking: {nodeSubnet: 172.29.10.0/24}\n"),
            None,
            "cluster.yaml:9:16: spec.networking.nodeSubnet: the docker provider places its machines in spec.provider.docker.subnet: set the subnet there",
        ),
        (
            "static: extra disks",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n  nodePools:\n    workers: {extraDisks: [10G]}\n"),
            Some(INVENTORY.to_string()),
            "cluster.yaml:13:15: spec.nodePools.workers.extraDisks: the static provider attaches no disks to existing hosts: list the hosts' disks in spec.addons.rookCeph.nodes",
        ),
        (
            "keepalived interface with an external load balancer",
            docker("  loadBalancer: {type: external, endpoint: 'api.example.com:6443', interface: eth1}\n"),
            None,
            "cluster.yaml:9:68: spec.loadBalancer.interface: interface is only used with type haproxy-keepalived (the external load balancer is configured outside kubeforge)",
        ),
        (
            "MetalLB L2 interfaces in BGP mode",
            docker("  addons:\n    metallb:\n      mode: bgp\n      pools: [{name: p, addresses: [192.168.50.0/28]}]\n      bgp: {myASN: 64512, peers: [{address: 10.0.0.1, asn: 64513}]}\n      interfaces: [eth0]\n"),
            None,
            "cluster.yaml:14:7: spec.addons.metallb.interfaces: interfaces limit L2 announcements and are not used with mode: bgp",
        ),
        (
            "static: Ansible group names with a kubeforge inventory",
            static_("  loadBalancer: {placement: control-plane, vip: 10.0.0.10}\n")
                .replace("static: {inventory: hosts.yaml}", "static: {inventory: hosts.yaml, groups: {workers: [nodes]}}"),
            Some(INVENTORY.to_string()),
            "cluster.yaml:8:37: spec.provider.static.groups: groups map Ansible inventory groups to roles, but this inventory is kubeforge's own, where each host lists its roles",
        ),
        (
            "key file and agent at once",
            docker("  ssh: {keyFile: id_ed25519, agent: true}\n"),
            None,
            "cluster.yaml:9:30: spec.ssh.agent: set keyFile or agent: true, not both (the key file would be used and the agent never)",
        ),
        (
            "region of a local state directory",
            docker("  state: {url: 'file:///tmp/state', region: eu-west-1}\n"),
            None,
            "cluster.yaml:9:37: spec.state.region: region applies to s3:// state URLs only",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, inv, want) in &cases {
        let errs = errors(text, inv.as_deref());
        if errs.len() != 1 || errs[0] != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {errs:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The labels refused as ones kubelet may not set on its own node are exactly those the
/// real kubelet (v1.20.2, from the test bed's mirror) refuses to start with.
#[test]
fn node_labels_are_judged_as_the_real_kubelet_judges_them() {
    let kubelet = Path::new(&support::mirror()).join("v1.20.2/bin/linux/amd64/kubelet");
    let dir = tempfile::tempdir().unwrap();
    let mut disagree = Vec::new();
    for key in [
        "example.com/tier",
        "tier",
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "kubernetes.io/role",
        "node-role.kubernetes.io/worker",
        "node-role.kubernetes.io/master",
        "node.kubernetes.io/pool",
        "node.kubernetes.io/instance-type",
        "x.node.kubernetes.io/y",
        "kubelet.kubernetes.io/x",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/rack",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "k8s.io/x",
        "foo.k8s.io/x",
        "node.k8s.io/x",
        "notkubernetes.io/x",
    ] {
        let out = std::process::Command::new(&kubelet)
            .arg(format!("--node-labels={key}=v"))
            .arg("--kubeconfig=/nonexistent/kubelet.conf")
            .arg("--bootstrap-kubeconfig=/nonexistent/bootstrap.conf")
            .arg(format!("--root-dir={}", dir.path().display()))
            .arg(format!("--cert-dir={}", dir.path().display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubelet cannot run here: {stderr}");
        let kubelet_refuses = stderr.contains("labels specified with --node-labels");
        let we_refuse = kubeforge::spec::syntax::node_label_key(key).is_err();
        if kubelet_refuses != we_refuse {
            disagree.push(format!(
                "{key}: kubelet refuses: {kubelet_refuses}, kubeforge refuses: {we_refuse}"
            ));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

/// The kubeadm phases accepted in `skipPhases` for 1.20 are the ones the real kubeadm
/// v1.20.2 lists in `init --help` / `join --help` (plus the `all` sub-phases and the
/// hidden wait-control-plane it also knows).
#[test]
fn skip_phases_for_1_20_are_the_real_kubeadm_phases() {
    use kubeforge::spec::syntax::{kubeadm_init_phases, kubeadm_join_phases};
    let kubeadm = Path::new(&support::mirror()).join("v1.20.2/bin/linux/amd64/kubeadm");
    for (cmd, ours) in [
        ("init", kubeadm_init_phases(20)),
        ("join", kubeadm_join_phases(20)),
    ] {
        let out = std::process::Command::new(&kubeadm)
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let block = help
            .split("following phases:\n```\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap_or_else(|| panic!("no phase list in kubeadm {cmd} --help:\n{help}"));
        let mut real = Vec::new();
        let mut parent = String::new();
        for line in block.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some(child) = name.strip_prefix('/') {
                real.push(format!("{parent}/{child}"));
            } else if !name.is_empty() {
                parent = name.to_string();
                real.push(parent.clone());
            }
        }
        assert!(real.len() > 10, "{cmd}: {real:?}");
        for r in &real {
            assert!(
                ours.contains(&r.as_str()),
                "kubeadm {cmd} has `{r}`, kubeforge refuses it"
            );
        }
        for o in &ours {
            assert!(
                real.iter().any(|r| r == o) || o.ends_with("/all") || *o == "wait-control-plane",
                "kubeforge accepts `{o}`, kubeadm {cmd} 1.20 does not list it"
            );
        }
    }
}

/// `backup.ship`: the control planes upload their snapshots to the s3:// state.
#[test]
fn snapshot_shipping_misuse_is_named() {
    let s3 = "  state: {url: 's3://b/p', endpoint: 'http://127.0.0.1:9000', allowHttp: true, pathStyle: true}\n";
    for ok in [
        docker(&format!(
            "{s3}  backup:\n    ship: {{accessKeyIdEnv: SHIP_ID, secretAccessKeyEnv: SHIP_SECRET}}\n"
        )),
        docker(&format!(
            "{s3}  backup:\n    ship: {{accessKeyIdEnv: A, secretAccessKeyEnv: B, sessionTokenEnv: C, endpoint: 'http://10.0.0.1:9000', binary: ./kubeforge-arm64}}\n"
        )),
    ] {
        assert_eq!(errors(&ok, None), Vec::<String>::new(), "{ok}");
    }
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "shipping without an s3 state",
            docker("  backup:\n    ship: {accessKeyIdEnv: A, secretAccessKeyEnv: B}\n"),
            "cluster.yaml:10:5: spec.backup.ship: the control planes can only ship snapshots to an s3:// state (spec.state.url); without it `kubeforge backup` and `apply` collect them from the nodes",
        ),
        (
            "shipping with the timer off",
            docker(&format!(
                "{s3}  backup:\n    intervalMinutes: 0\n    ship: {{accessKeyIdEnv: A, secretAccessKeyEnv: B}}\n"
            )),
            "cluster.yaml:12:5: spec.backup.ship: the timer is off (intervalMinutes: 0): there is nothing to ship",
        ),
        (
            "shipping key variable that is not one",
            docker(&format!(
                "{s3}  backup:\n    ship: {{accessKeyIdEnv: 'A B', secretAccessKeyEnv: B}}\n"
            )),
            "cluster.yaml:11:12: spec.backup.ship.accessKeyIdEnv: `A B` is not an environment variable name",
        ),
        (
            "shipping without its secret",
            docker(&format!("{s3}  backup:\n    ship: {{accessKeyIdEnv: A}}\n")),
            "cluster.yaml:11:5: spec.backup.ship.secretAccessKeyEnv: required field is missing",
        ),
        (
            "shipping endpoint that is not a URL",
            docker(&format!(
                "{s3}  backup:\n    ship: {{accessKeyIdEnv: A, secretAccessKeyEnv: B, endpoint: 'minio:9000; rm -rf /'}}\n"
            )),
            "cluster.yaml:11:54: spec.backup.ship.endpoint: `minio:9000; rm -rf /` is not a URL like https://minio.example.com:9000",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, text, want) in &cases {
        let got = errors(text, None);
        if got != [want.to_string()] {
            wrong.push(format!("{name}: got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
