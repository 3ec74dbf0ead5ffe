//! The hosts a cluster file describes, resolved: names, addresses and roles, whether they
//! come from the docker provider's naming scheme or from an inventory.

use super::inventory::Role;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    /// Address kubeforge connects to.
    pub address: IpAddr,
    /// Address the node advertises inside the cluster.
    pub internal_address: IpAddr,
    pub roles: BTreeSet<Role>,
    pub ssh_user: String,
    pub ssh_port: u16,
    /// This host's own private key (from the inventory; relative to the cluster file's
    /// directory, `~/` is the home directory); `None`: the cluster's (`spec.ssh`).
    pub ssh_key_file: Option<std::path::PathBuf>,
    pub labels: BTreeMap<String, String>,
    /// Where the host was found, when not in the cluster file or an inventory written
    /// for it (a Terraform resource address).
    pub origin: Option<String>,
}

impl Host {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Control-plane and worker nodes run kubelet; load-balancer nodes do not.
    pub fn is_kubernetes_node(&self) -> bool {
        self.has(Role::ControlPlane) || self.has(Role::Worker)
    }

    pub fn roles_text(&self) -> String {
        self.roles
            .iter()
            .map(Role::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `host:port`, with an IPv6 address in brackets (`[fd00::1]:6443`): the one place a
/// host and a port are put together.
pub fn host_port(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// How clients reach the apiservers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Endpoint {
    /// keepalived holds `vip`, HAProxy on `lb_hosts` listens on `port`.
    Vip {
        vip: IpAddr,
        port: u16,
        prefix_len: u8,
        lb_hosts: Vec<String>,
    },
    /// A load balancer kubeforge does not manage.
    External { host: String, port: u16 },
    /// The cloud's own load balancer at a fixed private address, made by the provider
    /// (`loadBalancer.type: cloud`), forwarding to the control planes' apiservers.
    Cloud { address: IpAddr, port: u16 },
}

impl Endpoint {
    /// `host:port` for kubeadm's controlPlaneEndpoint.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Vip { vip, port, .. } => host_port(&vip.to_string(), *port),
            Endpoint::External { host, port } => host_port(host, *port),
            Endpoint::Cloud { address, port } => host_port(&address.to_string(), *port),
        }
    }

    pub fn host(&self) -> String {
        match self {
            Endpoint::Vip { vip, .. } => vip.to_string(),
            Endpoint::External { host, .. } => host.clone(),
            Endpoint::Cloud { address, .. } => address.to_string(),
        }
    }

    pub fn lb_hosts(&self) -> &[String] {
        match self {
            Endpoint::Vip { lb_hosts, .. } => lb_hosts,
            Endpoint::External { .. } | Endpoint::Cloud { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub hosts: Vec<Host>,
    pub node_subnet: Option<IpNet>,
    pub endpoint: Endpoint,
    /// The pod /24 each node has (built-in pod network): what the state recorded and
    /// what the nodes' own CNI configuration says, learned in a session. A node keeps
    /// its /24 for its life; new nodes get free ones (`render::views::pod_cidrs`).
    #[serde(skip)]
    pub pod_cidr_pins: PodCidrPins,
}

/// Node name -> its pod /24, shared by the clones of a cluster in a session.
#[derive(Debug, Clone, Default)]
pub struct PodCidrPins(std::sync::Arc<std::sync::RwLock<BTreeMap<String, IpNet>>>);

impl PodCidrPins {
    pub fn get(&self) -> BTreeMap<String, IpNet> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }
    /// Pin these (a later pin of the same node wins: the node's own word is last).
    pub fn pin(&self, pins: impl IntoIterator<Item = (String, IpNet)>) {
        if let Ok(mut m) = self.0.write() {
            m.extend(pins);
        }
    }
    pub fn unpin(&self, name: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(name);
        }
    }
}

impl Topology {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.has(role))
    }

    pub fn control_planes(&self) -> Vec<&Host> {
        self.with_role(Role::ControlPlane).collect()
    }

    /// The control-plane node `kubeadm init` runs on: the first one listed.
    pub fn first_control_plane(&self) -> Option<&Host> {
        self.with_role(Role::ControlPlane).next()
    }

    /// Worker nodes that are not also control-plane nodes.
    pub fn workers(&self) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| h.has(Role::Worker) && !h.has(Role::ControlPlane))
            .collect()
    }

    pub fn kubernetes_nodes(&self) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| h.is_kubernetes_node())
            .collect()
    }

    /// Hosts running HAProxy + keepalived.
    pub fn lb_hosts(&self) -> Vec<&Host> {
        self.endpoint
            .lb_hosts()
            .iter()
            .filter_map(|n| self.host(n))
            .collect()
    }
}

/// Fixed addresses of the docker provider inside its subnet: `.1` is the gateway,
/// load balancers from `.2`, control-plane nodes from `.10`, workers from `.20`, and the
/// VIP is the last usable address.
pub mod docker_layout {
    pub const LB_OFFSET: u32 = 2;
    pub const LB_MAX: u32 = 8;
    pub const CP_OFFSET: u32 = 10;
    pub const CP_MAX: u32 = 9;
    pub const WORKER_OFFSET: u32 = 20;
    /// Cloud providers: load balancers from `.4` (AWS reserves `.1`-`.3`).
    pub const CLOUD_LB_OFFSET: u32 = 4;
    pub const CLOUD_LB_MAX: u32 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_bracketed_for_ipv6() {
        let ext = |host: &str| Endpoint::External {
            host: host.into(),
            port: 6443,
        };
        assert_eq!(ext("api.example.com").address(), "api.example.com:6443");
        assert_eq!(ext("10.0.0.1").address(), "10.0.0.1:6443");
        assert_eq!(ext("fd00::1").address(), "[fd00::1]:6443");
        let vip = Endpoint::Vip {
            vip: "fd00::10".parse().unwrap(),
            port: 8443,
            prefix_len: 64,
            lb_hosts: vec![],
        };
        assert_eq!(vip.address(), "[fd00::10]:8443");
    }
}
