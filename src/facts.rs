//! Facts: what the hosts and the cluster are now, gathered fresh in each run (the
//! `connect` phase, and `plan` against live hosts). Phases plan from intent (the
//! cluster file) + facts + state. One command per host; the first control plane's also
//! answers the nodes and the etcd members with their health (else the next control
//! plane that answers is asked, one round trip each).

use crate::kube::{self, etcd};
use crate::render::views::BIN_DIR;
use crate::spec::{Host, LoadedCluster, Role};
use crate::transport::remote::{HostError, Redact};
use crate::transport::{fan_out, FanOutOptions, ProgressMode, SshPool};
use serde::Serialize;
use std::collections::BTreeMap;

/// What one host is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    /// `x86_64`, `aarch64`.
    pub arch: String,
    /// `debian 12`.
    pub os: String,
    pub systemd: bool,
    /// Installed versions (None: not installed).
    pub containerd: Option<String>,
    pub kubelet: Option<String>,
    pub kubeadm: Option<String>,
    /// `kubeadm init` finished here (kubeforge's marker).
    pub kubeadm_init_done: bool,
    /// The node joined (kubelet.conf exists).
    pub kubelet_conf: bool,
    /// The node runs a control plane (etcd and apiserver manifests), or ran one that a
    /// restore holds aside (`held_manifests`).
    pub control_plane_manifests: bool,
    /// The etcd and apiserver manifests are held aside by a restore in progress.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held_manifests: bool,
    /// The image tag of the kube-apiserver static pod (`v1.20.2`; `+` is `_` in tags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apiserver_tag: Option<String>,
    /// The pod /24 its built-in pod network configuration holds (kept for its life).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// kubeforge's detached commands still running here (`kubeforge-kubeadm-join`):
    /// an earlier run lost its connection or was killed while they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<String>,
}

/// Why a host gave no facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum Absence {
    /// The provider has no machine for it (it was deleted).
    MissingAtProvider,
    /// The provider has it, or it is a static host, but it does not answer.
    Unreachable(String),
}

/// The etcd cluster as a healthy member sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdFacts {
    /// The control-plane node asked.
    pub asked: String,
    pub members: Vec<etcd::Member>,
    /// Ids of the members whose health endpoint answered true.
    pub healthy: Vec<u64>,
    /// Members that block joins: never started, or their machine is not a reachable
    /// control plane of the inventory.
    pub stale: Vec<etcd::Member>,
}

/// The facts of a run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// Hosts that answered, by name.
    pub hosts: BTreeMap<String, HostFacts>,
    /// Hosts that did not, by name, and why.
    pub absent: BTreeMap<String, Absence>,
    /// The nodes the API server knows (None: no API server answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<kube::NodeInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdFacts>,
    /// Machines the state records that the cluster file no longer lists: they leave
    /// the cluster (`remove-nodes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<Leaving>,
}

/// A machine that leaves the cluster: recorded in the state, no longer in the cluster
/// file (a pool's count lowered, a host dropped from the inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leaving {
    pub name: String,
    /// The address kubeforge connected to.
    pub address: String,
    /// Every address recorded for it (connect, internal, public).
    pub addresses: Vec<String>,
    pub roles: Vec<Role>,
    /// Whether the provider made it (it is deleted), or it is a static host (it is
    /// reset and forgotten).
    pub provider_id: Option<String>,
}

impl Leaving {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
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
    /// Whether etcd member `m` is this machine's (by name, else by peer address).
    pub fn owns_member(&self, m: &etcd::Member) -> bool {
        (m.started() && m.name == self.name)
            || m.peer_host().is_some_and(|p| self.addresses.contains(&p))
    }
}

/// The machines of the state that the cluster file no longer lists, in the order they
/// are removed: workers, then control planes, then load balancers (each group by name,
/// the highest first, as a pool shrinks from its end).
pub fn leaving(c: &LoadedCluster, doc: &crate::state::StateDocument) -> Vec<Leaving> {
    let mut out: Vec<Leaving> = doc
        .machines
        .values()
        .filter(|m| c.topology.host(&m.name).is_none())
        .map(|m| Leaving {
            name: m.name.clone(),
            address: m.addresses.first().cloned().unwrap_or_default(),
            addresses: m.addresses.clone(),
            roles: m.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            provider_id: m.provider_id.clone(),
        })
        .collect();
    let rank = |l: &Leaving| {
        if l.has(Role::ControlPlane) {
            1
        } else if l.has(Role::Worker) {
            0
        } else {
            2
        }
    };
    out.sort_by(|a, b| rank(a).cmp(&rank(b)).then(b.name.cmp(&a.name)));
    out
}

impl ClusterFacts {
    pub fn host(&self, name: &str) -> Option<&HostFacts> {
        self.hosts.get(name)
    }

    /// The control-plane node that holds the init configuration and that later phases
    /// ask (token, certificates, CA, kubeconfig, gates): the first control-plane node of
    /// the inventory, unless it has no control plane while another one runs it (the
    /// first was replaced: it joins, and the first that runs one takes its part).
    pub fn init_node<'a>(&self, t: &'a crate::spec::Topology) -> Option<&'a Host> {
        let first = t.first_control_plane()?;
        let runs = self
            .host(&first.name)
            .is_some_and(|f| f.control_plane_manifests);
        // A first node that does not answer keeps its part: it may come back.
        let unreachable = matches!(self.absent.get(&first.name), Some(Absence::Unreachable(_)));
        if runs || unreachable {
            return Some(first);
        }
        t.control_planes()
            .into_iter()
            .find(|h| {
                self.host(&h.name)
                    .is_some_and(|f| f.control_plane_manifests)
            })
            .or(Some(first))
    }

    pub fn node(&self, name: &str) -> Option<&kube::NodeInfo> {
        self.nodes.as_ref()?.iter().find(|n| n.name == name)
    }

    /// kubeforge's detached commands of an earlier run still running (not a fault: a
    /// run that changes the cluster waits for them in `connect`).
    pub fn in_flight(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, f) in &self.hosts {
            for u in &f.busy {
                out.push(format!(
                    "host {name} still runs `{u}` from an earlier run (log in {}/{u}.log): a run that changes the cluster waits for it to end",
                    kube::kubeadm::LOG_DIR
                ));
            }
        }
        out
    }

    /// Lines for the operator: what is missing or unhealthy, and what a run does about it.
    pub fn findings(&self, c: &LoadedCluster) -> Vec<String> {
        let mut out = Vec::new();
        for (name, why) in &self.absent {
            let Some(h) = c.topology.host(name) else {
                continue;
            };
            let what = match why {
                Absence::MissingAtProvider => {
                    "is missing at the provider: `provision` re-creates it (new host key pinned), then the bootstrap phases set it up again".to_string()
                }
                Absence::Unreachable(e) => format!(
                    "does not answer over SSH ({e}): nothing can be planned or done on it until it does"
                ),
            };
            out.push(format!("host {name} ({}) {what}", h.roles_text()));
        }
        for l in &self.leaving {
            out.push(format!(
                "host {} ({}) is no longer in the cluster file: `apply` removes it from the cluster ({})",
                l.name,
                l.roles_text(),
                removal_summary(l)
            ));
        }
        for (name, f) in &self.hosts {
            if f.held_manifests {
                out.push(format!(
                    "host {name}: its etcd and kube-apiserver are held aside in {} by a restore that did not finish: `kubeforge restore` with the same snapshot resumes it",
                    kube::etcdctl::HELD_DIR
                ));
            }
        }
        if let Some(nodes) = &self.nodes {
            for h in c.topology.kubernetes_nodes() {
                match nodes.iter().find(|n| n.name == h.name) {
                    Some(n) if !n.ready => out.push(format!("node {} is registered but not Ready", h.name)),
                    None if self.hosts.get(&h.name).is_some_and(|f| f.kubelet_conf) => out.push(format!(
                        "node {} joined (kubelet.conf exists) but is not registered with the API server",
                        h.name
                    )),
                    _ => {}
                }
            }
        }
        if let Some(e) = &self.etcd {
            for m in &e.stale {
                out.push(format!(
                    "etcd member {} ({}, peer {}) is stale: {}; a control-plane join fails until it is removed from a healthy member",
                    m.hex_id(),
                    if m.name.is_empty() { "never started" } else { m.name.as_str() },
                    m.peer_urls.first().map(String::as_str).unwrap_or("-"),
                    if m.started() { "its machine is not a reachable control-plane host" } else { "it was added by a join that never finished" }
                ));
            }
            let unhealthy = e.members.len() - e.healthy.len();
            if unhealthy > 0 {
                out.push(format!(
                    "etcd: {} of {} members healthy (asked {}){}",
                    e.healthy.len(),
                    e.members.len(),
                    e.asked,
                    if etcd::quorum_holds(e.members.len(), e.healthy.len()) {
                        ""
                    } else {
                        ": QUORUM LOST"
                    }
                ));
            }
        }
        out
    }
}

