//! Intent: the cluster file and the inventory, decoded, validated and resolved into a
//! `Topology`. Nothing here touches the network.

pub mod decode;
pub mod error;
pub mod inventory;
pub mod position;
pub mod ssh_config;
pub mod syntax;
pub mod terraform;
pub mod topology;
pub mod types;
pub mod validate;

pub use error::{SpecError, SpecErrors};
pub use inventory::Role;
pub use topology::{Endpoint, Host, Topology};
pub use types::*;

use error::Reporter;
use std::path::{Path, PathBuf};

/// A cluster file that decoded and validated, with its hosts resolved.
#[derive(Debug, Clone)]
pub struct LoadedCluster {
    pub cluster: Cluster,
    /// The cluster file as given.
    pub path: PathBuf,
    /// Directory relative paths in the cluster file are resolved against.
    pub base_dir: PathBuf,
    pub topology: Topology,
    pub warnings: Vec<SpecError>,
}

impl LoadedCluster {
    pub fn name(&self) -> &str {
        &self.cluster.metadata.name
    }

    pub fn version(&self) -> semver::Version {
        // Validated on load.
        validate::parse_kubernetes_version(&self.cluster.spec.kubernetes_version)
            .unwrap_or_else(|| semver::Version::new(1, validate::OLDEST_SUPPORTED_MINOR, 0))
    }
}

/// `~/` at the start of a path is the home directory.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

impl LoadedCluster {
    /// A path the cluster file names: `~/` is the home directory, a relative path is
    /// relative to the cluster file's directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.base_dir.join(expand_home(p))
    }
}

/// Read, decode and validate a cluster file (and its inventory).
pub fn load_file(path: &Path) -> Result<LoadedCluster, SpecErrors> {
    let text = decode::read_input(path, "cluster file")?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(&text, path, &base)
}

/// Decode and validate cluster-file text; `path` is used in messages, `base_dir` to find
/// the inventory.
pub fn load_str(text: &str, path: &Path, base_dir: &Path) -> Result<LoadedCluster, SpecErrors> {
    let value = decode::parse_yaml(text, path)?;
    if value.is_null() {
        return Err(SpecError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            field: String::new(),
            message: "the file is empty: expected a Cluster (apiVersion: kubeforge.dev/v1alpha1, kind: Cluster)".into(),
        }
        .into());
    }
    let positions = position::Positions::of(text);
    let mut rep = Reporter::new(path, &positions);
    let cluster: Option<Cluster> = decode::decode(value, &mut rep);
    // With type errors stepped over, the rest is still checked so that one run reports
    // every problem.
    let Some(cluster) = cluster else {
        let mut errors = rep.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(SpecErrors { errors });
    };
    let mut inv_errors = Vec::new();
    let inventory = match &cluster.spec.provider {
        Provider::Static(st) => {
            let hosts = match (&st.inventory, &st.terraform) {
                (Some(inv), None) => inventory::load(&base_dir.join(inv), &st.groups),
                (None, Some(tf)) => terraform::load(tf, base_dir, &rep),
                (Some(_), Some(_)) | (None, None) => Err(vec![rep.make(
                    "spec.provider.static",
                    "name where the hosts come from: `inventory: FILE` or `terraform: {state: ...}` (one of them)",
                )]),
            };
            match hosts {
                Ok(hosts) => {
                    let (jump, hosts): (Vec<_>, Vec<_>) =
                        hosts.into_iter().partition(|h| h.bastion);
                    Some((jump, hosts))
                }
                Err(errs) => {
                    inv_errors.extend(errs);
                    None
                }
            }
        }
        _ => None,
    };
    // Kubespray's `bastion` group: the jump host, unless the cluster file names one.
    let mut cluster = cluster;
    let inventory = match inventory {
        Some((jump, mut hosts)) => {
            if let Some(f) = cluster.spec.ssh.config_file.clone() {
                apply_ssh_config(
                    &mut cluster,
                    &mut hosts,
                    &f,
                    base_dir,
                    &rep,
                    &mut inv_errors,
                );
            }
            match jump.as_slice() {
                [] => {}
                [b] if cluster.spec.ssh.bastion.is_none() => {
                    cluster.spec.ssh.bastion = Some(types::Bastion {
                        host: b.address.clone(),
                        port: b.ssh_port.unwrap_or(22),
                        user: b.ssh_user.clone(),
                        key_file: b.ssh_key_file.clone(),
                        via: Vec::new(),
                    });
                }
                [_] => {}
                many => inv_errors.push(many[1].origin.error(
                    "",
                    format!(
                        "the `bastion` group holds {} hosts: kubeforge jumps through one (name it in spec.ssh.bastion)",
                        many.len()
                    ),
                )),
            }
            Some(hosts)
        }
        None => None,
    };
    let topology = validate::check(&cluster, inventory, &mut rep, &mut inv_errors);
    let mut errors = rep.errors;
    errors.extend(inv_errors);
    // In file order, as a person fixes them.
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match topology {
        Some(topology) if errors.is_empty() => Ok(LoadedCluster {
            cluster,
            path: path.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            topology,
            warnings: rep.warnings,
        }),
        _ => Err(SpecErrors { errors }),
    }
}

