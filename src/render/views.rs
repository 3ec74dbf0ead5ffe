//! Typed inputs of the templates. Everything a template prints comes from here.

use super::Secrets;
use crate::spec::{Cni, Endpoint, HealthCheck, Host, LoadedCluster, Provider, Role};
use ipnet::IpNet;
use serde::Serialize;

pub const CHECK_SCRIPT: &str = "/etc/keepalived/check_haproxy.sh";
/// keepalived's notify_master script moving the VIP through the cloud API, and its
/// configuration (credentials: mode 0600).
pub const FAILOVER_SCRIPT: &str = "/usr/local/lib/kubeforge/vip-failover";
pub const FAILOVER_CONFIG: &str = "/etc/kubeforge/vip-failover.json";
pub const BIN_DIR: &str = "/usr/local/bin";
/// Container machines: recreates kubelet's cgroup root before kubelet starts.
pub const CGROUP_SCRIPT: &str = "/usr/local/lib/kubeforge/kubelet-cgroup-root.sh";

/// Host settings that differ between real hosts and container machines.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Docker provider: machines share the kernel and disk of one host.
    pub container: bool,
    pub cgroup_driver: &'static str,
    pub fail_swap_on: bool,
    /// runc cannot lower oom_score_adj without CAP_SYS_RESOURCE (not granted to machines).
    pub restrict_oom_score_adj: bool,
    pub cni_bin_dir: &'static str,
    /// kubernetes/kubernetes#99305 workaround for 1.20-1.21 in container machines.
    pub etcd_ephemeral_storage_patch: bool,
    pub image_repository: String,
    pub sandbox_image: String,
}

/// The pause image tag kubeadm of a release expects: the artifact catalogue's (one
/// table for what is delivered and what containerd is told to use), `3.10` past it.
pub fn pause_version(v: &semver::Version) -> &'static str {
    crate::artifacts::catalogue::pinned_images(v.minor, v.patch)
        .map(|p| p.pause)
        .unwrap_or("3.10")
}