impl ClusterFacts {
    /// The pod /24s the nodes that answered hold (their CNI configuration).
    pub fn pod_cidrs(&self) -> Vec<(String, ipnet::IpNet)> {
        self.hosts
            .iter()
            .filter_map(|(n, f)| Some((n.clone(), f.pod_cidr.as_deref()?.parse().ok()?)))
            .collect()
    }
}

/// What removing `l` does, in a few words.
pub fn removal_summary(l: &Leaving) -> String {
    let mut steps = Vec::new();
    if l.is_kubernetes_node() {
        steps.push("drained");
    }
    if l.has(Role::ControlPlane) {
        steps.push("its etcd member removed while quorum holds");
    }
    steps.push("reset");
    if l.is_kubernetes_node() {
        steps.push("its Node deleted");
    }
    steps.push(if l.provider_id.is_some() {
        "the machine deleted"
    } else {
        "forgotten in the state (the host itself stays)"
    });
    steps.join(", ")
}

/// The node that holds the init configuration: from the facts when there are any
/// ([`ClusterFacts::init_node`]), else the first control-plane node of the inventory.
pub fn init_node<'a>(
    t: &'a crate::spec::Topology,
    facts: Option<&ClusterFacts>,
) -> Option<&'a Host> {
    match facts {
        Some(f) => f.init_node(t),
        None => t.first_control_plane(),
    }
}

/// Where a host's facts command keeps the versions of the Go binaries it asked, with
/// the binary's identity (size, mtime, ctime, inode) when asked: a binary unchanged
/// since is not run again (each run of one costs a Go process start on the host).
pub const VERSION_CACHE: &str = "/var/lib/kubeforge/versions";

/// One round trip per host: `key=value` lines.
pub fn host_command() -> String {
    host_command_in(BIN_DIR, VERSION_CACHE)
}

/// containerd's metadata database (where it records its images) at its default root.
pub const CONTAINERD_META_DB: &str = "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db";

/// Where `image_list_function` keeps containerd's image list, with the identity of its
/// metadata database when listed.
/// (Not `/var/lib/kubeforge/images`: the image archives are there.)
pub const IMAGE_LIST_CACHE: &str = "/var/lib/kubeforge/image-list";

/// Shell function `kfid PATH`: sets `$kfi` to the identity of the file at PATH (size,
/// mtime, ctime, inode; symlinks followed), fails when it cannot be read. Taken from
/// `$kfst` when the facts stated the file earlier in the same script (`identities`),
/// else asked of `stat`.
const IDENTITY_FUNCTION: &str = "kfid() { case \" ${kfst:-} \" in *\" $1=\"*) kfi=\" $kfst\"; kfi=${kfi#*\" $1=\"}; \
kfi=${kfi%% *}; [ -n \"$kfi\" ];; *) kfi=$(stat -Lc '%s:%.9Y:%.9Z:%i' \"$1\" 2>/dev/null);; esac; };";

/// Sets `$kfst` to `PATH=IDENTITY` of each of `paths` that can be stated (one `stat`
/// for the files `kfid` is asked about later in the same script).
fn identities(paths: &[&str]) -> String {
    format!(
        "kfst=$(stat -L --printf '%n=%s:%.9Y:%.9Z:%i ' -- {} 2>/dev/null);",
        paths.join(" ")
    )
}

/// A shell function `kfimgs` that prints containerd's image references (`ctr -n k8s.io
/// images ls -q`), listing them only when the metadata database `meta_db` changed since
/// the list was kept in `cache` (every change of an image is a write to it: its size,
/// mtime or ctime moves). Without that database (another root), `ctr` is asked each time.
/// Fails when `ctr` fails.
pub fn image_list_function(meta_db: &str, cache: &str) -> String {
    format!(
        "{IDENTITY_FUNCTION} kfimgs() {{ kfid {db} || {{ ctr -n k8s.io images ls -q; return; }}; k=$kfi; \
if [ -f {cache} ] && {{ IFS= read -r ck && [ -n \"$ck\" ] && [ \"$ck\" = \"$k\" ] && \
while IFS= read -r l; do printf '%s\\n' \"$l\"; done; }} < {cache}; then return 0; fi; \
l=$(ctr -n k8s.io images ls -q) || return 1; \
[ -d {cache} ] || {{ mkdir -p -m 700 \"$(dirname {cache})\" && printf '%s\\n%s\\n' \"$k\" \"$l\" > {cache}.$$ && mv -f {cache}.$$ {cache}; }} 2>/dev/null; \
printf '%s\\n' \"$l\"; }};",
        db = meta_db,
        cache = cache,
    )
}

