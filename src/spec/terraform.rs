//! Hosts from a Terraform state (format version 4, as Terraform 0.12 to 1.x writes it to
//! a local file or to its S3 backend): the instances of the known server resource types,
//! each with its name, addresses and tags, given roles by the selectors of
//! `spec.provider.static.terraform`. Operators who made their machines with Terraform
//! (state on MinIO, read by an Ansible dynamic inventory until now) keep doing so;
//! kubeforge reads what Terraform recorded instead of a hand-written inventory.
//!
//! Read-only: the state is fetched, never locked or written (Terraform's own lock is in
//! DynamoDB or absent; a read needs none).

use super::error::{Reporter, SpecError};
use super::inventory::{InventoryHost, Origin, Role};
use super::types::{InstanceSelector, SshAddress, TerraformSource};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The resource types read when `resourceTypes` is not given.
pub const DEFAULT_TYPES: [&str; 4] = [
    "sakuracloud_server",
    "aws_instance",
    "hcloud_server",
    "openstack_compute_instance_v2",
];

/// The largest state read (a state of thousands of resources is a few MiB).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// One instance of a server resource, as found in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `module.k8s.aws_instance.cp[0]`, `sakuracloud_server.worker["a"]`.
    pub address: String,
    /// The address without the instance key (what `resource:` selectors match).
    pub resource: String,
    pub kind: String,
    pub name: String,
    pub private: Option<String>,
    pub public: Option<String>,
    /// List tags (sakuracloud, openstack `tags`).
    pub tags: BTreeSet<String>,
    /// Map tags (aws `tags`, hcloud `labels`, openstack `metadata`).
    pub labels: BTreeMap<String, String>,
    /// The JSON path of the instance in the state file (for messages).
    pub path: String,
}

/// Read the state `src` names (relative to `base_dir`) and turn its instances into
/// inventory hosts. `rep` locates problems in the cluster file itself.
pub fn load(
    src: &TerraformSource,
    base_dir: &Path,
    rep: &Reporter<'_>,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    let field = "spec.provider.static.terraform";
    let selectors = selectors(src, rep)?;
    let (text, shown) =
        fetch(src, base_dir).map_err(|m| vec![rep.make(&format!("{field}.state"), m)])?;
    let types: Vec<String> = if src.resource_types.is_empty() {
        DEFAULT_TYPES.iter().map(|s| s.to_string()).collect()
    } else {
        src.resource_types.clone()
    };
    let instances = instances(&text, &shown, &types)?;
    hosts(&instances, &selectors, src.ssh_address, &shown, rep)
}

