//! `kubeforge inventory -f cluster.yaml --list | --host H`: the cluster's hosts as an
//! Ansible dynamic inventory (the inventory-script contract), with the groups Kubespray
//! uses, so existing playbooks keep working. Read-only: no lock, no SSH. Addresses come
//! from the cluster file's topology and, for providers that make their machines, from
//! the machines the state records (read without the state key: machines are not
//! secret).

use crate::error::Error;
use crate::output::print_json;
use crate::spec::{self, LoadedCluster, Provider, Role};
use crate::state::{Machine, StateStore};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const CONTROL_PLANE: &str = "kube_control_plane";
pub const NODES: &str = "kube_node";
pub const ETCD: &str = "etcd";
pub const CLUSTER: &str = "k8s_cluster";
/// The load balancers' group when the cluster file names none: the first name the
/// static provider reads for load balancers, so the output reads back as an inventory.
pub const LOAD_BALANCERS: &str = "lb";

/// What the command prints: the whole inventory or one host's variables.
#[derive(Debug, Clone)]
pub enum Query {
    List,
    Host(String),
}

pub async fn run(file: &Path, query: Query) -> Result<(), Error> {
    let c = spec::load_file(file)?;
    let machines = machines_in_state(&c).await?;
    let inv = inventory(&c, &machines);
    match query {
        Query::List => print_json(&inv)?,
        Query::Host(h) => match inv["_meta"]["hostvars"].get(&h) {
            Some(vars) => print_json(vars)?,
            None => {
                return Err(Error::Usage(format!(
                    "{}: no host `{h}` in cluster `{}` (hosts: {})",
                    file.display(),
                    c.name(),
                    c.topology
                        .hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    }
    Ok(())
}

/// The machines the state records, for providers that make them (a static inventory
/// is the whole truth, so its state is not read). No state yet: none.
async fn machines_in_state(c: &LoadedCluster) -> Result<BTreeMap<String, Machine>, Error> {
    if !c.cluster.spec.provider.makes_machines() {
        return Ok(BTreeMap::new());
    }
    let spec = &c.cluster.spec.state;
    let url = spec
        .url
        .clone()
        .unwrap_or_else(|| crate::state::default_url(c.name()));
    let backend = StateStore::backend_for(&url, &spec.options()?, &c.base_dir)?;
    let store = StateStore::with_backend(backend).with_cluster(Some(c.name().to_string()));
    Ok(match store.load_sealed().await? {
        Some((doc, _)) => doc.machines,
        None => BTreeMap::new(),
    })
}

/// The inventory as Ansible's `--list` wants it: groups with `hosts` (and `children`),
/// and every host's variables under `_meta.hostvars`.
pub fn inventory(c: &LoadedCluster, machines: &BTreeMap<String, Machine>) -> Value {
    let ssh = &c.cluster.spec.ssh;
    let lb_group = match &c.cluster.spec.provider {
        Provider::Static(s) => s
            .groups
            .load_balancers
            .first()
            .cloned()
            .unwrap_or_else(|| LOAD_BALANCERS.to_string()),
        _ => LOAD_BALANCERS.to_string(),
    };
    let lb_hosts = c.topology.endpoint.lb_hosts();
    // Every group is there, empty or not, so playbooks and `k8s_cluster`'s children
    // always resolve.
    let mut groups: BTreeMap<&str, Vec<String>> = [CONTROL_PLANE, NODES, ETCD, &lb_group]
        .into_iter()
        .map(|g| (g, Vec::new()))
        .collect();
    let mut hostvars = Map::new();
    for h in &c.topology.hosts {
        let machine = machines.get(&h.name);
        // The state's first address is the one kubeforge connects to.
        let address = machine
            .and_then(|m| m.addresses.first().cloned())
            .unwrap_or_else(|| h.address.to_string());
        let internal = h.internal_address.to_string();
        let mut vars = Map::new();
        vars.insert("ansible_host".into(), json!(address));
        vars.insert("ansible_user".into(), json!(h.ssh_user));
        vars.insert("ansible_port".into(), json!(h.ssh_port));
        vars.insert("ip".into(), json!(internal));
        vars.insert("access_ip".into(), json!(internal));
        if let Some(public) = machine.and_then(|m| {
            m.addresses
                .iter()
                .skip(1)
                .find(|a| **a != internal && **a != address)
        }) {
            vars.insert("public_ip".into(), json!(public));
        }
        if let Some(key) = &ssh.key_file {
            // As kubeforge reads it (`~/` expanded, relative to the working directory);
            // Ansible expands `~` itself.
            vars.insert("ansible_ssh_private_key_file".into(), json!(key));
        }
        if let Some(b) = &ssh.bastion {
            let jumps: Vec<String> = b
                .via
                .iter()
                .chain(std::iter::once(b))
                .map(|h| {
                    let user = h.user.as_deref().unwrap_or(&ssh.user);
                    format!("{user}@{}", spec::topology::host_port(&h.host, h.port))
                })
                .collect();
            vars.insert(
                "ansible_ssh_common_args".into(),
                json!(format!("-o ProxyJump={}", jumps.join(","))),
            );
        }
        vars.insert("kubeforge_roles".into(), json!(h.roles_text()));
        if let Some(id) = machine.and_then(|m| m.provider_id.as_ref()) {
            vars.insert("kubeforge_provider_id".into(), json!(id));
        }
        if !h.labels.is_empty() {
            vars.insert("node_labels".into(), json!(h.labels));
        }
        hostvars.insert(h.name.clone(), Value::Object(vars));
        if h.has(Role::ControlPlane) {
            groups
                .entry(CONTROL_PLANE)
                .or_default()
                .push(h.name.clone());
            // kubeadm's stacked etcd: one member per control-plane node.
            groups.entry(ETCD).or_default().push(h.name.clone());
        }
        if h.has(Role::Worker) {
            groups.entry(NODES).or_default().push(h.name.clone());
        }
        if lb_hosts.contains(&h.name) || h.has(Role::LoadBalancer) {
            groups.entry(&lb_group).or_default().push(h.name.clone());
        }
    }
    let mut out = Map::new();
    for (name, hosts) in &groups {
        out.insert((*name).into(), json!({ "hosts": hosts }));
    }
    out.insert(
        CLUSTER.into(),
        json!({ "children": [CONTROL_PLANE, NODES] }),
    );
    let mut top: Vec<&str> = groups.keys().copied().collect();
    top.push(CLUSTER);
    top.sort_unstable();
    top.dedup();
    out.insert(
        "all".into(),
        json!({
            "children": top,
            "vars": {
                "cluster_name": c.name(),
                "kube_version": c.cluster.spec.kubernetes_version,
                "kubeforge_control_plane_endpoint": c.topology.endpoint.address(),
            },
        }),
    );
    out.insert("_meta".into(), json!({ "hostvars": hostvars }));
    Value::Object(out)
}