impl Profile {
    pub fn of(c: &LoadedCluster) -> Profile {
        let container = match &c.cluster.spec.provider {
            Provider::Docker(_) => true,
            Provider::Static(s) => s.container_hosts,
            _ => false,
        };
        let v = c.version();
        let image_repository = c
            .cluster
            .spec
            .artifacts
            .image_repository
            .clone()
            .unwrap_or_else(|| {
                if v.minor < 25 {
                    "k8s.gcr.io".into()
                } else {
                    "registry.k8s.io".into()
                }
            });
        Profile {
            container,
            cgroup_driver: if container { "cgroupfs" } else { "systemd" },
            fail_swap_on: !container,
            restrict_oom_score_adj: container,
            // Debian's containernetworking-plugins in the node image; upstream tarballs
            // install to /opt/cni/bin.
            cni_bin_dir: if container {
                "/usr/lib/cni"
            } else {
                "/opt/cni/bin"
            },
            etcd_ephemeral_storage_patch: container && v.minor < 22,
            sandbox_image: format!("{image_repository}/pause:{}", pause_version(&v)),
            image_repository,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BaseView {
    pub cluster_name: String,
    pub cgroup_script: &'static str,
    pub bin_dir: &'static str,
    pub sandbox_image: String,
    pub systemd_cgroup: bool,
    pub restrict_oom_score_adj: bool,
    pub cni_bin_dir: &'static str,
}

pub fn base(c: &LoadedCluster, p: &Profile) -> BaseView {
    BaseView {
        cluster_name: c.name().to_string(),
        cgroup_script: CGROUP_SCRIPT,
        bin_dir: BIN_DIR,
        sandbox_image: p.sandbox_image.clone(),
        systemd_cgroup: p.cgroup_driver == "systemd",
        restrict_oom_score_adj: p.restrict_oom_score_adj,
        cni_bin_dir: p.cni_bin_dir,
    }
}

#[derive(Debug, Serialize)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct HaproxyView {
    pub cluster_name: String,
    /// Container machines cannot raise their open-files limit (no CAP_SYS_RESOURCE)
    /// above 1024, which caps HAProxy at a few hundred connections there.
    pub maxconn: u32,
    pub bind: String,
    pub port: u16,
    pub health_check: &'static str,
    pub backends: Vec<Backend>,
}

pub fn haproxy(c: &LoadedCluster) -> HaproxyView {
    let t = &c.topology;
    let port = match &t.endpoint {
        Endpoint::Vip { port, .. } => *port,
        Endpoint::External { port, .. } | Endpoint::Cloud { port, .. } => *port,
    };
    HaproxyView {
        cluster_name: c.name().to_string(),
        maxconn: if Profile::of(c).container { 400 } else { 20000 },
        // Bind every address: the VIP moves between nodes.
        bind: "*".into(),
        port,
        health_check: match c.cluster.spec.load_balancer.health_check {
            HealthCheck::HttpsReadyz => "https-readyz",
            HealthCheck::Tcp => "tcp",
        },
        backends: t
            .control_planes()
            .iter()
            .map(|h| Backend {
                name: h.name.clone(),
                address: h.internal_address.to_string(),
                port: c.cluster.spec.networking.api_server_port,
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct KeepalivedView {
    pub cluster_name: String,
    pub router_id: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u32,
    pub self_address: String,
    pub peers: Vec<String>,
    pub vip: String,
    pub prefix_len: u8,
    pub check_script: &'static str,
    /// `script config` run when this node becomes MASTER (`loadBalancer.failover`).
    pub notify_master: Option<String>,
}

/// The private addresses of the other load balancers than `h` (keepalived's unicast
/// peers, the failover script's peers).
fn lb_peers(c: &LoadedCluster, h: &Host) -> Vec<String> {
    c.topology
        .lb_hosts()
        .iter()
        .filter(|p| p.name != h.name)
        .map(|p| p.internal_address.to_string())
        .collect()
}

/// keepalived settings for one load-balancer host. Priorities fall by 10 down the host
/// list so the first host holds the VIP when all are healthy.
pub fn keepalived(c: &LoadedCluster, h: &Host) -> Option<KeepalivedView> {
    let Endpoint::Vip {
        vip,
        prefix_len,
        lb_hosts,
        ..
    } = &c.topology.endpoint
    else {
        return None;
    };
    let idx = lb_hosts.iter().position(|n| n == &h.name)?;
    let peers = lb_peers(c, h);
    Some(KeepalivedView {
        cluster_name: c.name().to_string(),
        router_id: h.name.clone(),
        interface: c.cluster.spec.load_balancer.interface.clone(),
        virtual_router_id: c.cluster.spec.load_balancer.virtual_router_id,
        priority: 150u32.saturating_sub(10 * idx as u32).max(1),
        self_address: h.internal_address.to_string(),
        peers,
        vip: vip.to_string(),
        prefix_len: *prefix_len,
        check_script: CHECK_SCRIPT,
        notify_master: c
            .cluster
            .spec
            .load_balancer
            .failover
            .as_ref()
            .map(|_| format!("{FAILOVER_SCRIPT} {FAILOVER_CONFIG}")),
    })
}

/// The failover configuration with its credential values replaced by `<redacted>`
/// (what `kubeforge render` writes; the load balancers get the real file).
pub fn redact_failover(content: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(content) else {
        return "<redacted: holds secrets>\n".into();
    };
    if v.get("token").is_some() {
        v["token"] = "<redacted>".into();
    }
    if let Some(c) = v.get_mut("credentials").and_then(|c| c.as_object_mut()) {
        c.insert("secretAccessKey".into(), "<redacted>".into());
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// The failover script's configuration for one load balancer (JSON, the script's
/// header lists the keys), and whether it holds a secret. The credentials are read
/// from the variables `loadBalancer.failover` names on the machine running kubeforge.
pub fn failover_config(c: &LoadedCluster, h: &Host) -> Result<Option<(String, bool)>, String> {
    let Some(f) = &c.cluster.spec.load_balancer.failover else {
        return Ok(None);
    };
    let Endpoint::Vip { vip, .. } = &c.topology.endpoint else {
        return Ok(None);
    };
    let peers = lb_peers(c, h);
    let mut v = serde_json::json!({
        "cluster": c.name(),
        "vip": vip.to_string(),
        "self": h.internal_address.to_string(),
        "peers": peers,
        "timeoutSeconds": 120,
    });
    let var = |name: &str| -> Result<String, String> {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!("the variable {name} is not set (the load balancers' failover credential)")
            })
    };
    let secret = match &c.cluster.spec.provider {
        Provider::Aws(a) => {
            let region = crate::provider::aws::region_of(a);
            v["provider"] = "aws".into();
            v["endpoint"] = crate::provider::aws::endpoint_of(a, &region).into();
            v["region"] = region.into();
            match (&f.access_key_id_env, &f.secret_access_key_env) {
                (Some(id), Some(secret)) => {
                    v["credentials"] = serde_json::json!({
                        "accessKeyId": var(id)?,
                        "secretAccessKey": var(secret)?,
                        "sessionToken": null,
                    });
                    true
                }
                _ => false,
            }
        }
        Provider::Hetzner(hz) => {
            v["provider"] = "hetzner".into();
            v["endpoint"] = crate::provider::hetzner::endpoint_of(hz).into();
            let name = f
                .token_env
                .clone()
                .or_else(|| hz.token_env.clone())
                .unwrap_or_else(|| "HCLOUD_TOKEN".into());
            v["token"] = var(&name)?.into();
            true
        }
        _ => return Ok(None),
    };
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    Ok(Some((text + "\n", secret)))
}

#[derive(Debug, Serialize)]
pub struct KubeletView {
    pub cgroup_driver: &'static str,
    pub fail_swap_on: bool,
    pub container: bool,
}

#[derive(Debug, Serialize)]
pub struct KubeadmView {
    pub cluster_name: String,
    pub kubernetes_version: String,
    pub control_plane_endpoint: String,
    pub image_repository: String,
    pub pod_subnet: String,
    pub service_subnet: String,
    pub dns_domain: String,
    pub cert_sans: Vec<String>,
    pub advertise_address: String,
    pub node_ip: String,
    pub bind_port: u16,
    pub node_name: String,
    /// kubelet's `--node-labels` (`key=value,...`, keys sorted): the node's pool labels
    /// and its inventory labels, set by kubelet when the node registers.
    pub node_labels: String,
    pub cri_socket: &'static str,
    pub token: String,
    pub certificate_key: String,
    pub ca_cert_hash: String,
    pub control_plane: bool,
    /// Control-plane node that also runs workloads (no NoSchedule taint).
    pub schedulable: bool,
    /// kube-controller-manager hands out pod CIDRs, unless kubeforge's bridge CNI does.
    pub allocate_node_cidrs: bool,
    pub kubelet: KubeletView,
}

pub fn kubeadm(c: &LoadedCluster, h: &Host, p: &Profile, s: &Secrets) -> KubeadmView {
    let spec = &c.cluster.spec;
    let v = c.version();
    let api = super::kubeadm_api_version(&v);
    let t = &c.topology;
    let mut sans: Vec<String> = vec![t.endpoint.host()];
    sans.extend(t.control_planes().iter().flat_map(|cp| {
        [
            cp.name.clone(),
            cp.address.to_string(),
            cp.internal_address.to_string(),
        ]
    }));
    sans.extend(spec.load_balancer.cert_sans.iter().cloned());
    sans.push("127.0.0.1".into());
    sans.push("localhost".into());
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    KubeadmView {
        cluster_name: c.name().to_string(),
        kubernetes_version: format!("v{v}"),
        control_plane_endpoint: t.endpoint.address(),
        image_repository: p.image_repository.clone(),
        pod_subnet: spec.networking.pod_subnet.clone(),
        service_subnet: spec.networking.service_subnet.clone(),
        dns_domain: spec.networking.dns_domain.clone(),
        cert_sans: sans,
        advertise_address: h.internal_address.to_string(),
        node_ip: h.internal_address.to_string(),
        bind_port: spec.networking.api_server_port,
        node_name: h.name.clone(),
        node_labels: h
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        cri_socket: if api == "v1beta2" {
            "/run/containerd/containerd.sock"
        } else {
            "unix:///run/containerd/containerd.sock"
        },
        token: s.bootstrap_token.clone(),
        certificate_key: s.certificate_key.clone(),
        ca_cert_hash: s.ca_cert_hash_or_pending(),
        control_plane: h.has(Role::ControlPlane),
        schedulable: h.has(Role::ControlPlane) && h.has(Role::Worker),
        allocate_node_cidrs: spec.networking.cni != Cni::Bridge,
        kubelet: KubeletView {
            cgroup_driver: p.cgroup_driver,
            fail_swap_on: p.fail_swap_on,
            container: p.container,
        },
    }
}

/// The built-in pod network (`networking.cni: bridge`): each Kubernetes node bridges its
/// own pods (`cni0`, one /24 of the pod subnet) and reaches the other nodes' pods through
/// a VXLAN overlay between node addresses, as flannel's vxlan backend does, so the node
/// network only ever carries node addresses (UDP 8472 between nodes).
#[derive(Debug, Serialize)]
pub struct CniView {
    /// This node's pod /24 (host-local IPAM on cni0).
    pub pod_cidr: String,
    /// The whole pod subnet: pod traffic leaving it is masqueraded.
    pub pod_subnet: String,
    /// Its VXLAN endpoint: the node's internal address, the VTEP address (the /24's
    /// network address, as flannel does) and the VXLAN device's fixed MAC address.
    pub vtep: Vtep,
    /// Every other Kubernetes node: a route to its /24 via its VTEP, a neighbour entry
    /// (VTEP address -> MAC) and a forwarding entry (MAC -> node address).
    pub peers: Vec<Vtep>,
    pub device: &'static str,
    pub vni: u32,
    pub port: u16,
    /// Bytes VXLAN adds to each packet (outer IPv4 + UDP + VXLAN + inner Ethernet): the
    /// device's and the pods' MTU is the underlying interface's minus this.
    pub overhead: u32,
    /// Where the script writes the CNI config once it knows the MTU.
    pub conflist_path: &'static str,
    pub conflist_template: &'static str,
    pub script: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Vtep {
    pub node: String,
    pub node_ip: String,
    pub pod_cidr: String,
    pub address: String,
    pub mac: String,
}

/// VXLAN device of the built-in pod network (at most 15 characters, IFNAMSIZ).
pub const VXLAN_DEVICE: &str = "kubeforge.vxlan";
/// VXLAN network identifier: not flannel's default 1, so flannel.1 can share the port.
pub const VXLAN_VNI: u32 = 4242;
/// The Linux kernel's (and flannel's) VXLAN UDP port.
pub const VXLAN_PORT: u16 = 8472;
pub const PODNET_SCRIPT: &str = "/usr/local/lib/kubeforge/podnet.sh";
pub const PODNET_UNIT: &str = "kubeforge-podnet";
pub const CONFLIST_PATH: &str = "/etc/cni/net.d/10-kubeforge.conflist";
/// The CNI config as rendered, with `@MTU@` for the script to fill in.
pub const CONFLIST_TEMPLATE: &str = "/etc/kubeforge/podnet/10-kubeforge.conflist.in";

/// The /24 of pod addresses of a Kubernetes node ([`pod_cidrs`]). Known at plan time,
/// so every node's routes can be written before any node exists; kube-controller-manager
/// does not allocate node CIDRs with this network (`allocate-node-cidrs: false`).
pub fn pod_cidr(c: &LoadedCluster, h: &Host) -> Option<IpNet> {
    pod_cidrs(c)
        .into_iter()
        .find(|(n, _)| n.name == h.name)
        .map(|(_, cidr)| cidr)
}

/// Every Kubernetes node with its pod /24, in host order: a node keeps the /24 it was
/// given (the topology's pins: the state's record and the node's own CNI configuration),
/// and nodes without one get the lowest /24 nobody holds, in host order (control-plane
/// nodes, then workers). A fresh cluster thus numbers its nodes in order, and nodes
/// that leave or join never move another node's pods.
pub fn pod_cidrs(c: &LoadedCluster) -> Vec<(&Host, IpNet)> {
    let Ok(net) = c.cluster.spec.networking.pod_subnet.parse::<IpNet>() else {
        return Vec::new();
    };
    let Ok(subnets) = net.subnets(24) else {
        return Vec::new();
    };
    let pins: std::collections::BTreeMap<String, IpNet> = c
        .topology
        .pod_cidr_pins
        .get()
        .into_iter()
        .filter(|(_, p)| p.prefix_len() == 24 && net.contains(p))
        .collect();
    let held: std::collections::BTreeSet<IpNet> = pins.values().copied().collect();
    let mut free = subnets.filter(|s| !held.contains(s));
    let mut taken = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for h in c.topology.kubernetes_nodes() {
        let cidr = match pins.get(&h.name) {
            // Two nodes never share one (a pin copied by hand): the second gets a free one.
            Some(p) if taken.insert(*p) => *p,
            _ => match free.next() {
                Some(s) => s,
                None => break,
            },
        };
        out.push((h, cidr));
    }
    out
}

/// A node's VXLAN endpoint: VTEP address = its /24's network address; MAC = 0e:6b (a
/// locally administered unicast prefix) followed by the four bytes of that address, so
/// every node can write every other node's neighbour and forwarding entries itself.
fn vtep(h: &Host, cidr: &IpNet) -> Option<Vtep> {
    let std::net::IpAddr::V4(addr) = cidr.network() else {
        return None;
    };
    let [a, b, cc, d] = addr.octets();
    Some(Vtep {
        node: h.name.clone(),
        node_ip: h.internal_address.to_string(),
        pod_cidr: cidr.to_string(),
        address: addr.to_string(),
        mac: format!("0e:6b:{a:02x}:{b:02x}:{cc:02x}:{d:02x}"),
    })
}

pub fn cni(c: &LoadedCluster, h: &Host) -> Option<CniView> {
    (c.cluster.spec.networking.cni == Cni::Bridge).then_some(())?;
    let all = pod_cidrs(c);
    let (own_host, own) = all.iter().find(|(n, _)| n.name == h.name)?;
    let peers = all
        .iter()
        .filter(|(o, _)| o.name != h.name)
        .filter_map(|(o, cidr)| vtep(o, cidr))
        .collect();
    Some(CniView {
        pod_cidr: own.to_string(),
        pod_subnet: c.cluster.spec.networking.pod_subnet.clone(),
        vtep: vtep(own_host, own)?,
        peers,
        device: VXLAN_DEVICE,
        vni: VXLAN_VNI,
        port: VXLAN_PORT,
        overhead: 50,
        conflist_path: CONFLIST_PATH,
        conflist_template: CONFLIST_TEMPLATE,
        script: PODNET_SCRIPT,
    })
}

/// The etcd snapshot timer: its unit name, script and where it keeps snapshots.
pub const SNAPSHOT_UNIT: &str = "kubeforge-etcd-snapshot";
pub const SNAPSHOT_SCRIPT: &str = "/usr/local/lib/kubeforge/etcd-snapshot.sh";
pub const SNAPSHOT_TIMER_DIR: &str = "/var/lib/kubeforge/snapshots";

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn cluster(cps: u32, workers: u32) -> crate::spec::LoadedCluster {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local.yaml"),
        )
        .unwrap()
        .replace("count: 3", &format!("count: {cps}"))
        .replace(
            "count: 2\n      # Set",
            &format!("count: {workers}\n      # Set"),
        );
        crate::spec::load_str(&text, Path::new("local.yaml"), Path::new(".")).unwrap()
    }

    fn cidrs(c: &crate::spec::LoadedCluster) -> Vec<(String, String)> {
        super::pod_cidrs(c)
            .into_iter()
            .map(|(h, n)| (h.name.clone(), n.to_string()))
            .collect()
    }

    #[test]
    fn nodes_keep_their_pod_subnet_when_others_leave_or_join() {
        // Fresh: in host order.
        let c = cluster(3, 2);
        let before = cidrs(&c);
        assert_eq!(before[0], ("local-cp-1".into(), "10.244.0.0/24".into()));
        assert_eq!(before[4], ("local-worker-2".into(), "10.244.4.0/24".into()));
        // Two control planes leave: the workers keep theirs (pinned by the state).
        let fewer = cluster(1, 2);
        fewer
            .topology
            .pod_cidr_pins
            .pin(before.iter().map(|(n, s)| (n.clone(), s.parse().unwrap())));
        let after = cidrs(&fewer);
        assert_eq!(
            after,
            vec![
                ("local-cp-1".into(), "10.244.0.0/24".into()),
                ("local-worker-1".into(), "10.244.3.0/24".into()),
                ("local-worker-2".into(), "10.244.4.0/24".into()),
            ]
        );
        // A new worker gets the lowest /24 nobody holds (cp-2 and cp-3 were forgotten).
        let more = cluster(1, 3);
        more.topology
            .pod_cidr_pins
            .pin(after.iter().map(|(n, s)| (n.clone(), s.parse().unwrap())));
        assert_eq!(
            cidrs(&more)[3],
            ("local-worker-3".into(), "10.244.1.0/24".into())
        );
    }
}