/// A shell function `kfv NAME BINARY` (NAME: containerd, kubelet or kubeadm) that
/// prints `NAME=VERSION` of the binary, asking it only when its identity changed since
/// its version was kept in `version_cache` (nothing when it is missing or says none).
pub fn version_function(version_cache: &str) -> String {
    format!(
        "{IDENTITY_FUNCTION} kfv() {{ n=$1; b=$2; [ -n \"$b\" ] || return 0; kfid \"$b\" || return 0; k=$kfi; \
c={vc}/$n; ck=; cv=; [ -r \"$c\" ] && read -r ck cv < \"$c\"; \
if [ \"$ck\" != \"$k\" ] || [ -z \"$cv\" ]; then case $n in \
containerd) cv=$(\"$b\" --version 2>/dev/null | awk '{{print $3}}');; \
kubelet) cv=$(\"$b\" --version 2>/dev/null | awk '{{print $2}}');; \
kubeadm) cv=$(\"$b\" version -o short 2>/dev/null);; esac; \
[ -n \"$cv\" ] && {{ mkdir -p -m 700 {vc} && echo \"$k $cv\" > \"$c.$$\" && mv -f \"$c.$$\" \"$c\"; }} 2>/dev/null; fi; \
[ -n \"$cv\" ] && echo \"$n=$cv\"; return 0; }};",
        vc = version_cache,
    )
}

/// Shell that sets `$v` to what follows `image:` and blanks on the first line of `files`
/// that is blanks then `image:` (as `sed -n '/^ *image: */{s///p;q}'` prints it), read
/// by the shell itself: no process on every host of every run.
fn image_of(files: &[&str]) -> String {
    format!(
        "v=; for kff in {}; do [ -r \"$kff\" ] || continue; while IFS= read -r kfl || [ -n \"$kfl\" ]; do \
kfl=${{kfl#\"${{kfl%%[! ]*}}\"}}; case $kfl in image:*) v=${{kfl#image:}}; v=${{v#\"${{v%%[! ]*}}\"}}; break 2;; esac; \
done < \"$kff\"; done;",
        files.join(" ")
    )
}

/// Shell that sets `$v` to the subnet of the first line of `file` with `"subnet":`, blanks,
/// and a quoted string of digits, dots and slashes (as `sed -n '/.*"subnet": *"\([0-9./]*\)".*/{s//\1/p;q}'`
/// prints it), read by the shell itself.
fn subnet_of(file: &str) -> String {
    format!(
        "v=; [ -r {file} ] && while IFS= read -r kfl || [ -n \"$kfl\" ]; do case $kfl in *'\"subnet\":'*) \
kfl=${{kfl##*'\"subnet\":'}}; kfl=${{kfl#\"${{kfl%%[! ]*}}\"}}; case $kfl in '\"'*'\"'*) kfl=${{kfl#'\"'}}; \
case ${{kfl%%'\"'*}} in *[!0-9./]*) ;; *) v=${{kfl%%'\"'*}}; break;; esac;; esac;; esac; done < {file};"
    )
}

fn host_command_in(bin_dir: &str, version_cache: &str) -> String {
    format!(
        "{kfv} kfa=; read -r kfa 2>/dev/null < /proc/sys/kernel/arch; \
[ -n \"$kfa\" ] || kfa=$(uname -m); echo \"arch=$kfa\"; . /etc/os-release 2>/dev/null; echo \"os=$ID $VERSION_ID\"; \
command -v systemctl >/dev/null && echo systemd=yes; kfcd=$(command -v containerd); {ids} \
kfv containerd \"$kfcd\"; \
[ -x {bin_dir}/kubelet ] && kfv kubelet {bin_dir}/kubelet; \
[ -x {bin_dir}/kubeadm ] && kfv kubeadm {bin_dir}/kubeadm; \
test -f {init} && echo init=yes; test -f {kc} && echo kubelet_conf=yes; \
test -f {m}/etcd.yaml && test -f {m}/kube-apiserver.yaml && echo cp=yes; \
test -f {held}/etcd.yaml && test -f {held}/kube-apiserver.yaml && echo held=yes; \
{image} [ -n \"$v\" ] && echo \"apiserver_image=$v\"; \
{subnet} [ -n \"$v\" ] && echo \"pod_cidr=$v\"; \
{units} for u in $kfunits; do case $u in kubeforge-kubeadm-*) echo \"busy=${{u%.service}}\";; esac; done; true",
        kfv = version_function(version_cache),
        init = kube::kubeadm::INIT_DONE,
        kc = kube::KUBELET_CONF,
        m = kube::MANIFESTS,
        held = kube::etcdctl::HELD_DIR,
        image = image_of(&[
            &format!("{}/kube-apiserver.yaml", kube::MANIFESTS),
            &format!("{}/kube-apiserver.yaml", kube::etcdctl::HELD_DIR),
        ]),
        subnet = subnet_of(crate::render::views::CONFLIST_TEMPLATE),
        units = crate::transport::shell::LIST_ACTIVE_UNITS,
        ids = identities(&[
            "\"$kfcd\"",
            &format!("{bin_dir}/kubelet"),
            &format!("{bin_dir}/kubeadm"),
            CONTAINERD_META_DB,
        ]),
    )
}

/// Marks the sections of the cluster part of an answer (after the host's own lines).
const SECTION: &str = "@@kubeforge-facts";

/// The etcd client URL kubeadm gives the member of a control plane at `address`.
fn client_url(address: &str) -> Option<String> {
    match address.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(ip) => Some(format!("https://{ip}:2379")),
        std::net::IpAddr::V6(ip) => Some(format!("https://[{ip}]:2379")),
    }
}

/// The etcd client URLs whose health the cluster part asks for at once: every
/// control-plane host's of the file, then those of the control planes that leave. A
/// member elsewhere is asked on its own.
fn health_urls(c: &LoadedCluster, leaving: &[Leaving]) -> Vec<String> {
    let mut out: Vec<String> = c
        .topology
        .hosts
        .iter()
        .filter(|h| h.has(Role::ControlPlane))
        .filter_map(|h| client_url(&h.internal_address.to_string()))
        .collect();
    for l in leaving.iter().filter(|l| l.has(Role::ControlPlane)) {
        out.extend(l.addresses.iter().filter_map(|a| client_url(a)));
    }
    out.sort();
    out.dedup();
    out
}