/// `~/.ssh/config` for inventory hosts: each host's `User`, `Port` and `IdentityFile`
/// where the inventory gives none; one `ProxyJump` shared by every host becomes the
/// jump host when `spec.ssh.bastion` is not set.
fn apply_ssh_config(
    cluster: &mut Cluster,
    hosts: &mut [inventory::InventoryHost],
    file: &str,
    base_dir: &Path,
    rep: &Reporter<'_>,
    errors: &mut Vec<SpecError>,
) {
    let field = "spec.ssh.configFile";
    let path = base_dir.join(expand_home(file));
    let config = match ssh_config::SshClientConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            errors.push(rep.make(field, e));
            return;
        }
    };
    let at = |e: ssh_config::ConfigError| SpecError {
        file: e.file.unwrap_or_else(|| path.clone()),
        line: Some(e.line),
        column: None,
        field: String::new(),
        message: e.message,
    };
    let mut jumps = std::collections::BTreeSet::new();
    let mut without_jump = 0;
    for h in hosts.iter_mut() {
        let s = match config.lookup(&[h.name.as_str(), h.address.as_str()]) {
            Ok(s) => s,
            Err(e) => {
                errors.push(at(e));
                return;
            }
        };
        // The inventory's per-host values first, then what the cluster file says
        // outright, then the SSH configuration.
        let written = |f: &str| rep.positions.contains(&format!("spec.ssh.{f}"));
        if !written("user") {
            h.ssh_user = h.ssh_user.take().or(s.user);
        }
        if !written("port") {
            h.ssh_port = h.ssh_port.or(s.port);
        }
        if !written("keyFile") {
            h.ssh_key_file = h.ssh_key_file.take().or(s.identity_file);
        }
        match s.proxy_jump {
            Some(j) => {
                jumps.insert(j);
            }
            None => without_jump += 1,
        }
    }
    if jumps.is_empty() || cluster.spec.ssh.bastion.is_some() {
        return;
    }
    if jumps.len() > 1 || without_jump > 0 {
        errors.push(rep.make(
            field,
            format!(
                "{} reaches the hosts through different jump hosts ({}{}): kubeforge jumps through one; name it in spec.ssh.bastion",
                path.display(),
                jumps.iter().cloned().collect::<Vec<_>>().join(", "),
                if without_jump > 0 { ", and none for some hosts" } else { "" }
            ),
        ));
        return;
    }
    let Some(jump) = jumps.into_iter().next() else {
        return;
    };
    match jump_chain(&config, &jump) {
        Ok(mut hops) => {
            let Some(mut last) = hops.pop() else {
                return;
            };
            last.via = hops;
            cluster.spec.ssh.bastion = Some(last);
        }
        Err(e) => errors.push(rep.make(field, format!("{}: {e}", path.display()))),
    }
}

/// The jump hosts of a `ProxyJump` value, in the order they are connected to: each hop
/// with its own block (an alias with its `HostName`, user, port and key), and before the
/// first hop the jump hosts of *its* own `ProxyJump`, as OpenSSH does (at most 8 hops).
fn jump_chain(
    config: &ssh_config::SshClientConfig,
    jump: &str,
) -> Result<Vec<types::Bastion>, String> {
    let mut chain: Vec<types::Bastion> = Vec::new();
    let mut value = jump.to_string();
    loop {
        let mut hops = Vec::new();
        for (user, host, port) in ssh_config::parse_jumps(&value)? {
            let own = config.lookup(&[host.as_str()]).unwrap_or_default();
            hops.push((
                types::Bastion {
                    host: own.host_name.clone().unwrap_or(host),
                    port: port.or(own.port).unwrap_or(22),
                    user: user.or(own.user.clone()),
                    key_file: own.identity_file.clone(),
                    via: Vec::new(),
                },
                own.proxy_jump.clone(),
            ));
        }
        let before = hops.first().and_then(|(_, j)| j.clone());
        hops.extend(chain.drain(..).map(|b| (b, None)));
        chain = hops.into_iter().map(|(b, _)| b).collect();
        if chain.len() > 8 {
            return Err(format!(
                "ProxyJump `{jump}`: more than 8 jump hosts (a loop?)"
            ));
        }
        match before {
            Some(j) if j != "none" => value = j,
            _ => return Ok(chain),
        }
    }
}
