//! Bad cluster files and inventories: each case asserts the exact messages, with file,
//! line, column and field. The loader is the library's; `cli.rs` runs the binary.

use kubeforge::spec::{load_str, SpecErrors};
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
            "cluster.yaml:5:1: spec.ssh: the static provider needs a way to log in: set keyFile or agent: true",
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
            "cluster.yaml:15:18: spec.loadBalancer.type: unknown value `nginx`, expected haproxy-keepalived or external",
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
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "aws without image",
            cloud("    aws: {region: eu-west-1}\n", ""),
            "cluster.yaml:8:5: spec.provider.aws.image: required field is missing",
        ),
        (
            "aws unknown field",
            cloud("    aws: {image: ami-1, instanceTyp: t3.large}\n", ""),
            "cluster.yaml:8:25: spec.provider.aws.instanceTyp: unknown field `instanceTyp`, expected one of image, region, endpoint, profile, availabilityZone, instanceType, controlPlaneInstanceType, loadBalancerInstanceType, vpcCidr, subnet, useDefaultVpc, allowedCidrs, rootVolumeGb",
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
            "cluster.yaml:8:15: spec.provider.hetzner.serverTyp: unknown field `serverTyp`, expected one of tokenEnv, endpoint, location, networkZone, serverType, controlPlaneServerType, loadBalancerServerType, image, ipRange, subnet, allowedCidrs",
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
