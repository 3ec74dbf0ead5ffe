//! Bare-metal hosts for the static provider. Three formats are read:
//! - kubeforge's own YAML (`kind: Inventory`, a list of hosts with roles);
//! - an Ansible INI inventory (what Kubespray and hand-written playbooks use);
//! - an Ansible YAML inventory (`all: {hosts, children}`).
//!
//! Ansible groups are mapped to roles through `GroupNames`.

use super::decode;
use super::error::{Reporter, SpecError};
use super::position::{join, Pos, Positions};
use super::types::{GroupNames, API_VERSION, KIND_INVENTORY};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    ControlPlane,
    Worker,
    LoadBalancer,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::LoadBalancer => "load-balancer",
        }
    }

    /// The role `as_str` names.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::ControlPlane, Role::Worker, Role::LoadBalancer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Where a host was defined, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub field: String,
    pub pos: Option<Pos>,
}

impl Origin {
    pub fn error(&self, field_suffix: &str, message: impl Into<String>) -> SpecError {
        let field = if field_suffix.is_empty() {
            self.field.clone()
        } else {
            join(&self.field, field_suffix)
        };
        SpecError {
            file: self.file.clone(),
            line: self.pos.map(|p| p.line),
            column: self.pos.map(|p| p.column),
            field,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InventoryHost {
    pub name: String,
    /// Address kubeforge connects to over SSH.
    pub address: String,
    /// Address the node uses inside the cluster (default: `address`).
    pub internal_address: Option<String>,
    pub roles: BTreeSet<Role>,
    pub ssh_user: Option<String>,
    pub ssh_port: Option<u16>,
    /// Private key for this host (`ansible_ssh_private_key_file`, `sshKeyFile`).
    pub ssh_key_file: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub origin: Origin,
    /// The Terraform resource address it was read from (hosts from a Terraform state).
    pub resource: Option<String>,
    /// The jump host of an Ansible inventory (Kubespray's `bastion` group): not a node;
    /// kubeforge reaches the hosts through it unless `spec.ssh.bastion` says otherwise.
    pub bastion: bool,
}

impl InventoryHost {
    /// Whether the host's roles were written in kubeforge's own inventory (`hosts[i]`),
    /// rather than derived from Ansible groups.
    pub fn roles_written(&self) -> bool {
        self.origin.field.starts_with("hosts[")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InventoryFile {
    api_version: String,
    kind: String,
    hosts: Vec<HostEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HostEntry {
    name: String,
    address: String,
    internal_address: Option<String>,
    roles: Vec<Role>,
    ssh_user: Option<String>,
    ssh_port: Option<u16>,
    ssh_key_file: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Read an inventory file in any of the supported formats.
pub fn load(path: &Path, groups: &GroupNames) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    let text = decode::read_input(path, "inventory").map_err(|e| vec![e])?;
    parse(&text, path, groups)
}

pub fn parse(
    text: &str,
    path: &Path,
    groups: &GroupNames,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    if looks_like_ini(text, path) {
        return parse_ini(text, path, groups);
    }
    let value = decode::parse_yaml(text, path).map_err(|e| vec![e])?;
    let positions = Positions::of(text);
    let is_kubeforge = matches!(&value, Value::Mapping(m) if m.contains_key("kind") || m.contains_key("apiVersion"));
    if is_kubeforge {
        parse_kubeforge(value, path, &positions)
    } else {
        parse_ansible_yaml(&value, path, &positions, groups)
    }
}

fn looks_like_ini(text: &str, path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "ini" || ext == "cfg" {
        return true;
    }
    if ext == "yaml" || ext == "yml" {
        return false;
    }
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .is_some_and(|l| l.starts_with('['))
}

fn parse_kubeforge(
    value: Value,
    path: &Path,
    positions: &Positions,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    let mut rep = Reporter::new(path, positions);
    let file: Option<InventoryFile> = decode::decode(value, &mut rep);
    let Some(file) = file else {
        return Err(rep.errors);
    };
    if file.api_version != API_VERSION {
        rep.error(
            "apiVersion",
            format!("expected `{API_VERSION}`, found `{}`", file.api_version),
        );
    }
    if file.kind != KIND_INVENTORY {
        rep.error(
            "kind",
            format!("expected `{KIND_INVENTORY}`, found `{}`", file.kind),
        );
    }
    let mut hosts = Vec::new();
    for (i, h) in file.hosts.into_iter().enumerate() {
        let field = format!("hosts[{i}]");
        if h.roles.is_empty() {
            rep.error(
                &join(&field, "roles"),
                "a host needs at least one role (controlPlane, worker, loadBalancer)",
            );
        }
        hosts.push(InventoryHost {
            resource: None,
            bastion: false,
            name: h.name,
            address: h.address,
            internal_address: h.internal_address,
            roles: h.roles.into_iter().collect(),
            ssh_user: h.ssh_user,
            ssh_port: h.ssh_port,
            ssh_key_file: h.ssh_key_file,
            labels: h.labels,
            origin: Origin {
                file: path.to_path_buf(),
                pos: positions.find(&field),
                field,
            },
        });
    }
    if rep.errors.is_empty() {
        Ok(hosts)
    } else {
        Err(rep.errors)
    }
}

/// A host as Ansible describes it: its variables and the groups it is in.
#[derive(Debug, Default)]
struct AnsibleHost {
    vars: BTreeMap<String, String>,
    groups: BTreeSet<String>,
    origin: Option<Origin>,
}

#[derive(Debug, Default)]
struct AnsibleInventory {
    hosts: BTreeMap<String, AnsibleHost>,
    /// group -> child groups
    children: BTreeMap<String, BTreeSet<String>>,
    /// group -> variables
    group_vars: BTreeMap<String, BTreeMap<String, String>>,
    /// Order in which hosts first appeared (Ansible keeps file order).
    order: Vec<String>,
}

impl AnsibleInventory {
    fn add_host(
        &mut self,
        name: &str,
        group: &str,
        vars: BTreeMap<String, String>,
        origin: Origin,
    ) {
        if !self.hosts.contains_key(name) {
            self.order.push(name.to_string());
        }
        let h = self.hosts.entry(name.to_string()).or_default();
        h.groups.insert(group.to_string());
        h.vars.extend(vars);
        if h.origin.is_none() {
            h.origin = Some(origin);
        }
    }

    /// Every group the host is in, directly or through parent groups' `children`.
    fn all_groups(&self, direct: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = direct.clone();
        loop {
            let mut added = false;
            for (parent, kids) in &self.children {
                if !out.contains(parent) && kids.iter().any(|k| out.contains(k)) {
                    out.insert(parent.clone());
                    added = true;
                }
            }
            if !added {
                return out;
            }
        }
    }

    fn into_hosts(self, groups: &GroupNames, errors: &mut Vec<SpecError>) -> Vec<InventoryHost> {
        let mut out = Vec::new();
        for name in &self.order {
            let Some(h) = self.hosts.get(name) else {
                continue;
            };
            let member_of = self.all_groups(&h.groups);
            // `all` first, then the host's groups, then the host's own variables.
            let mut vars = self.group_vars.get("all").cloned().unwrap_or_default();
            for g in member_of.iter().filter(|g| *g != "all") {
                if let Some(gv) = self.group_vars.get(g) {
                    vars.extend(gv.clone());
                }
            }
            vars.extend(h.vars.clone());
            let origin = h.origin.clone().unwrap_or(Origin {
                file: PathBuf::new(),
                field: name.clone(),
                pos: None,
            });
            let mut roles = BTreeSet::new();
            let in_any = |names: &[String]| names.iter().any(|g| member_of.contains(g));
            if in_any(&groups.control_plane) {
                roles.insert(Role::ControlPlane);
            }
            if in_any(&groups.workers) {
                roles.insert(Role::Worker);
            }
            if in_any(&groups.load_balancers) {
                roles.insert(Role::LoadBalancer);
            }
            let bastion = roles.is_empty() && member_of.contains("bastion");
            if roles.is_empty() && !bastion {
                // Hosts in unrelated groups (monitoring, databases) are not ours.
                continue;
            }
            let address = vars
                .get("ansible_host")
                .or_else(|| vars.get("access_ip"))
                .or_else(|| vars.get("ip"))
                .cloned()
                .unwrap_or_else(|| name.clone());
            let internal = vars.get("ip").filter(|ip| **ip != address).cloned();
            let port = match vars.get("ansible_port") {
                None => None,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        errors.push(origin.error(
                            "ansible_port",
                            format!("`{p}` is not a port number (expected 1-65535)"),
                        ));
                        None
                    }
                },
            };
            out.push(InventoryHost {
                resource: None,
                name: name.clone(),
                address,
                internal_address: internal,
                roles,
                ssh_user: vars
                    .get("ansible_user")
                    .or_else(|| vars.get("ansible_ssh_user"))
                    .cloned(),
                ssh_port: port,
                ssh_key_file: vars.get("ansible_ssh_private_key_file").cloned(),
                bastion,
                labels: BTreeMap::new(),
                origin,
            });
        }
        out
    }
}

fn parse_ini(
    text: &str,
    path: &Path,
    groups: &GroupNames,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    #[derive(PartialEq)]
    enum Section {
        Hosts,
        Children,
        Vars,
    }
    let mut inv = AnsibleInventory::default();
    let mut errors = Vec::new();
    let mut group = "ungrouped".to_string();
    let mut section = Section::Hosts;
    let err_at = |line: usize, col: usize, field: &str, msg: String| SpecError {
        file: path.to_path_buf(),
        line: Some(line),
        column: Some(col),
        field: field.to_string(),
        message: msg,
    };
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let indent = raw.len() - raw.trim_start().len() + 1;
        if let Some(header) = line.strip_prefix('[') {
            let Some(header) = header.strip_suffix(']') else {
                errors.push(err_at(
                    lineno,
                    indent,
                    "",
                    format!("section header `{line}` is missing its closing `]`"),
                ));
                continue;
            };
            let (name, kind) = match header.split_once(':') {
                Some((g, "children")) => (g, Section::Children),
                Some((g, "vars")) => (g, Section::Vars),
                Some((_, other)) => {
                    errors.push(err_at(
                        lineno,
                        indent,
                        header,
                        format!("unknown section kind `:{other}`, expected `:children` or `:vars`"),
                    ));
                    continue;
                }
                None => (header, Section::Hosts),
            };
            group = name.trim().to_string();
            section = kind;
            continue;
        }
        let words = match split_words(line) {
            Ok(w) => w,
            Err(msg) => {
                errors.push(err_at(lineno, indent, &group, msg));
                continue;
            }
        };
        match section {
            Section::Children => {
                inv.children
                    .entry(group.clone())
                    .or_default()
                    .insert(line.to_string());
            }
            Section::Vars => match line.split_once('=') {
                Some((k, v)) => {
                    inv.group_vars
                        .entry(group.clone())
                        .or_default()
                        .insert(k.trim().to_string(), unquote(v.trim()));
                }
                None => errors.push(err_at(
                    lineno,
                    indent,
                    &group,
                    format!("expected `name=value` in [{group}:vars], found `{line}`"),
                )),
            },
            Section::Hosts => {
                let host = words[0].clone();
                if host.contains('[') && host.contains(':') {
                    errors.push(err_at(
                        lineno,
                        indent,
                        &host,
                        "host ranges like `node[1:3]` are not supported; list each host".into(),
                    ));
                    continue;
                }
                let mut vars = BTreeMap::new();
                for w in &words[1..] {
                    match w.split_once('=') {
                        Some((k, v)) => {
                            vars.insert(k.to_string(), v.to_string());
                        }
                        None => errors.push(err_at(
                            lineno,
                            indent,
                            &host,
                            format!("expected `name=value` after the host name, found `{w}`"),
                        )),
                    }
                }
                let origin = Origin {
                    file: path.to_path_buf(),
                    field: host.clone(),
                    pos: Some(Pos {
                        line: lineno,
                        column: indent,
                    }),
                };
                inv.add_host(&host, &group, vars, origin);
            }
        }
    }
    let hosts = inv.into_hosts(groups, &mut errors);
    if errors.is_empty() {
        Ok(hosts)
    } else {
        Err(errors)
    }
}

/// Split an INI host line on white space, keeping quoted values together.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in `{line}`"));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("empty host line".into());
    }
    Ok(words)
}

fn unquote(v: &str) -> String {
    v.trim_matches(|c| c == '"' || c == '\'').to_string()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_ansible_yaml(
    value: &Value,
    path: &Path,
    positions: &Positions,
    groups: &GroupNames,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    let mut inv = AnsibleInventory::default();
    let mut rep = Reporter::new(path, positions);
    let Value::Mapping(top) = value else {
        rep.error(
            "",
            "expected a kubeforge inventory (`kind: Inventory`) or an Ansible inventory (`all: {hosts, children}`)",
        );
        return Err(rep.errors);
    };
    for (k, v) in top {
        let Some(name) = scalar(k) else { continue };
        walk_group(&name, v, &name, &mut inv, &mut rep);
    }
    let mut errors = rep.errors;
    let hosts = inv.into_hosts(groups, &mut errors);
    if errors.is_empty() {
        Ok(hosts)
    } else {
        Err(errors)
    }
}

fn walk_group(
    group: &str,
    value: &Value,
    field: &str,
    inv: &mut AnsibleInventory,
    rep: &mut Reporter<'_>,
) {
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => return,
        _ => {
            rep.error(
                field,
                "expected a group: a mapping with `hosts`, `children` or `vars`",
            );
            return;
        }
    };
    for (k, v) in map {
        let key = scalar(k).unwrap_or_default();
        let here = join(field, &key);
        match key.as_str() {
            "hosts" => {
                let Value::Mapping(hosts) = v else {
                    if !v.is_null() {
                        rep.error(&here, "expected a mapping of host names to their variables");
                    }
                    continue;
                };
                for (hk, hv) in hosts {
                    let Some(host) = scalar(hk) else { continue };
                    let hfield = join(&here, &host);
                    let mut vars = BTreeMap::new();
                    match hv {
                        Value::Mapping(m) => {
                            for (vk, vv) in m {
                                if let (Some(vk), Some(vv)) = (scalar(vk), scalar(vv)) {
                                    vars.insert(vk, vv);
                                }
                            }
                        }
                        Value::Null => {}
                        _ => rep.error(&hfield, "expected a mapping of host variables"),
                    }
                    let origin = Origin {
                        file: rep.file.to_path_buf(),
                        pos: rep.positions.find(&hfield),
                        field: hfield,
                    };
                    inv.add_host(&host, group, vars, origin);
                }
            }
            "children" => {
                let Value::Mapping(kids) = v else {
                    if !v.is_null() {
                        rep.error(&here, "expected a mapping of child groups");
                    }
                    continue;
                };
                for (ck, cv) in kids {
                    let Some(child) = scalar(ck) else { continue };
                    inv.children
                        .entry(group.to_string())
                        .or_default()
                        .insert(child.clone());
                    walk_group(&child, cv, &join(&here, &child), inv, rep);
                }
            }
            "vars" => {
                if let Value::Mapping(m) = v {
                    let gv = inv.group_vars.entry(group.to_string()).or_default();
                    for (vk, vv) in m {
                        if let (Some(vk), Some(vv)) = (scalar(vk), scalar(vv)) {
                            gv.insert(vk, vv);
                        }
                    }
                }
            }
            other => rep.error(
                &here,
                format!("unknown key `{other}` in Ansible group `{group}`, expected hosts, children or vars"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> GroupNames {
        GroupNames::default()
    }

    #[test]
    fn ansible_ini_with_children_and_vars() {
        let text = "\
[all:vars]
ansible_user=ops

[kube_control_plane]
m1 ansible_host=192.0.2.11 ip=10.0.0.11
m2 ansible_host=192.0.2.12 ip=10.0.0.12
m3 ansible_host=192.0.2.13 ip=10.0.0.13

[kube_node]
w1 ansible_host=192.0.2.21 ansible_port=2222

[k8s_cluster:children]
kube_control_plane
kube_node

[bastion]
b1 ansible_host=192.0.2.1
";
        let hosts = parse(text, Path::new("hosts.ini"), &groups()).unwrap();
        assert_eq!(hosts.len(), 5);
        assert_eq!(
            hosts
                .iter()
                .filter(|h| h.bastion)
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>(),
            ["b1"],
            "the bastion is the jump host, not a node"
        );
        assert!(hosts.iter().all(|h| h.bastion == h.roles.is_empty()));
        assert_eq!(hosts[0].name, "m1");
        assert_eq!(hosts[0].address, "192.0.2.11");
        assert_eq!(hosts[0].internal_address.as_deref(), Some("10.0.0.11"));
        assert!(hosts[0].roles.contains(&Role::ControlPlane));
        assert_eq!(hosts[3].ssh_port, Some(2222));
        assert_eq!(
            hosts[3].ssh_user.as_deref(),
            Some("ops"),
            "all:vars apply to every host"
        );
        assert_eq!(hosts[0].origin.pos.map(|p| p.line), Some(5));
    }

    #[test]
    fn ansible_yaml() {
        let text = "\
all:
  children:
    kube_control_plane:
      hosts:
        m1: {ansible_host: 192.0.2.11}
    kube_node:
      hosts:
        w1: {ansible_host: 192.0.2.21}
      vars:
        ansible_user: debian
";
        let hosts = parse(text, Path::new("hosts.yaml"), &groups()).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].ssh_user.as_deref(), Some("debian"));
        assert_eq!(hosts[0].origin.pos.map(|p| p.line), Some(5));
    }

    #[test]
    fn bad_ini_lines_are_reported_with_line_numbers() {
        let text = "[kube_control_plane\nm1 ansible_host=1.2.3.4 junk\n[x:weird]\n";
        let errs = parse(text, Path::new("h.ini"), &groups()).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "h.ini:1:1: section header `[kube_control_plane` is missing its closing `]`",
                "h.ini:2:1: m1: expected `name=value` after the host name, found `junk`",
                "h.ini:3:1: x:weird: unknown section kind `:weird`, expected `:children` or `:vars`",
            ]
        );
    }
}