/// Sets the positional parameters to curl's options for the node list as `kubectl get
/// nodes -o json` gives it, asked with the admin kubeconfig's own server, CA and client
/// certificate (a kubectl costs a Go process start, ~0.15 s on a busy node): the body to
/// `{dir}/nodes`, `kf-nodes HTTP-CODE EXIT-CODE` on stdout. To nothing when the
/// kubeconfig does not carry them (kubectl asks then). `dir`: a private directory for
/// the credentials.
fn nodes_transfer(dir: &str) -> String {
    format!(
        "set --; srv=; kfn_ca=; kfn_cc=; kfn_ck=; while read -r kfn_k kfn_v; do case $kfn_k in \
server:) [ -n \"$srv\" ] || srv=$kfn_v;; certificate-authority-data:) [ -n \"$kfn_ca\" ] || kfn_ca=$kfn_v;; \
client-certificate-data:) [ -n \"$kfn_cc\" ] || kfn_cc=$kfn_v;; client-key-data:) [ -n \"$kfn_ck\" ] || kfn_ck=$kfn_v;; \
esac; done < {admin}; case $srv in https://*) printf '%s' \"$kfn_ca\" | base64 -d > {dir}/certificate-authority; \
printf '%s' \"$kfn_cc\" | base64 -d > {dir}/client-certificate; printf '%s' \"$kfn_ck\" | base64 -d > {dir}/client-key; \
[ -s {dir}/client-key ] && set -- --max-time 10 --cacert {dir}/certificate-authority \
--cert {dir}/client-certificate --key {dir}/client-key \"$srv/api/v1/nodes\" -o {dir}/nodes \
-w 'kf-nodes %{{http_code}} %{{exitcode}}\\n';; esac;",
        admin = kube::ADMIN_CONF,
    )
}

/// The cluster part of the facts, asked on one control-plane node in one round trip:
/// the nodes (`kubectl get nodes`), the etcd members and the health of each of `urls`,
/// in the background while the host's own facts are gathered. `start` begins it (only
/// where an API server and etcd run and the admin kubeconfig is); `collect` waits and
/// prints it in sections.
///
/// One curl asks everything at once (`-Z`, curl 7.66: one process, one TLS setup, ~20 ms
/// of CPU less than a curl each on a busy node), each answer to its own file, and
/// `kf-KIND HTTP-CODE EXIT-CODE` of the node and member lists on stdout (not `@...`: a
/// format curl reads from a file; the exit code is empty before curl 7.75). An older
/// curl refuses `-Z` (exit 2, nothing transferred): one curl per request then. When the
/// node list did not come (the kubeconfig names its credentials by path, the API
/// refused), kubectl asks. The sections are printed by one `cat`.
fn cluster_script(urls: &[String]) -> (String, String) {
    let etcd = etcd::CURL.strip_prefix("curl -sS ").unwrap_or(etcd::CURL);
    let urls: Vec<&String> = urls.iter().filter(|u| etcd::client_url_ok(u)).collect();
    let members = "-X POST https://127.0.0.1:2379/v3/cluster/member/list -o $kfd/members \
-w 'kf-members %{http_code} %{exitcode}\\n'";
    let mut health = String::new();
    let mut each = String::new();
    let mut headers = String::new();
    let mut files = String::from("$kfd/h $kfd/nodes $kfd/hm $kfd/members");
    for (i, url) in urls.iter().enumerate() {
        health.push_str(&format!(" {url}/health -o $kfd/health{i}"));
        each.push_str(&format!("{} {url}/health -o $kfd/health{i} & ", etcd::CURL));
        headers.push_str(&format!(
            "printf '\\n{SECTION} health %s\\n' '{url}' > $kfd/h{i}; "
        ));
        files.push_str(&format!(" $kfd/h{i} $kfd/health{i}"));
    }
    if !urls.is_empty() {
        health = format!(" --next {etcd}{health}");
    }
    let start = format!(
        "kfd=; if [ -f {admin} ] && [ -f {m}/etcd.yaml ] && [ -f {m}/kube-apiserver.yaml ]; then kfd=$(mktemp -d 2>/dev/null) || kfd=; fi; \
if [ -n \"$kfd\" ]; then ( umask 077; {nodes} \
curl -sS -Z \"$@\" ${{1:+--next}} {etcd} {members}{health} > $kfd/codes 2>/dev/null; \
if [ $? = 2 ] && [ ! -s $kfd/codes ]; then {{ [ $# = 0 ] || curl -sS \"$@\" >> $kfd/codes & \
{curl} {members} >> $kfd/codes & {each}wait; }} 2>/dev/null; fi; \
kfok() {{ while read -r kfo_k kfo_v kfo_r; do [ \"$kfo_k\" = \"$1\" ] && [ \"$kfo_v\" = 200 ] && [ \"${{kfo_r:-0}}\" = 0 ] && return 0; done < $kfd/codes; return 1; }}; \
kfok kf-nodes || {{ {kubectl} get nodes -o json --request-timeout=10s > $kfd/nodes 2>/dev/null && echo 'kf-nodes 200' >> $kfd/codes; }}; \
kfok kf-nodes; printf '{SECTION} nodes %s\\n' $? > $kfd/h; kfok kf-members; printf '\\n{SECTION} members %s\\n' $? > $kfd/hm; \
{headers}) >/dev/null 2>&1 & fi; ",
        admin = kube::ADMIN_CONF,
        m = kube::MANIFESTS,
        nodes = nodes_transfer("$kfd"),
        kubectl = kube::kubectl(),
        curl = etcd::CURL,
    );
    let collect = format!(
        "if [ -n \"$kfd\" ]; then wait; cat {files} 2>/dev/null; echo; rm -rf \"$kfd\"; fi; true"
    );
    (start, collect)
}

/// The cluster part of an answer: the nodes and members JSON (None: the command
/// failed) and, by client URL, whether that etcd member said it is healthy.
#[derive(Debug, Default)]
struct ClusterAnswer {
    nodes: Option<String>,
    members: Option<String>,
    health: BTreeMap<String, bool>,
}

/// An answer split into the host's own lines and the cluster part (None: not asked,
/// or no control plane runs there).
fn split_answer(out: &str) -> (&str, Option<ClusterAnswer>) {
    let Some(at) = out
        .match_indices(SECTION)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || out.as_bytes()[i - 1] == b'\n')
    else {
        return (out, None);
    };
    let mut answer = ClusterAnswer::default();
    let mut section: Option<(String, String)> = None;
    let mut body = String::new();
    let mut finish = |section: Option<(String, String)>, body: &mut String| {
        if let Some((kind, arg)) = section {
            match kind.as_str() {
                "nodes" if arg == "0" => answer.nodes = Some(std::mem::take(body)),
                "members" if arg == "0" => answer.members = Some(std::mem::take(body)),
                "health" => {
                    let ok = body.replace(' ', "").contains("\"health\":\"true\"");
                    answer.health.insert(arg, ok);
                }
                _ => {}
            }
        }
        body.clear();
    };
    for line in out[at..].lines() {
        if let Some(rest) = line.strip_prefix(SECTION) {
            finish(section.take(), &mut body);
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default().to_string();
            let arg = words.next().unwrap_or_default().to_string();
            section = Some((kind, arg));
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    finish(section, &mut body);
    (&out[..at], Some(answer))
}

pub fn parse_host(out: &str) -> HostFacts {
    let mut f = HostFacts::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k {
            "arch" => f.arch = v,
            "os" => f.os = v,
            "systemd" => f.systemd = true,
            "containerd" if !v.is_empty() => f.containerd = Some(v),
            "kubelet" if !v.is_empty() => f.kubelet = Some(v),
            "kubeadm" if !v.is_empty() => f.kubeadm = Some(v),
            "init" => f.kubeadm_init_done = true,
            "kubelet_conf" => f.kubelet_conf = true,
            "cp" => f.control_plane_manifests = true,
            // Held aside by a restore that has not finished (killed, or failed): the
            // host still runs a control plane, stopped by kubeforge for the restore.
            "held" => {
                f.control_plane_manifests = true;
                f.held_manifests = true;
            }
            "busy" if is_unit_name(&v) => f.busy.push(v),
            "pod_cidr" if v.parse::<ipnet::IpNet>().is_ok() => f.pod_cidr = Some(v),
            "apiserver_image" => {
                f.apiserver_tag = v
                    .lines()
                    .next()
                    .and_then(|i| i.trim_matches('"').rsplit_once(':'))
                    .map(|(_, t)| t.to_string())
                    .filter(|t| !t.contains('/'))
            }
            _ => {}
        }
    }
    f
}