/// The role selectors, checked: control planes and workers must be chosen; every
/// selector names at least one condition, and labels are `key=value`.
fn selectors(
    src: &TerraformSource,
    rep: &Reporter<'_>,
) -> Result<Vec<(Role, InstanceSelector)>, Vec<SpecError>> {
    let field = "spec.provider.static.terraform";
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (role, key, sel, required) in [
        (Role::ControlPlane, "controlPlane", &src.control_plane, true),
        (Role::Worker, "workers", &src.workers, true),
        (
            Role::LoadBalancer,
            "loadBalancers",
            &src.load_balancers,
            false,
        ),
    ] {
        let f = format!("{field}.{key}");
        match sel {
            None if required => errors.push(rep.make(
                field,
                format!("`{key}` is missing: say which instances are {} nodes (`tag:`, `label: key=value`, `name:` pattern or `resource:` address)", role.as_str()),
            )),
            None => {}
            Some(s) if *s == InstanceSelector::default() => errors.push(rep.make(
                &f,
                "give at least one of `tag`, `label`, `name`, `resource`",
            )),
            Some(s) => {
                if let Some(l) = &s.label {
                    if l.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                        errors.push(rep.make(
                            &format!("{f}.label"),
                            format!("{l:?}: expected key=value (e.g. role=control-plane)"),
                        ));
                    }
                }
                out.push((role, s.clone()));
            }
        }
    }
    for (i, t) in src.resource_types.iter().enumerate() {
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            errors.push(rep.make(
                &format!("{field}.resourceTypes[{i}]"),
                format!("{t:?} is not a Terraform resource type (lowercase letters, digits, _)"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The state's text and how to name it in messages: a local file, or an object in S3.
fn fetch(src: &TerraformSource, base_dir: &Path) -> Result<(String, PathBuf), String> {
    let url = src.state.trim();
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| {
                format!("{url:?}: expected s3://BUCKET/KEY (the backend's bucket and key)")
            })?;
        let options = s3_options(src, base_dir)?;
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let shown = match &src.endpoint {
            Some(ep) => format!("{url} (endpoint {ep})"),
            None => url.to_string(),
        };
        // Cluster files load outside and inside async code: a thread of its own with a
        // runtime of its own works from both.
        let url_owned = url.to_string();
        let text = std::thread::spawn(move || -> Result<String, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the S3 client: {e}"))?;
            rt.block_on(async move {
                use object_store::ObjectStoreExt;
                let store = crate::state::store::s3_client(&url_owned, &bucket, &options)
                    .map_err(|e| e.to_string())?;
                let path = object_store::path::Path::from(key.as_str());
                let got = store.get(&path).await.map_err(|e| match e {
                    object_store::Error::NotFound { .. } => {
                        format!("{url_owned}: no such object (check the backend's bucket and key)")
                    }
                    e => format!("cannot read {url_owned}: {e}"),
                })?;
                if got.meta.size > MAX_STATE_BYTES {
                    return Err(format!(
                        "{url_owned} is {} bytes: larger than the {MAX_STATE_BYTES} bytes read",
                        got.meta.size
                    ));
                }
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| format!("cannot read {url_owned}: {e}"))?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| format!("{url_owned} is not UTF-8 text"))
            })
        })
        .join()
        .map_err(|_| "reading the Terraform state failed".to_string())??;
        return Ok((text, PathBuf::from(shown)));
    }
    if let Some((scheme, _)) = url.split_once("://").filter(|(s, _)| *s != "file") {
        return Err(format!(
            "{scheme}:// is not read: give a file or s3://BUCKET/KEY"
        ));
    }
    let path = base_dir.join(url.strip_prefix("file://").unwrap_or(url));
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_STATE_BYTES {
        return Err(format!(
            "{} is {} bytes: larger than the {MAX_STATE_BYTES} bytes read",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((text, path))
}

fn s3_options(
    src: &TerraformSource,
    base_dir: &Path,
) -> Result<crate::state::StoreOptions, String> {
    let ca = src.ca_bundle.as_ref().map(|p| base_dir.join(p));
    crate::state::s3_options(
        "spec.provider.static.terraform",
        crate::state::S3Settings {
            endpoint: &src.endpoint,
            region: &src.region,
            path_style: src.path_style,
            allow_http: src.allow_http,
            access_key_id_env: &src.access_key_id_env,
            secret_access_key_env: &src.secret_access_key_env,
            profile: &src.profile,
            ca_bundle: &ca,
        },
        true,
    )
    .map_err(|e| e.to_string())
}

/// An error about the state file at JSON path `field`.
fn state_error(file: &Path, field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        file: file.to_path_buf(),
        line: None,
        column: None,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Every instance of the given resource types in a v4 state.
pub fn instances(
    state: &str,
    file: &Path,
    types: &[String],
) -> Result<Vec<Instance>, Vec<SpecError>> {
    let one = |field: &str, m: String| vec![state_error(file, field, m)];
    let doc: Value = serde_json::from_str(state).map_err(|e| {
        vec![SpecError {
            file: file.to_path_buf(),
            line: Some(e.line()),
            column: Some(e.column()),
            field: String::new(),
            message: format!("not a Terraform state (invalid JSON: {e})"),
        }]
    })?;
    match doc.get("version").and_then(Value::as_u64) {
        Some(4) => {}
        Some(v) => {
            return Err(one(
                "version",
                format!("state format version {v}: only version 4 (Terraform 0.12 and later) is read; `terraform state pull` with a current Terraform upgrades it"),
            ))
        }
        None => return Err(one("version", "not a Terraform state (no format version)".into())),
    }
    let resources = doc
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            one(
                "resources",
                "not a Terraform state (no resources list)".into(),
            )
        })?;
    // OpenStack keeps an instance's floating (public) address in a resource of its own.
    let mut floating: BTreeMap<String, String> = BTreeMap::new();
    for r in resources {
        if r.get("type").and_then(Value::as_str)
            != Some("openstack_compute_floatingip_associate_v2")
        {
            continue;
        }
        for inst in r
            .get("instances")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let a = inst.get("attributes");
            if let (Some(id), Some(ip)) = (
                text(a.and_then(|a| a.get("instance_id"))),
                text(a.and_then(|a| a.get("floating_ip"))),
            ) {
                floating.insert(id, ip);
            }
        }
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (ri, r) in resources.iter().enumerate() {
        let kind = r.get("type").and_then(Value::as_str).unwrap_or_default();
        if r.get("mode").and_then(Value::as_str) != Some("managed")
            || !types.iter().any(|t| t == kind)
        {
            continue;
        }
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let resource = match r.get("module").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => format!("{m}.{kind}.{name}"),
            _ => format!("{kind}.{name}"),
        };
        let Some(list) = r.get("instances").and_then(Value::as_array) else {
            continue;
        };
        for (ii, inst) in list.iter().enumerate() {
            let path = format!("resources[{ri}].instances[{ii}]");
            let address = match inst.get("index_key") {
                Some(Value::Number(n)) => format!("{resource}[{n}]"),
                Some(Value::String(s)) => format!("{resource}[{s:?}]"),
                _ => resource.clone(),
            };
            // A tainted or deposed instance is on its way out: Terraform replaces it.
            if inst.get("deposed").is_some_and(|d| !d.is_null())
                || inst.get("status").and_then(Value::as_str) == Some("tainted")
            {
                continue;
            }
            let Some(a) = inst.get("attributes").filter(|a| a.is_object()) else {
                errors.push(state_error(
                    file,
                    &path,
                    format!("{address} has no attributes (a state written by Terraform 0.11 or a hand edit?)"),
                ));
                continue;
            };
            match read_instance(kind, a) {
                Ok(mut i) => {
                    if let Some(ip) = text(a.get("id")).and_then(|id| floating.get(&id)) {
                        i.public = Some(ip.clone());
                    }
                    i.address = address;
                    i.resource = resource.clone();
                    i.path = path;
                    out.push(i);
                }
                Err(m) => errors.push(state_error(
                    file,
                    &format!("{path}.attributes"),
                    format!("{address}: {m}"),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn string_list(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Name, addresses and tags of one instance, by resource type.
fn read_instance(kind: &str, a: &Value) -> Result<Instance, String> {
    let mut i = Instance {
        address: String::new(),
        resource: String::new(),
        kind: kind.to_string(),
        name: String::new(),
        private: None,
        public: None,
        tags: BTreeSet::new(),
        labels: BTreeMap::new(),
        path: String::new(),
    };
    match kind {
        "sakuracloud_server" => {
            i.name = text(a.get("name")).ok_or("no name")?;
            i.tags = string_list(a.get("tags"));
            // NIC 0 on the shared segment has the public address (`ip_address`); NICs on
            // switches carry the address the user gave (`user_ip_address`).
            let nics = a
                .get("network_interface")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for nic in &nics {
                let upstream = text(nic.get("upstream")).unwrap_or_default();
                if upstream == "shared" {
                    i.public = i.public.or(text(a.get("ip_address")));
                } else if i.private.is_none() {
                    i.private = text(nic.get("user_ip_address"));
                }
            }
            if i.public.is_none() && i.private.is_none() {
                // A server on a switch with a router (`upstream` = switch id) and
                // `ip_address` set: that address is the one it has.
                i.private = text(a.get("ip_address"));
            }
        }
        "aws_instance" => {
            i.labels = string_map(a.get("tags_all"));
            i.labels.extend(string_map(a.get("tags")));
            i.name = i
                .labels
                .get("Name")
                .cloned()
                .or_else(|| text(a.get("id")))
                .ok_or("no Name tag and no id")?;
            i.private = text(a.get("private_ip"));
            i.public = text(a.get("public_ip"));
        }
        "hcloud_server" => {
            i.name = text(a.get("name")).ok_or("no name")?;
            i.labels = string_map(a.get("labels"));
            i.public = text(a.get("ipv4_address"));
            i.private = a
                .get("network")
                .and_then(Value::as_array)
                .and_then(|n| n.iter().find_map(|x| text(x.get("ip"))));
        }
        "openstack_compute_instance_v2" => {
            i.name = text(a.get("name")).ok_or("no name")?;
            i.labels = string_map(a.get("metadata"));
            i.tags = string_list(a.get("tags"));
            i.tags.extend(string_list(a.get("all_tags")));
            i.private = a
                .get("network")
                .and_then(Value::as_array)
                .and_then(|n| n.iter().find_map(|x| text(x.get("fixed_ip_v4"))));
            // access_ip_v4 is filled from a fixed address; the floating (public) one is
            // in its association resource (above). Without networks, access_ip_v4.
            if i.private.is_none() {
                i.private = text(a.get("access_ip_v4"));
            }
        }
        // Another type the user named: the common attribute names.
        _ => {
            i.name = text(a.get("name"))
                .or_else(|| string_map(a.get("tags")).get("Name").cloned())
                .or_else(|| text(a.get("id")))
                .ok_or("no name or id")?;
            i.labels = string_map(a.get("labels"));
            i.labels.extend(string_map(a.get("tags")));
            i.tags = string_list(a.get("tags"));
            i.private = text(a.get("private_ip")).or_else(|| text(a.get("private_ip_address")));
            i.public = text(a.get("public_ip"))
                .or_else(|| text(a.get("ipv4_address")))
                .or_else(|| text(a.get("ip_address")));
        }
    }
    if i.private.is_none() && i.public.is_none() {
        return Err("no IPv4 address in its attributes (not created yet, or on IPv6 only)".into());
    }
    Ok(i)
}

/// Shell-style match: `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    go(&p, &s)
}

pub fn matches(sel: &InstanceSelector, i: &Instance) -> bool {
    sel.tag
        .as_ref()
        .is_none_or(|t| i.tags.contains(t) || i.labels.contains_key(t))
        && sel.label.as_ref().is_none_or(|l| {
            l.split_once('=')
                .is_some_and(|(k, v)| i.labels.get(k).is_some_and(|x| x == v))
        })
        && sel.name.as_ref().is_none_or(|p| glob(p, &i.name))
        && sel.resource.as_ref().is_none_or(|p| glob(p, &i.resource))
}

/// Instances that a selector chooses become hosts with those roles; the others are left
/// out (a bastion, a database server in the same state).
fn hosts(
    instances: &[Instance],
    selectors: &[(Role, InstanceSelector)],
    ssh: SshAddress,
    file: &Path,
    rep: &Reporter<'_>,
) -> Result<Vec<InventoryHost>, Vec<SpecError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for i in instances {
        let roles: BTreeSet<Role> = selectors
            .iter()
            .filter(|(_, s)| matches(s, i))
            .map(|(r, _)| *r)
            .collect();
        if roles.is_empty() {
            continue;
        }
        let address = match ssh {
            SshAddress::Auto => i.public.clone().or_else(|| i.private.clone()),
            SshAddress::Public => i.public.clone(),
            SshAddress::Private => i.private.clone(),
        };
        let Some(address) = address else {
            errors.push(state_error(
                file,
                &i.path,
                format!(
                    "{} ({}) has no {} address (sshAddress: {})",
                    i.address,
                    i.name,
                    if ssh == SshAddress::Public {
                        "public"
                    } else {
                        "private"
                    },
                    if ssh == SshAddress::Public {
                        "public"
                    } else {
                        "private"
                    }
                ),
            ));
            continue;
        };
        out.push(InventoryHost {
            resource: Some(i.address.clone()),
            bastion: false,
            name: i.name.clone(),
            internal_address: i.private.clone().filter(|p| *p != address),
            address,
            roles,
            ssh_user: None,
            ssh_port: None,
            ssh_key_file: None,
            labels: BTreeMap::new(),
            origin: Origin {
                file: file.to_path_buf(),
                field: format!("{} ({})", i.path, i.address),
                pos: None,
            },
        });
    }
    if out.is_empty() && errors.is_empty() {
        let kinds: BTreeSet<&str> = instances.iter().map(|i| i.kind.as_str()).collect();
        errors.push(rep.make(
            "spec.provider.static.terraform",
            format!(
                "no instance of the state matches the role selectors ({} instance(s) of {} read from {})",
                instances.len(),
                if kinds.is_empty() {
                    "the resource types".to_string()
                } else {
                    kinds.into_iter().collect::<Vec<_>>().join(", ")
                },
                file.display()
            ),
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("prd-cp-*", "prd-cp-1"));
        assert!(glob("*.aws_instance.cp", "module.k8s.aws_instance.cp"));
        assert!(glob("k8s-??", "k8s-01"));
        assert!(!glob("k8s-??", "k8s-001"));
        assert!(!glob("prd-cp-*", "dev-cp-1"));
    }
}
