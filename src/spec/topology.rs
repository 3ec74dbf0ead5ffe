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
    pub labels: BTreeMap<String, String>,
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
}

impl Endpoint {
    /// `host:port` for kubeadm's controlPlaneEndpoint.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Vip { vip, port, .. } => match vip {
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                IpAddr::V4(v4) => format!("{v4}:{port}"),
            },
            Endpoint::External { host, port } => format!("{host}:{port}"),
        }
    }

    pub fn host(&self) -> String {
        match self {
            Endpoint::Vip { vip, .. } => vip.to_string(),
            Endpoint::External { host, .. } => host.clone(),
        }
    }

    pub fn lb_hosts(&self) -> &[String] {
        match self {
            Endpoint::Vip { lb_hosts, .. } => lb_hosts,
            Endpoint::External { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub hosts: Vec<Host>,
    pub node_subnet: Option<IpNet>,
    pub endpoint: Endpoint,
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