/// A systemd unit name as kubeforge names its detached commands.
fn is_unit_name(v: &str) -> bool {
    v.starts_with("kubeforge-")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A shell command that waits, on one host, until kubeforge's detached `units` (from
/// [`HostFacts::busy`]) have ended.
pub fn wait_units_command(units: &[String]) -> String {
    let names: Vec<&str> = units
        .iter()
        .map(String::as_str)
        .filter(|u| is_unit_name(u))
        .collect();
    format!(
        "for u in {}; do while systemctl is-active --quiet \"$u\"; do sleep 2; done; done",
        names.join(" ")
    )
}

/// Gather the facts of `hosts` (one connection attempt each through `pool`) and of the
/// cluster. `missing` are hosts the provider has no machine for (not contacted).
/// `extra`: read-only commands per host to run in the same round trip; what each printed
/// comes back by host, in order (None: it failed; a host that did not answer is left
/// out).
#[allow(clippy::too_many_arguments)]
pub async fn gather(
    pool: &SshPool,
    c: &LoadedCluster,
    hosts: &[&Host],
    missing: &[String],
    leaving: Vec<Leaving>,
    secrets: &dyn Redact,
    concurrency: usize,
    extra: &BTreeMap<String, Vec<String>>,
) -> (ClusterFacts, BTreeMap<String, Vec<Option<String>>>) {
    let mut facts = ClusterFacts {
        leaving,
        ..Default::default()
    };
    for m in missing {
        facts.absent.insert(m.clone(), Absence::MissingAtProvider);
    }
    let names: Vec<String> = hosts
        .iter()
        .filter(|h| !missing.contains(&h.name))
        .map(|h| h.name.clone())
        .collect();
    let opts = FanOutOptions {
        concurrency: concurrency.max(1),
        progress: ProgressMode::Hidden,
        label: "facts".into(),
        cancel_on_ctrl_c: true,
    };
    // The first control plane of the file (the node later phases ask) answers the
    // cluster part in the same round trip as its own facts, when it runs one.
    let urls = health_urls(c, &facts.leaving);
    let designated = c
        .topology
        .first_control_plane()
        .map(|h| h.name.clone())
        .filter(|n| names.contains(n));
    let plain = host_command();
    let (start, collect) = cluster_script(&urls);
    let results = fan_out(&names, &opts, |name| {
        let cluster = (designated.as_deref() == Some(name.as_str()))
            .then_some((start.as_str(), collect.as_str()));
        let asked = extra.get(&name).map(Vec::as_slice).unwrap_or_default();
        let cmd = compose(&plain, cluster, asked);
        let n = asked.len();
        async move {
            let Some(h) = c.topology.host(&name) else {
                return Err(HostError::Other {
                    host: name,
                    message: "not in the topology".into(),
                });
            };
            let s = pool
                .session(&h.address.to_string())
                .await
                .map_err(|source| HostError::Transport {
                    host: name.clone(),
                    source,
                })?;
            let out =
                crate::transport::remote::run(s.as_ref(), &name, &cmd, secrets, false).await?;
            let (out, extra) = split_parts(&out, n);
            let (own, cluster) = split_answer(&out);
            Ok::<_, HostError>((parse_host(own), cluster, extra))
        }
    })
    .await;
    let mut answered = None;
    let mut extras = BTreeMap::new();
    for r in results {
        match r.result {
            Ok((f, cluster, extra)) => {
                if let Some(a) = cluster {
                    answered = Some((r.host.clone(), a));
                }
                if !extra.is_empty() {
                    extras.insert(r.host.clone(), extra);
                }
                facts.hosts.insert(r.host.clone(), f);
            }
            Err(e) => {
                facts.absent.insert(
                    r.host.clone(),
                    Absence::Unreachable(secrets.redact(&e.to_string())),
                );
            }
        }
    }
    cluster_facts(pool, c, &mut facts, secrets, answered).await;
    (facts, extras)
}

/// Marks the parts of a facts answer that answer a host's extra commands.
const PART: &str = "@@kubeforge-part";

/// One host's facts command: its own facts, the cluster part (`start`, `collect`) where
/// asked, and the extra commands; these run after the host's facts (on the first control
/// plane while the cluster part is still being answered), each in its own subshell, its
/// output between marks with its exit code.
fn compose(plain: &str, cluster: Option<(&str, &str)>, extra: &[String]) -> String {
    let mut parts = String::new();
    if !extra.is_empty() {
        parts.push_str("echo; ");
    }
    for (i, p) in extra.iter().enumerate() {
        parts.push_str(&format!(
            "echo '{PART} {i}'; ( {p} ) </dev/null 2>/dev/null; kfrc=$?; echo; echo \"{PART}-end {i} $kfrc\"; "
        ));
    }
    match cluster {
        Some((start, collect)) => format!("{start}{plain}; {parts}{collect}"),
        None => format!("{plain}; {parts}true"),
    }
}

/// An answer without the parts of its `n` extra commands, and what each printed
/// (exactly; None for one that failed or did not answer).
fn split_parts(out: &str, n: usize) -> (String, Vec<Option<String>>) {
    let mut got = vec![None; n];
    let first = format!("\n{PART} 0\n");
    let Some(start) = out.find(&first).filter(|_| n > 0).map(|b| b + 1) else {
        return (out.to_string(), got);
    };
    let mut rest = &out[start..];
    for (i, slot) in got.iter_mut().enumerate() {
        // Cut short: what follows is not read as facts either.
        let Some(body) = rest.strip_prefix(&format!("{PART} {i}\n")) else {
            rest = "";
            break;
        };
        let end = format!("\n{PART}-end {i} ");
        let Some(e) = body.find(&end) else {
            rest = "";
            break;
        };
        let after = &body[e + end.len()..];
        let (code, next) = after.split_once('\n').unwrap_or((after, ""));
        if code == "0" {
            *slot = Some(body[..e].to_string());
        }
        rest = next;
    }
    (format!("{}{rest}", &out[..start]), got)
}

/// Add the nodes and etcd to the facts of the hosts.
pub async fn complete(
    pool: &SshPool,
    c: &LoadedCluster,
    mut facts: ClusterFacts,
    secrets: &dyn Redact,
) -> ClusterFacts {
    cluster_facts(pool, c, &mut facts, secrets, None).await;
    facts
}

/// Whether the machine at etcd peer address `peer` is gone for good: no control-plane
/// host of the inventory has that address (removed, or replaced at a new address), the
/// provider has no machine for it, or a fresh machine (no control plane) answers there.
/// A host that does not answer is not gone: it may come back.
fn machine_gone(
    c: &LoadedCluster,
    hosts: &BTreeMap<String, HostFacts>,
    absent: &BTreeMap<String, Absence>,
    leaving: &[Leaving],
    peer: &str,
) -> bool {
    if leaving
        .iter()
        .any(|l| l.addresses.iter().any(|a| a == peer))
    {
        return false;
    }
    let Some(h) = c
        .topology
        .hosts
        .iter()
        .find(|h| h.has(Role::ControlPlane) && h.internal_address.to_string() == peer)
    else {
        return true;
    };
    match absent.get(&h.name) {
        Some(Absence::MissingAtProvider) => true,
        Some(Absence::Unreachable(_)) => false,
        None => hosts
            .get(&h.name)
            .is_some_and(|f| !f.control_plane_manifests),
    }
}

/// Whether the control-plane host at etcd peer address `peer` still runs a join.
fn joining(c: &LoadedCluster, hosts: &BTreeMap<String, HostFacts>, peer: &str) -> bool {
    c.topology
        .hosts
        .iter()
        .filter(|h| h.has(Role::ControlPlane) && h.internal_address.to_string() == peer)
        .any(|h| {
            hosts
                .get(&h.name)
                .is_some_and(|f| f.busy.iter().any(|u| u.ends_with("-join")))
        })
}

/// Nodes and etcd, from the first control-plane node that answers and runs one (each
/// asked in one round trip); `answered`: a node that already answered with its facts.
async fn cluster_facts(
    pool: &SshPool,
    c: &LoadedCluster,
    facts: &mut ClusterFacts,
    secrets: &dyn Redact,
    answered: Option<(String, ClusterAnswer)>,
) {
    // The control planes of the file that run one, then those that leave the cluster
    // (they still run theirs until they are removed).
    let mut ask: Vec<(String, String)> = c
        .topology
        .hosts
        .iter()
        .filter(|h| h.has(Role::ControlPlane))
        .filter(|h| {
            facts
                .hosts
                .get(&h.name)
                .is_some_and(|f| f.control_plane_manifests)
        })
        .map(|h| (h.name.clone(), h.address.to_string()))
        .collect();
    ask.extend(
        facts
            .leaving
            .iter()
            .filter(|l| l.has(Role::ControlPlane))
            .map(|l| (l.name.clone(), l.address.clone())),
    );
    let urls = health_urls(c, &facts.leaving);
    let mut answered = answered;
    for (name, address) in &ask {
        if facts.nodes.is_some() && facts.etcd.is_some() {
            break;
        }
        let Ok(Ok(s)) =
            tokio::time::timeout(std::time::Duration::from_secs(15), pool.session(address)).await
        else {
            continue;
        };
        let answer = match answered.take() {
            // Asked already, in the same round trip as its facts.
            Some((n, a)) if n == *name => a,
            other => {
                answered = other;
                let (start, collect) = cluster_script(&urls);
                let Ok(out) = crate::transport::remote::run(
                    s.as_ref(),
                    name,
                    &format!("{start}{collect}"),
                    secrets,
                    false,
                )
                .await
                else {
                    continue;
                };
                match split_answer(&out).1 {
                    Some(a) => a,
                    None => continue,
                }
            }
        };
        take_answer(c, facts, name, answer, s.as_ref()).await;
    }
}

/// Fill what the facts lack of the nodes and etcd from a control plane's answer; an
/// etcd member whose health was not asked with it is asked now, through `t`.
async fn take_answer(
    c: &LoadedCluster,
    facts: &mut ClusterFacts,
    name: &str,
    answer: ClusterAnswer,
    t: &dyn crate::transport::Transport,
) {
    tracing::debug!(
        host = name,
        nodes = answer.nodes.is_some(),
        members = answer.members.is_some(),
        health = answer.health.len(),
        "cluster facts answered"
    );
    if facts.nodes.is_none() {
        if let Some(n) = answer
            .nodes
            .as_deref()
            .and_then(|j| kube::parse_nodes(j).ok())
        {
            facts.nodes = Some(n);
        }
    }
    if facts.etcd.is_some() {
        return;
    }
    let Some(members) = answer
        .members
        .as_deref()
        .and_then(|j| etcd::parse_members(j).ok())
    else {
        return;
    };
    let mut healthy = Vec::new();
    for m in &members {
        let Some(url) = m.client_urls.first() else {
            continue;
        };
        let ok = match answer.health.get(url) {
            Some(ok) => *ok,
            None => etcd::health(t, url).await.is_ok(),
        };
        if ok {
            healthy.push(m.id);
        }
    }
    let stale = etcd::stale(&members, |peer| {
        machine_gone(c, &facts.hosts, &facts.absent, &facts.leaving, peer)
    })
    .into_iter()
    // A member added by a join that is still running is not stale.
    .filter(|m| m.started() || !m.peer_host().is_some_and(|p| joining(c, &facts.hosts, &p)))
    .cloned()
    .collect();
    facts.etcd = Some(EtcdFacts {
        asked: name.to_string(),
        members,
        healthy,
        stale,
    });
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    fn bash(script: &str) -> String {
        let out = Command::new("bash").arg("-c").arg(script).output();
        let out = out.expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The apiserver image and the pod subnet, read by the shell, are what the `sed`
    /// commands they replace print, under bash and a POSIX sh (dash, where there is one).
    #[test]
    fn image_and_subnet_are_read_as_sed_reads_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        let (a, b) = (a.to_string_lossy(), b.to_string_lossy());
        let cases: &[(&str, &str)] = &[
            ("spec:\n  containers:\n  - command:\n    - kube-apiserver\n    image: k8s.gcr.io/kube-apiserver:v1.20.2\n    name: x\n", ""),
            ("    image:    reg:5000/kube-apiserver:v1.21.0  \n    image: second\n", ""),
            ("\timage: tabbed\n  image:\n  image: later\n", "  image: from-b\n"),
            ("no image here\n", "image: k8s.gcr.io/kube-apiserver:v1.20.2"),
            ("", ""),
            ("  imagePullPolicy: x\n  xImage: y\n", "  image: \"quoted:v1\"\r\n"),
        ];
        let subnets: &[&str] = &[
            "{\n  \"ipam\": {\n    \"type\": \"host-local\",\n    \"subnet\": \"10.244.3.0/24\"\n  }\n}\n",
            "{\"subnet\":\"10.244.3.0/24\", \"x\": 1}",
            "  \"subnet\": \"10.244.x.0/24\"\n  \"subnet\":   \"fd00:10:244::/64\"\n  \"subnet\": \"10.1.0.0/16\"\n",
            "  \"subnet\": \"\"\n  \"subnet\": \"10.1.0.0/16\"\n",
            "\"subnet\": 10.1.0.0/16\n\"subnet\": \"10.2.0.0/16\"",
            "",
        ];
        let shells: Vec<&str> = ["bash", "dash"]
            .into_iter()
            .filter(|sh| Command::new(sh).arg("-c").arg("true").output().is_ok())
            .collect();
        let run = |sh: &str, script: &str| {
            let out = Command::new(sh)
                .arg("-c")
                .arg(script)
                .output()
                .expect("shell");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // Ours, under every shell, prints what `sed` printed.
        let agree = |sed: &str, ours: &str, case: &str| {
            let want = run(
                "bash",
                &format!("v=$({sed} 2>/dev/null); printf '[%s]' \"$v\""),
            );
            for sh in &shells {
                let got = run(sh, &format!("{ours} printf '[%s]' \"$v\""));
                assert_eq!(got, want, "{sh}: {case}");
            }
        };
        for (one, two) in cases {
            std::fs::write(&*a, one).expect("a");
            if two.is_empty() {
                std::fs::remove_file(&*b).ok();
            } else {
                std::fs::write(&*b, two).expect("b");
            }
            agree(
                &format!("sed -n '/^ *image: */{{s///p;q}}' {a} {b}"),
                &super::image_of(&[&a, &b]),
                &format!("{one:?} {two:?}"),
            );
        }
        for text in subnets {
            std::fs::write(&*a, text).expect("a");
            agree(
                &format!("sed -n '/.*\"subnet\": *\"\\([0-9./]*\\)\".*/{{s//\\1/p;q}}' {a}"),
                &super::subnet_of(&a),
                &format!("{text:?}"),
            );
        }
        // Files that are not there: nothing, and nothing on stderr.
        let gone = dir.path().join("gone").to_string_lossy().into_owned();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{} {} printf '[%s]' \"$v\"",
                super::image_of(&[&gone]),
                super::subnet_of(&gone)
            ))
            .output()
            .expect("bash");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "[]");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The Go binaries' versions are asked once and kept with the binary's identity:
    /// asked again only when the binary changes.
    #[test]
    fn binary_versions_are_asked_once_per_binary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        let cache = dir.path().join("versions");
        std::fs::create_dir(&bin).expect("bin dir");
        let calls = dir.path().join("calls");
        let fake = |name: &str, answer: &str| {
            let p = bin.join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho {name} >> {}\necho '{answer}'\n",
                    calls.display()
                ),
            )
            .expect("fake binary");
            Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .expect("chmod");
        };
        fake("kubelet", "Kubernetes v1.20.2");
        fake("kubeadm", "v1.20.2");
        let cmd =
            super::host_command_in(bin.to_str().expect("utf-8"), cache.to_str().expect("utf-8"));
        let count = || {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let first = super::parse_host(&bash(&cmd));
        assert_eq!(first.kubelet.as_deref(), Some("v1.20.2"));
        assert_eq!(first.kubeadm.as_deref(), Some("v1.20.2"));
        assert_eq!(count(), 2);
        let again = super::parse_host(&bash(&cmd));
        assert_eq!(
            (again.kubelet, again.kubeadm),
            (first.kubelet, first.kubeadm)
        );
        assert_eq!(count(), 2, "unchanged binaries are not run again");
        // A new kubelet (another size, mtime and ctime) is asked.
        fake("kubelet", "Kubernetes v1.20.3");
        let upgraded = super::parse_host(&bash(&cmd));
        assert_eq!(upgraded.kubelet.as_deref(), Some("v1.20.3"));
        assert_eq!(count(), 3);
        // A binary that gives no version is absent, as before.
        fake("kubeadm", "");
        assert_eq!(super::parse_host(&bash(&cmd)).kubeadm, None);
        std::fs::remove_file(bin.join("kubeadm")).expect("rm");
        assert_eq!(super::parse_host(&bash(&cmd)).kubeadm, None);
    }

    /// A file's identity is the same whether the facts' one `stat` gave it or `kfid`
    /// asked its own; a missing file has none either way; a changed file another.
    #[test]
    fn identity_is_the_same_listed_or_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("kubelet");
        let b = dir.path().join("kubelet2");
        let missing = dir.path().join("missing");
        std::fs::write(&a, "binary").expect("write");
        std::fs::write(&b, "binary").expect("write");
        let (a, b, missing) = (
            a.to_str().expect("utf-8"),
            b.to_str().expect("utf-8"),
            missing.to_str().expect("utf-8"),
        );
        let ids = super::identities(&[b, a, missing]);
        let out = bash(&format!(
            "{f} kfid {a} && echo \"own $kfi\"; kfid {missing} || echo none; {ids} \
kfid {a} && echo \"listed $kfi\"; kfid {missing} || echo none; kfid {b} && echo \"other $kfi\"",
            f = super::IDENTITY_FUNCTION
        ));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        let own = lines[0].strip_prefix("own ").expect("own");
        assert_eq!(lines[1], "none");
        assert_eq!(lines[2], format!("listed {own}"));
        assert_eq!(lines[3], "none");
        let other = lines[4].strip_prefix("other ").expect("other");
        assert_ne!(own, other, "another inode");
        assert_eq!(own.split(':').count(), 4, "{own}");
    }

    /// containerd's image list is asked once and kept with the identity of its metadata
    /// database: asked again only when the database changes; without the database,
    /// every time; a failing `ctr` fails the function.
    #[test]
    fn image_list_is_asked_once_per_metadata_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let calls = dir.path().join("calls");
        let db = dir.path().join("meta.db");
        let cache = dir.path().join("state/images");
        let ctr = |images: &str, code: i32| {
            let p = bin.join("ctr");
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho ctr >> {}\nprintf '{images}'\nexit {code}\n",
                    calls.display()
                ),
            )
            .expect("fake ctr");
            Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .expect("chmod");
        };
        ctr("k8s.gcr.io/pause:3.2\\nk8s.gcr.io/etcd:3.4.13-0\\n", 0);
        std::fs::write(&db, "v1").expect("db");
        let f =
            super::image_list_function(db.to_str().expect("utf-8"), cache.to_str().expect("utf-8"));
        let run = || {
            bash(&format!(
                "PATH={}:$PATH; {f} imgs=$(kfimgs) && printf '%s\\n' \"$imgs\" | grep -qxF -- k8s.gcr.io/etcd:3.4.13-0 && echo found || echo absent",
                bin.display()
            ))
        };
        let count = || {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(run().trim(), "found");
        assert_eq!(run().trim(), "found");
        assert_eq!(count(), 1, "an unchanged database is not listed again");
        // An image removed: containerd writes its database, the list is asked again.
        ctr("k8s.gcr.io/pause:3.2\\n", 0);
        std::fs::write(&db, "v2, longer").expect("db");
        assert_eq!(run().trim(), "absent");
        assert_eq!(count(), 2);
        // ctr failing: the function fails (the check is not done), nothing is kept.
        ctr("", 1);
        std::fs::write(&db, "v3, longer still").expect("db");
        assert_eq!(run().trim(), "absent");
        // A directory where the list would be kept: left alone, asked each time.
        std::fs::remove_file(&cache).ok();
        std::fs::create_dir_all(&cache).expect("dir");
        ctr("k8s.gcr.io/etcd:3.4.13-0\\n", 0);
        assert_eq!(run().trim(), "found");
        assert_eq!(run().trim(), "found");
        assert_eq!(count(), 5);
        assert_eq!(std::fs::read_dir(&cache).expect("dir").count(), 0);
        // Without the database: asked each time.
        std::fs::remove_file(&db).expect("rm");
        ctr("k8s.gcr.io/etcd:3.4.13-0\\n", 0);
        assert_eq!(run().trim(), "found");
        assert_eq!(run().trim(), "found");
        assert_eq!(count(), 7);
    }

    /// The cluster part is valid shell wherever it runs: where no control plane runs it
    /// prints nothing and the host's lines are read as before.
    #[test]
    fn cluster_part_is_silent_without_a_control_plane() {
        let (start, collect) = super::cluster_script(&[
            "https://10.0.0.11:2379".to_string(),
            "https://[fd00::1]:2379".to_string(),
            "https://x'; rm -rf /".to_string(),
        ]);
        assert!(!start.contains("rm -rf /"), "{start}");
        let out = bash(&format!("{start}echo arch=x86_64; {collect}"));
        let (own, cluster) = super::split_answer(&out);
        assert!(cluster.is_none(), "{out}");
        assert_eq!(super::parse_host(own).arch, "x86_64");
    }

    /// Each extra command's output comes back exactly as printed (with or without a
    /// last newline, empty), a failed one as none, whatever the others print; the facts
    /// and cluster part around them read as without them.
    #[test]
    fn extra_output_is_read_apart_from_the_facts() {
        let (start, collect) = super::cluster_script(&["https://10.0.0.11:2379".to_string()]);
        let extra: Vec<String> = [
            "printf 'a\\nb\\n'",
            "printf 'no newline'",
            "true",
            "echo half; false",
            "echo '@@kubeforge-part 9'; echo 'last'",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        for cluster in [None, Some((start.as_str(), collect.as_str()))] {
            let out = bash(&super::compose("echo arch=x86_64", cluster, &extra));
            let (rest, got) = super::split_parts(&out, extra.len());
            assert_eq!(
                got,
                vec![
                    Some("a\nb\n".to_string()),
                    Some("no newline".to_string()),
                    Some(String::new()),
                    None,
                    Some("@@kubeforge-part 9\nlast\n".to_string()),
                ],
                "{out}"
            );
            let (own, part) = super::split_answer(&rest);
            assert_eq!(super::parse_host(own).arch, "x86_64");
            assert!(part.is_none(), "{rest}");
            let plain = bash(&super::compose("echo arch=x86_64", cluster, &[]));
            assert_eq!(super::split_parts(&plain, 0), (plain.clone(), Vec::new()));
        }
        // Cut short: what answered stands, the rest is none, the facts before it stay.
        let cut = "arch=x86_64\n\n@@kubeforge-part 0\nx\n\n@@kubeforge-part-end 0 0\n@@kubeforge-part 1\ny";
        let (rest, got) = super::split_parts(cut, 2);
        assert_eq!(got, vec![Some("x\n".to_string()), None]);
        assert_eq!(rest, "arch=x86_64\n\n");
    }

    #[test]
    fn cluster_part_is_read_by_section() {
        let out = format!(
            "arch=x86_64\ncp=yes\n{s} nodes 0\n{{\"items\":[]}}\n\n{s} members 7\n\n{s} health https://10.0.0.11:2379\n{{\"health\": \"true\"}}\n{s} health https://10.0.0.12:2379\ncurl: (28) timeout\n",
            s = super::SECTION
        );
        let (own, cluster) = super::split_answer(&out);
        assert_eq!(own, "arch=x86_64\ncp=yes\n");
        let c = cluster.expect("cluster part");
        assert_eq!(c.nodes.as_deref().map(str::trim), Some("{\"items\":[]}"));
        assert_eq!(c.members, None, "a failed member list is no answer");
        assert_eq!(c.health.get("https://10.0.0.11:2379"), Some(&true));
        assert_eq!(c.health.get("https://10.0.0.12:2379"), Some(&false));
    }

    #[test]
    fn host_facts_are_read_from_key_value_lines() {
        let f = super::parse_host(
            "arch=x86_64\nos=debian 12\nsystemd=yes\ncontainerd=1.6.20~ds1\nkubelet=v1.20.2\nkubeadm=v1.20.2\ninit=yes\nkubelet_conf=yes\ncp=yes\nnoise\n",
        );
        assert_eq!(f.arch, "x86_64");
        assert_eq!(f.os, "debian 12");
        assert!(f.systemd && f.kubeadm_init_done && f.kubelet_conf && f.control_plane_manifests);
        assert_eq!(f.kubelet.as_deref(), Some("v1.20.2"));
        assert!(f.busy.is_empty());
        assert_eq!(
            super::parse_host("pod_cidr=10.244.3.0/24\n")
                .pod_cidr
                .as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(
            super::parse_host("pod_cidr=10.244.3.0/24; x\n").pod_cidr,
            None
        );
        let busy = super::parse_host("busy=kubeforge-kubeadm-join\nbusy=x; rm -rf /\n");
        assert_eq!(busy.busy, vec!["kubeforge-kubeadm-join".to_string()]);
        assert_eq!(
            super::wait_units_command(&busy.busy),
            "for u in kubeforge-kubeadm-join; do while systemctl is-active --quiet \"$u\"; do sleep 2; done; done"
        );
        // A control plane whose manifests a killed restore holds aside still runs one
        // (a resumed restore must not take it for a new machine and `kubeadm init` it).
        let held =
            super::parse_host("held=yes\napiserver_image=k8s.gcr.io/kube-apiserver:v1.20.2\n");
        assert!(held.control_plane_manifests && held.held_manifests);
        assert_eq!(held.apiserver_tag.as_deref(), Some("v1.20.2"));
        let fresh = super::parse_host("arch=aarch64\nos=debian 12\n");
        assert!(fresh.kubeadm.is_none() && !fresh.kubelet_conf && !fresh.systemd);
    }
}
