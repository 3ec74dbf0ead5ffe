//! Checks that need more than types: addresses, CIDR overlaps, counts, combinations.
//! Every problem is collected (with its field's position) rather than stopping at the
//! first. The resolved `Topology` is built on the way.

use super::error::{Reporter, SpecError};
use super::inventory::{InventoryHost, Role};
use super::syntax;
use super::topology::{docker_layout, Endpoint, Host, Topology};
use super::types::*;
use crate::addons::AddonId;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The newest Kubernetes minor release kubeforge knows. Newer ones are accepted with a
/// warning (kubeadm's config API has been stable at v1beta4 since 1.31).
pub const NEWEST_KNOWN_MINOR: u64 = 34;
pub const OLDEST_SUPPORTED_MINOR: u64 = 20;

/// Size limits of a cluster (see README, "Limits"). Anything larger is refused with a
/// positioned error before any work proportional to it is done.
pub mod limits {
    /// Machines of a cluster (Kubernetes' own tested scale) and hosts of an inventory.
    pub const MAX_NODES: u32 = 5000;
    /// Extra names and addresses of the apiserver certificate.
    pub const MAX_CERT_SANS: usize = 100;
    /// Node labels of a pool or an inventory host.
    pub const MAX_LABELS: usize = 64;
    /// Extra disks of a machine.
    pub const MAX_EXTRA_DISKS: usize = 16;
    /// MetalLB pools, and the addresses (CIDRs or ranges) of each.
    pub const MAX_POOLS: usize = 64;
    pub const MAX_POOL_ADDRESSES: usize = 64;
    /// Kubernetes nodes on kubeforge's bridge CNI: every node carries a route to every
    /// other node's pod /24 (one L2 segment), so it is meant for small clusters.
    pub const MAX_BRIDGE_NODES: usize = 256;
    /// Any other list of the cluster file (skipped phases, ignored preflight checks,
    /// interfaces, BGP peers and communities, devices of a Ceph node, group names,
    /// allowed CIDRs).
    pub const MAX_LIST: usize = 64;
}
use limits::*;

/// Parse `v1.30.4` / `1.30.4` into a semantic version.
pub fn parse_kubernetes_version(s: &str) -> Option<semver::Version> {
    let v = semver::Version::parse(s.strip_prefix('v').unwrap_or(s)).ok()?;
    (v.major == 1).then_some(v)
}

/// An IPv4 CIDR (every subnet and pool of the cluster file: IPv6 is not supported yet).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{}` is not a CIDR like 10.244.0.0/16", syntax::shown(s)))?;
    if matches!(net, IpNet::V6(_)) {
        return Err(syntax::ipv6_unsupported(s));
    }
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// An IPv4 address (VIP, host addresses, BGP peers, the ingress address: IPv6 is not
/// supported yet).
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    syntax::ipv4(s).map(IpAddr::V4)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_private(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            let a = n.network();
            a.is_private() && n.broadcast().is_private()
        }
        IpNet::V6(n) => (n.network().segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// A MetalLB pool entry: a CIDR or an inclusive range.
#[derive(Debug, Clone, Copy)]
pub struct AddrRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl AddrRange {
    pub fn parse(s: &str) -> Result<AddrRange, String> {
        let bad = || format!("`{s}` is neither a CIDR nor a range like 192.0.2.10-192.0.2.20");
        if let Some((a, b)) = s.split_once('-') {
            let first: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let last: IpAddr = b.trim().parse().map_err(|_| bad())?;
            if first.is_ipv6() || last.is_ipv6() {
                return Err(syntax::ipv6_unsupported(s));
            }
            if first.is_ipv4() != last.is_ipv4() {
                return Err(format!("`{s}` mixes IPv4 and IPv6"));
            }
            if first > last {
                return Err(format!("`{s}` ends before it starts"));
            }
            return Ok(AddrRange { first, last });
        }
        let net = parse_cidr(s).map_err(|e| if s.contains('/') { e } else { bad() })?;
        Ok(AddrRange {
            first: net.network(),
            last: net.broadcast(),
        })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.first.is_ipv4() == ip.is_ipv4() && self.first <= *ip && *ip <= self.last
    }

    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.first.is_ipv4() == other.first.is_ipv4()
            && self.first <= other.last
            && other.first <= self.last
    }

    pub fn overlaps_net(&self, net: &IpNet) -> bool {
        self.overlaps(&AddrRange {
            first: net.network(),
            last: net.broadcast(),
        })
    }
}

fn nth_host(net: &IpNet, n: u32) -> Option<IpAddr> {
    match net {
        IpNet::V4(v4) => {
            let base = u32::from(v4.network());
            let ip = base.checked_add(n)?;
            let ip = std::net::Ipv4Addr::from(ip);
            (v4.contains(&ip) && ip != v4.broadcast()).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v6) => {
            let base = u128::from(v6.network());
            let ip = std::net::Ipv6Addr::from(base.checked_add(u128::from(n))?);
            v6.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

/// Default subnet of the docker provider's internal network.
pub const DOCKER_DEFAULT_SUBNET: &str = "172.29.10.0/24";

/// Validate `cluster` (and the inventory of a static provider) and resolve its hosts.
/// Returns None when any error was reported.
pub fn check(
    c: &Cluster,
    inventory: Option<Vec<InventoryHost>>,
    rep: &mut Reporter<'_>,
    inv_errors: &mut Vec<SpecError>,
) -> Option<Topology> {
    let s = &c.spec;
    if c.api_version != API_VERSION {
        rep.error(
            "apiVersion",
            format!("expected `{API_VERSION}`, found `{}`", c.api_version),
        );
    }
    if c.kind != KIND_CLUSTER {
        rep.error(
            "kind",
            format!("expected `{KIND_CLUSTER}`, found `{}`", c.kind),
        );
    }
    if !is_dns_label(&c.metadata.name, 40) {
        rep.error(
            "metadata.name",
            format!(
                "`{}` is not a valid cluster name: use lower-case letters, digits and `-`, start with a letter, at most 40 characters",
                c.metadata.name
            ),
        );
    }
    check_version(&s.kubernetes_version, rep);
    check_lengths(s, rep);
    let nets = check_networking(&s.networking, rep);
    check_counts(&s.node_pools, rep);
    check_ssh(s, rep);
    check_state(&s.state, rep);
    check_plain_http(s, rep);
    check_values(c, rep);
    check_effective(c, rep);

    let hosts = match &s.provider {
        Provider::Static(_) => static_hosts(c, inventory, nets.node.as_ref(), rep, inv_errors),
        _ => made_hosts(c, rep),
    };
    let node_subnet = match s.provider.machine_subnet() {
        Some((subnet, _)) => subnet.parse::<IpNet>().ok(),
        None => nets.node,
    };
    if let Some(sub) = &node_subnet {
        for (field, net) in [
            ("spec.networking.podSubnet", &nets.pod),
            ("spec.networking.serviceSubnet", &nets.service),
        ] {
            if let Some(net) = net {
                if overlaps(net, sub) {
                    rep.error(field, format!("{net} overlaps the node subnet {sub}"));
                }
            }
        }
    }
    let hosts = hosts?;
    check_login(s, &hosts, rep);
    check_bridge_cni(s, &hosts, &nets, rep);
    let endpoint = check_load_balancer(s, &hosts, node_subnet.as_ref(), rep)?;
    check_addons(s, &hosts, &endpoint, &nets, rep);
    if !rep.errors.is_empty() || !inv_errors.is_empty() {
        return None;
    }
    Some(Topology {
        hosts,
        node_subnet,
        endpoint,
        pod_cidr_pins: Default::default(),
    })
}

fn check_version(v: &str, rep: &mut Reporter<'_>) {
    let field = "spec.kubernetesVersion";
    match parse_kubernetes_version(v) {
        None => rep.error(
            field,
            format!("`{v}` is not a Kubernetes version like v1.30.4 (semantic version, major 1)"),
        ),
        Some(ver) if ver.minor < OLDEST_SUPPORTED_MINOR => rep.error(
            field,
            format!("Kubernetes {v} is not supported: kubeforge supports 1.{OLDEST_SUPPORTED_MINOR} and later"),
        ),
        Some(ver) if ver.minor > NEWEST_KNOWN_MINOR => rep.warn(
            field,
            format!("Kubernetes {v} is newer than the newest release kubeforge was tested with (1.{NEWEST_KNOWN_MINOR}); using the kubeadm v1beta4 API"),
        ),
        Some(_) => {}
    }
}

#[derive(Debug, Default)]
pub struct Nets {
    pub pod: Option<IpNet>,
    pub service: Option<IpNet>,
    pub node: Option<IpNet>,
}

fn check_networking(n: &Networking, rep: &mut Reporter<'_>) -> Nets {
    let mut out = Nets::default();
    let parse = |field: &str, s: &str, rep: &mut Reporter<'_>| match parse_cidr(s) {
        Ok(n) => Some(n),
        Err(e) => {
            rep.error(field, e);
            None
        }
    };
    out.pod = parse("spec.networking.podSubnet", &n.pod_subnet, rep);
    out.service = parse("spec.networking.serviceSubnet", &n.service_subnet, rep);
    out.node = n
        .node_subnet
        .as_deref()
        .and_then(|s| parse("spec.networking.nodeSubnet", s, rep));
    if let (Some(p), Some(sv)) = (&out.pod, &out.service) {
        if overlaps(p, sv) {
            rep.error(
                "spec.networking.serviceSubnet",
                format!("{sv} overlaps spec.networking.podSubnet {p}"),
            );
        }
    }
    if let Some(IpNet::V4(sv)) = &out.service {
        if sv.prefix_len() < 12 {
            rep.error(
                "spec.networking.serviceSubnet",
                format!("{sv} is too large: the apiserver allows at most a /12 for services"),
            );
        }
    }
    if let Some(IpNet::V4(p)) = &out.pod {
        if p.prefix_len() > 24 {
            rep.error(
                "spec.networking.podSubnet",
                format!("{p} is too small: every node gets a /24 of pod addresses, so use /24 or larger"),
            );
        }
    }
    let domain_ok = !n.dns_domain.is_empty()
        && n.dns_domain
            .split('.')
            .all(|l| is_dns_label(l, 63) || l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty());
    if !domain_ok {
        rep.error(
            "spec.networking.dnsDomain",
            format!("`{}` is not a DNS domain like cluster.local", n.dns_domain),
        );
    }
    if n.api_server_port == 0 {
        rep.error(
            "spec.networking.apiServerPort",
            "port 0 is not a valid port",
        );
    }
    out
}

/// A list longer than `max` is an error at the list (its items then get no errors of
/// their own).
fn check_len(rep: &mut Reporter<'_>, field: &str, len: usize, max: usize, what: &str) {
    if len > max {
        rep.error(
            field,
            format!("{len} {what} are more than the {max} kubeforge allows"),
        );
    }
}

fn check_lengths(s: &ClusterSpec, rep: &mut Reporter<'_>) {
    let lb = &s.load_balancer;
    check_len(
        rep,
        "spec.loadBalancer.certSans",
        lb.cert_sans.len(),
        MAX_CERT_SANS,
        "SANs",
    );
    let k = &s.kubeadm;
    check_len(
        rep,
        "spec.kubeadm.skipPhases",
        k.skip_phases.len(),
        MAX_LIST,
        "phases",
    );
    check_len(
        rep,
        "spec.kubeadm.ignorePreflightErrors",
        k.ignore_preflight_errors.len(),
        MAX_LIST,
        "checks",
    );
    for (name, pool) in [
        ("controlPlane", &s.node_pools.control_plane),
        ("workers", &s.node_pools.workers),
        ("loadBalancers", &s.node_pools.load_balancers),
    ] {
        let f = format!("spec.nodePools.{name}");
        check_len(
            rep,
            &format!("{f}.labels"),
            pool.labels.len(),
            MAX_LABELS,
            "labels",
        );
        check_len(
            rep,
            &format!("{f}.extraDisks"),
            pool.extra_disks.len(),
            MAX_EXTRA_DISKS,
            "extra disks",
        );
    }
    match &s.provider {
        Provider::Static(st) => {
            let f = "spec.provider.static.groups";
            check_len(
                rep,
                &format!("{f}.controlPlane"),
                st.groups.control_plane.len(),
                MAX_LIST,
                "groups",
            );
            check_len(
                rep,
                &format!("{f}.workers"),
                st.groups.workers.len(),
                MAX_LIST,
                "groups",
            );
            check_len(
                rep,
                &format!("{f}.loadBalancers"),
                st.groups.load_balancers.len(),
                MAX_LIST,
                "groups",
            );
        }
        Provider::Aws(a) => check_len(
            rep,
            "spec.provider.aws.allowedCidrs",
            a.allowed_cidrs.len(),
            MAX_LIST,
            "CIDRs",
        ),
        Provider::Hetzner(h) => check_len(
            rep,
            "spec.provider.hetzner.allowedCidrs",
            h.allowed_cidrs.len(),
            MAX_LIST,
            "CIDRs",
        ),
        Provider::Sakura(sk) => check_len(
            rep,
            "spec.provider.sakura.allowedCidrs",
            sk.allowed_cidrs.len(),
            MAX_LIST,
            "CIDRs",
        ),
        Provider::Docker(_) => {}
    }
    if let Some(m) = &s.addons.metallb {
        let f = "spec.addons.metallb";
        check_len(
            rep,
            &format!("{f}.pools"),
            m.pools.len(),
            MAX_POOLS,
            "pools",
        );
        for (i, p) in m.pools.iter().enumerate().take(MAX_POOLS) {
            check_len(
                rep,
                &format!("{f}.pools[{i}].addresses"),
                p.addresses.len(),
                MAX_POOL_ADDRESSES,
                "addresses",
            );
        }
        check_len(
            rep,
            &format!("{f}.interfaces"),
            m.interfaces.len(),
            MAX_LIST,
            "interfaces",
        );
        if let Some(b) = &m.bgp {
            check_len(
                rep,
                &format!("{f}.bgp.peers"),
                b.peers.len(),
                MAX_LIST,
                "peers",
            );
            check_len(
                rep,
                &format!("{f}.bgp.communities"),
                b.communities.len(),
                MAX_LIST,
                "communities",
            );
            for (i, p) in b.peers.iter().enumerate().take(MAX_LIST) {
                check_len(
                    rep,
                    &format!("{f}.bgp.peers[{i}].nodes"),
                    p.nodes.len(),
                    MAX_NODES as usize,
                    "nodes",
                );
            }
        }
    }
    if let Some(r) = &s.addons.rook_ceph {
        let f = "spec.addons.rookCeph.nodes";
        check_len(rep, f, r.nodes.len(), MAX_NODES as usize, "nodes");
        for (i, n) in r.nodes.iter().enumerate().take(MAX_NODES as usize) {
            check_len(
                rep,
                &format!("{f}[{i}].devices"),
                n.devices.len(),
                MAX_LIST,
                "devices",
            );
        }
    }
}

fn check_counts(p: &NodePools, rep: &mut Reporter<'_>) {
    let mut total: u64 = 0;
    for (name, pool) in [
        ("controlPlane", &p.control_plane),
        ("workers", &p.workers),
        ("loadBalancers", &p.load_balancers),
    ] {
        let n = pool.count.unwrap_or(0);
        total += u64::from(n);
        if n > MAX_NODES {
            rep.error(
                &format!("spec.nodePools.{name}.count"),
                format!(
                    "{n} machines are more than the {MAX_NODES} kubeforge manages in one cluster"
                ),
            );
        }
    }
    if total > u64::from(MAX_NODES)
        && rep
            .errors
            .iter()
            .all(|e| !e.field.starts_with("spec.nodePools"))
    {
        rep.error(
            "spec.nodePools",
            format!("the pools add up to {total} machines, more than the {MAX_NODES} kubeforge manages in one cluster"),
        );
    }
    let field = "spec.nodePools.controlPlane.count";
    match p.control_plane.count {
        Some(0) => rep.error(field, "at least one control-plane node is needed"),
        Some(1) => rep.warn(
            field,
            "a single control-plane node is not highly available: use 3 for production",
        ),
        Some(n) if n % 2 == 0 => rep.error(
            field,
            format!(
                "an even number of control-plane nodes ({n}) tolerates no more failures than {}: use an odd number (3 or 5)",
                n - 1
            ),
        ),
        _ => {}
    }
}

fn check_ssh(s: &ClusterSpec, rep: &mut Reporter<'_>) {
    if s.backup.keep == 0 {
        rep.error(
            "spec.backup.keep",
            "keep at least one snapshot (the newest is what a restore needs)",
        );
    }
    if let Some(ship) = &s.backup.ship {
        check_ship(s, ship, rep);
    }
    if s.ssh.port == 0 {
        rep.error("spec.ssh.port", "port 0 is not a valid port");
    }
    if s.ssh.user.is_empty() {
        rep.error("spec.ssh.user", "the SSH user must not be empty");
    }
    if let Some(b) = &s.ssh.bastion {
        if b.host.trim().is_empty() {
            rep.error(
                "spec.ssh.bastion.host",
                "the bastion host must not be empty",
            );
        }
    }
    if s.ssh.connect_timeout_seconds == 0 {
        rep.error(
            "spec.ssh.connectTimeoutSeconds",
            "must be at least 1 second",
        );
    }
    for (field, v) in [
        (
            "spec.ssh.commandTimeoutSeconds",
            s.ssh.command_timeout_seconds,
        ),
        (
            "spec.ssh.longCommandTimeoutSeconds",
            s.ssh.long_command_timeout_seconds,
        ),
    ] {
        if v == 0 {
            rep.error(field, "must be at least 1 second");
        } else if v > 86_400 {
            rep.error(field, format!("{v} s is more than a day"));
        }
    }
    if s.ssh.persist_seconds > 86_400 {
        rep.error(
            "spec.ssh.persistSeconds",
            format!(
                "{} s is more than a day (0 turns keeping connections off)",
                s.ssh.persist_seconds
            ),
        );
    }
}

/// Plain http:// for artifact mirrors and cloud API endpoints needs the same explicit
/// `allowHttp: true` next to the setting as the state endpoint.
/// Static hosts need a way to log in: `spec.ssh.keyFile`, the agent, or a key of their
/// own for every host (inventory `ansible_ssh_private_key_file` / `sshKeyFile`, or an
/// `IdentityFile` of the SSH config) and then for a bastion too.
fn check_login(s: &ClusterSpec, hosts: &[Host], rep: &mut Reporter<'_>) {
    if !matches!(s.provider, Provider::Static(_)) || s.ssh.key_file.is_some() || s.ssh.agent {
        return;
    }
    if let Some(h) = hosts.iter().find(|h| h.ssh_key_file.is_none()) {
        rep.error(
            "spec.ssh",
            format!(
                "the static provider needs a way to log in: set keyFile or agent: true (or give every host its own key; {} has none)",
                h.name
            ),
        );
        return;
    }
    if let Some(b) = &s.ssh.bastion {
        for (i, hop) in b.via.iter().chain(std::iter::once(b)).enumerate() {
            if hop.key_file.is_none() {
                rep.error(
                    if i < b.via.len() { "spec.ssh.bastion.via" } else { "spec.ssh.bastion.keyFile" },
                    format!("jump host {} needs a keyFile: every host has its own key and spec.ssh has none", hop.host),
                );
                return;
            }
        }
    }
}

fn check_plain_http(s: &ClusterSpec, rep: &mut Reporter<'_>) {
    use crate::provider::cloud::is_plain_http;
    let (endpoint, allow, provider) = match &s.provider {
        Provider::Aws(a) => (a.endpoint.as_deref(), a.allow_http, "aws"),
        Provider::Hetzner(h) => (h.endpoint.as_deref(), h.allow_http, "hetzner"),
        Provider::Sakura(k) => (k.endpoint.as_deref(), k.allow_http, "sakura"),
        Provider::Docker(_) | Provider::Static(_) => (None, true, ""),
    };
    if let Some(ep) = endpoint {
        if is_plain_http(ep) && !allow {
            rep.error(
                &format!("spec.provider.{provider}.endpoint"),
                format!(
                    "`{ep}` is plain http (the API credentials would travel in clear): set allowHttp: true next to it to allow it (local emulators only)"
                ),
            );
        } else if !is_plain_http(ep) && !ep.to_ascii_lowercase().starts_with("https://") {
            rep.error(
                &format!("spec.provider.{provider}.endpoint"),
                format!("`{ep}` is not a URL like https://api.example.com"),
            );
        }
    }
    if let Some(m) = &s.artifacts.mirror {
        if is_plain_http(m) && !s.artifacts.allow_http {
            rep.error(
                "spec.artifacts.mirror",
                format!(
                    "`{m}` is plain http: set allowHttp: true next to it to allow it (a mirror on a network you control; use https otherwise)"
                ),
            );
        }
    }
}

/// `backup.ship`: the control planes write their snapshots into the s3:// state.
fn check_ship(s: &ClusterSpec, ship: &ShipSpec, rep: &mut Reporter<'_>) {
    let field = "spec.backup.ship";
    let s3 = s
        .state
        .url
        .as_deref()
        .is_some_and(|u| u.starts_with("s3://"));
    if !s3 {
        rep.error(
            field,
            "the control planes can only ship snapshots to an s3:// state (spec.state.url); without it `kubeforge backup` and `apply` collect them from the nodes",
        );
    }
    if s.backup.interval_minutes == 0 {
        rep.error(
            field,
            "the timer is off (intervalMinutes: 0): there is nothing to ship",
        );
    }
    for (key, v) in [
        ("accessKeyIdEnv", Some(&ship.access_key_id_env)),
        ("secretAccessKeyEnv", Some(&ship.secret_access_key_env)),
        ("sessionTokenEnv", ship.session_token_env.as_ref()),
    ] {
        if let Some(v) = v {
            if !syntax::is_env_name(v) {
                rep.error(
                    &format!("{field}.{key}"),
                    format!("`{}` is not an environment variable name", syntax::shown(v)),
                );
            }
        }
    }
    if let Some(ep) = &ship.endpoint {
        let plain = ep.starts_with("http://");
        if !(plain || ep.starts_with("https://"))
            || ep.len() > 8 + 253 + 6 + 1
            || ep
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"'`$\\".contains(c))
        {
            rep.error(
                &format!("{field}.endpoint"),
                format!(
                    "`{}` is not a URL like https://minio.example.com:9000",
                    syntax::shown(ep)
                ),
            );
        } else if plain && !s.state.allow_http {
            rep.error(
                &format!("{field}.endpoint"),
                format!("`{ep}` is plain http: set spec.state.allowHttp: true to allow it (local emulators only)"),
            );
        }
    }
}

fn check_state(st: &StateSpec, rep: &mut Reporter<'_>) {
    if let Some(url) = &st.url {
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("file" | "s3" | "gs" | "az" | "azure" | "abfs" | "abfss") => {}
            _ => rep.error(
                "spec.state.url",
                format!("`{url}` is not a state store URL: expected file://DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX"),
            ),
        }
        if scheme != Some("s3") && (st.endpoint.is_some() || st.path_style) {
            rep.error(
                "spec.state.endpoint",
                "endpoint and pathStyle apply to s3:// state URLs only",
            );
        }
    }
    if let Some(ep) = &st.endpoint {
        if ep.starts_with("http://") && !st.allow_http {
            rep.error(
                "spec.state.endpoint",
                format!(
                    "`{ep}` is plain http: set allowHttp: true to allow it (local emulators only)"
                ),
            );
        } else if !ep.starts_with("http://") && !ep.starts_with("https://") {
            rep.error(
                "spec.state.endpoint",
                format!("`{ep}` is not a URL like https://minio.example.com:9000"),
            );
        }
    }
    if st.access_key_id_env.is_some() != st.secret_access_key_env.is_some() {
        rep.error(
            "spec.state",
            "set both accessKeyIdEnv and secretAccessKeyEnv, or neither (then the AWS environment variables are used)",
        );
    }
    let enc = &st.encryption;
    let set = [
        enc.key_file.is_some(),
        enc.key_env.is_some(),
        enc.passphrase_env.is_some(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        rep.error(
            "spec.state.encryption",
            "set only one of keyFile, keyEnv and passphraseEnv",
        );
    }
}

/// The hosts of a provider that makes its machines (docker, the clouds): derived names
/// and fixed addresses in its subnet (see `docker_layout`; clouds start the load
/// balancers at `.4` because AWS reserves `.1`-`.3` of every subnet).
fn made_hosts(c: &Cluster, rep: &mut Reporter<'_>) -> Option<Vec<Host>> {
    let (subnet_text, field) = c.spec.provider.machine_subnet()?;
    let provider = c.spec.provider.name();
    let what = if provider == "docker" {
        "the docker network".to_string()
    } else {
        format!("the {provider} subnet")
    };
    let subnet = match parse_cidr(subnet_text) {
        Ok(n) => n,
        Err(e) => {
            rep.error(field, e);
            return None;
        }
    };
    if !is_private(&subnet) {
        rep.error(
            field,
            format!("{subnet} is not a private range: {what} must stay inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
        );
        return None;
    }
    if matches!(subnet, IpNet::V4(n) if n.prefix_len() > 24) {
        rep.error(field, format!("{subnet} is too small: use a /24 or larger"));
        return None;
    }
    let pools = &c.spec.node_pools;
    let cp = pools.control_plane.count.unwrap_or(3);
    let workers = pools.workers.count.unwrap_or(0);
    let lbs = pools.load_balancers.count.unwrap_or(0);
    if u64::from(cp) + u64::from(workers) + u64::from(lbs) > u64::from(MAX_NODES) {
        // Reported by check_counts.
        return None;
    }
    use docker_layout::*;
    let (lb_offset, lb_max) = if provider == "docker" {
        (LB_OFFSET, LB_MAX)
    } else {
        (CLOUD_LB_OFFSET, CLOUD_LB_MAX)
    };
    let mut ok = true;
    if cp > CP_MAX {
        rep.error(
            "spec.nodePools.controlPlane.count",
            format!("the {provider} provider supports at most {CP_MAX} control-plane nodes"),
        );
        ok = false;
    }
    if lbs > lb_max {
        rep.error(
            "spec.nodePools.loadBalancers.count",
            format!("the {provider} provider supports at most {lb_max} load-balancer nodes"),
        );
        ok = false;
    }
    // Every provider that makes machines attaches extra disks (docker: loop devices).
    for (pool_field, pool) in [
        ("controlPlane", &pools.control_plane),
        ("workers", &pools.workers),
        ("loadBalancers", &pools.load_balancers),
    ] {
        for (i, d) in pool.extra_disks.iter().enumerate() {
            if let Err(e) = crate::provider::cloud::parse_size(d) {
                rep.error(&format!("spec.nodePools.{pool_field}.extraDisks[{i}]"), e);
                ok = false;
            }
        }
    }
    let name = &c.metadata.name;
    let mut hosts = Vec::new();
    let mut add =
        |prefix: &str, i: u32, offset: u32, role: Role, pool: &Pool, rep: &mut Reporter<'_>| {
            match nth_host(&subnet, offset + i) {
                Some(ip) => hosts.push(Host {
                    name: format!("{name}-{prefix}-{}", i + 1),
                    address: ip,
                    internal_address: ip,
                    roles: BTreeSet::from([role]),
                    ssh_user: c.spec.ssh.user.clone(),
                    ssh_port: c.spec.ssh.port,
                    labels: pool.labels.clone(),
                    ssh_key_file: None,
                    origin: None,
                }),
                None => rep.error(
                    "spec.nodePools",
                    format!("{subnet} has no room for {prefix}-{}", i + 1),
                ),
            }
        };
    for i in 0..lbs.min(lb_max) {
        add(
            "lb",
            i,
            lb_offset,
            Role::LoadBalancer,
            &pools.load_balancers,
            rep,
        );
    }
    for i in 0..cp.min(CP_MAX) {
        add(
            "cp",
            i,
            CP_OFFSET,
            Role::ControlPlane,
            &pools.control_plane,
            rep,
        );
    }
    for i in 0..workers {
        add(
            "worker",
            i,
            WORKER_OFFSET,
            Role::Worker,
            &pools.workers,
            rep,
        );
        if rep.errors.len() > 40 {
            break;
        }
    }
    ok.then_some(hosts)
}

fn static_hosts(
    c: &Cluster,
    inventory: Option<Vec<InventoryHost>>,
    node_subnet: Option<&IpNet>,
    rep: &mut Reporter<'_>,
    inv_errors: &mut Vec<SpecError>,
) -> Option<Vec<Host>> {
    let inv = inventory?;
    if inv.len() > MAX_NODES as usize {
        rep.error(
            "spec.provider.static.inventory",
            format!(
                "the inventory lists {} hosts, more than the {MAX_NODES} kubeforge manages in one cluster",
                inv.len()
            ),
        );
        return None;
    }
    if rep.positions.contains("spec.provider.static.groups")
        && !inv.is_empty()
        && inv.iter().all(InventoryHost::roles_written)
    {
        rep.error(
            "spec.provider.static.groups",
            "groups map Ansible inventory groups to roles, but this inventory is kubeforge's own, where each host lists its roles",
        );
    }
    let mut hosts = Vec::new();
    let mut names: BTreeMap<String, &InventoryHost> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, &InventoryHost> = BTreeMap::new();
    for h in &inv {
        if let Some(prev) = names.get(&h.name) {
            inv_errors.push(h.origin.error(
                "",
                format!(
                    "duplicate host name `{}` (first defined at {})",
                    h.name,
                    where_(prev)
                ),
            ));
        } else {
            names.insert(h.name.clone(), h);
        }
        if !is_dns_label(&h.name, 63) && !h.name.split('.').all(|l| is_dns_label(l, 63)) {
            inv_errors.push(h.origin.error(
                "",
                format!(
                    "`{}` is not a valid host name (lower-case letters, digits, `-` and `.`)",
                    h.name
                ),
            ));
        }
        let address = match parse_ip(&h.address) {
            Ok(a) => a,
            Err(e) => {
                inv_errors.push(h.origin.error("", format!("host `{}`: {e}", h.name)));
                continue;
            }
        };
        let internal = match h.internal_address.as_deref().map(parse_ip) {
            None => address,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                inv_errors.push(
                    h.origin
                        .error("", format!("host `{}` internal address: {e}", h.name)),
                );
                continue;
            }
        };
        for a in BTreeSet::from([address, internal]) {
            if let Some(prev) = addrs.get(&a) {
                inv_errors.push(h.origin.error(
                    "",
                    format!(
                        "duplicate address {a}: host `{}` also uses it (at {})",
                        prev.name,
                        where_(prev)
                    ),
                ));
            } else {
                addrs.insert(a, h);
            }
        }
        if let Some(sub) = node_subnet {
            if !sub.contains(&internal) {
                inv_errors.push(h.origin.error(
                    "",
                    format!("address {internal} of host `{}` is outside spec.networking.nodeSubnet {sub}", h.name),
                ));
            }
        }
        if let Some(u) = &h.ssh_user {
            if let Err(e) = syntax::unix_user(u) {
                inv_errors.push(h.origin.error("sshUser", e));
            }
        }
        if h.ssh_port == Some(0) {
            inv_errors.push(h.origin.error("sshPort", "port 0 is not a valid port"));
        }
        if h.labels.len() > MAX_LABELS {
            inv_errors.push(h.origin.error(
                "labels",
                format!(
                    "{} labels are more than the {MAX_LABELS} kubeforge allows",
                    h.labels.len()
                ),
            ));
        }
        check_labels(&h.labels, "labels", |field, msg| {
            inv_errors.push(h.origin.error(field, msg))
        });
        if h.roles.contains(&Role::ControlPlane) && h.roles.contains(&Role::LoadBalancer) {
            inv_errors.push(h.origin.error(
                "",
                format!("host `{}` is both a control-plane and a load-balancer node: use loadBalancer.placement: control-plane instead", h.name),
            ));
        }
        if let Some(k) = &h.ssh_key_file {
            if k.trim().is_empty() || k.contains('\n') || k.contains('\0') {
                inv_errors.push(h.origin.error("sshKeyFile", "not a file path"));
            }
        }
        let runs_kubelet = h.roles.contains(&Role::ControlPlane) || h.roles.contains(&Role::Worker);
        if !runs_kubelet && !h.labels.is_empty() {
            inv_errors.push(h.origin.error(
                "labels",
                format!(
                    "host `{}` is a load-balancer node and runs no kubelet: its labels would never be applied",
                    h.name
                ),
            ));
        }
        // The pools' labels of the host's roles, then the host's own.
        let pools = &c.spec.node_pools;
        let mut labels = BTreeMap::new();
        for (role, pool) in [
            (Role::ControlPlane, &pools.control_plane),
            (Role::Worker, &pools.workers),
        ] {
            if h.roles.contains(&role) {
                labels.extend(pool.labels.clone());
            }
        }
        labels.extend(h.labels.clone());
        hosts.push(Host {
            name: h.name.clone(),
            address,
            internal_address: internal,
            roles: h.roles.clone(),
            ssh_user: h
                .ssh_user
                .clone()
                .unwrap_or_else(|| c.spec.ssh.user.clone()),
            ssh_port: h.ssh_port.filter(|p| *p != 0).unwrap_or(c.spec.ssh.port),
            ssh_key_file: h.ssh_key_file.as_ref().map(std::path::PathBuf::from),
            labels,
            origin: h.resource.clone(),
        });
    }
    // Pool counts, when given, must match what the inventory holds.
    let pools = &c.spec.node_pools;
    let count = |role: Role| {
        inv.iter()
            .filter(|h| {
                h.roles.contains(&role)
                    && !(role == Role::Worker && h.roles.contains(&Role::ControlPlane))
            })
            .count() as u32
    };
    for (field, pool, role, what) in [
        (
            "spec.nodePools.controlPlane.count",
            &pools.control_plane,
            Role::ControlPlane,
            "control-plane",
        ),
        (
            "spec.nodePools.workers.count",
            &pools.workers,
            Role::Worker,
            "worker",
        ),
        (
            "spec.nodePools.loadBalancers.count",
            &pools.load_balancers,
            Role::LoadBalancer,
            "load-balancer",
        ),
    ] {
        let have = count(role);
        // Counts the user did not write (the control-plane default of 3) do not apply:
        // the inventory decides.
        if let Some(want) = pool.count.filter(|_| rep.positions.contains(field)) {
            if want != have {
                rep.error(
                    field,
                    format!("{want} {what} nodes requested, but the inventory lists {have}"),
                );
            }
        }
    }
    let cp = count(Role::ControlPlane);
    // An explicit count was checked (odd, matching) already.
    let written_cp = rep.positions.contains("spec.nodePools.controlPlane.count");
    if cp == 0 {
        rep.error(
            "spec.provider.static.inventory",
            "the inventory lists no control-plane host (groups or roles: controlPlane / kube_control_plane)",
        );
    } else if cp % 2 == 0 && !written_cp {
        rep.error(
            "spec.provider.static.inventory",
            format!("the inventory lists an even number of control-plane hosts ({cp}): use an odd number (3 or 5)"),
        );
    } else if cp == 1 && !written_cp {
        rep.warn(
            "spec.provider.static.inventory",
            "a single control-plane node is not highly available: use 3 for production",
        );
    }
    Some(hosts)
}

fn where_(h: &InventoryHost) -> String {
    match h.origin.pos {
        Some(p) => format!("{}:{}", h.origin.file.display(), p.line),
        None => h.origin.file.display().to_string(),
    }
}

fn check_load_balancer(
    s: &ClusterSpec,
    hosts: &[Host],
    node_subnet: Option<&IpNet>,
    rep: &mut Reporter<'_>,
) -> Option<Endpoint> {
    let lb = &s.load_balancer;
    let api_port = s.networking.api_server_port;
    match lb.kind {
        LoadBalancerType::External => {
            if lb.vip.is_some() {
                rep.error(
                    "spec.loadBalancer.vip",
                    "a VIP is only used with type haproxy-keepalived",
                );
            }
            let Some(ep) = &lb.endpoint else {
                rep.error(
                    "spec.loadBalancer.endpoint",
                    "type external needs `endpoint: HOST:PORT` naming the load balancer",
                );
                return None;
            };
            let field = "spec.loadBalancer.endpoint";
            let parsed = ep
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .filter(|(h, p)| !h.is_empty() && *p != 0);
            let Some((h, p)) = parsed else {
                rep.error(
                    field,
                    format!(
                        "`{}` is not HOST:PORT like api.example.com:6443",
                        syntax::shown(ep)
                    ),
                );
                return None;
            };
            let bare = h.trim_start_matches('[').trim_end_matches(']');
            if bare.parse::<std::net::Ipv6Addr>().is_ok() {
                rep.error(field, syntax::ipv6_unsupported(bare));
                return None;
            }
            if h.parse::<std::net::Ipv4Addr>().is_err() && !syntax::is_dns1123_subdomain(h) {
                rep.error(
                    field,
                    format!(
                        "`{}` is not a lower-case DNS name or IPv4 address before the port",
                        syntax::shown(h)
                    ),
                );
                return None;
            }
            Some(Endpoint::External {
                host: h.to_string(),
                port: p,
            })
        }
        LoadBalancerType::Cloud => {
            if !matches!(s.provider, Provider::Aws(_) | Provider::Hetzner(_)) {
                rep.error(
                    "spec.loadBalancer.type",
                    format!(
                        "type cloud is the load balancer of the aws and hetzner providers, not of {} (use haproxy-keepalived{})",
                        s.provider.name(),
                        if matches!(s.provider, Provider::Sakura(_)) {
                            ": Sakura's switch carries keepalived's VIP as it is"
                        } else {
                            " or external"
                        }
                    ),
                );
                return None;
            }
            if lb.endpoint.is_some() {
                rep.error(
                    "spec.loadBalancer.endpoint",
                    "endpoint is only used with type external (the cloud load balancer's address is `vip`)",
                );
            }
            if let Some(h) = hosts.iter().find(|h| h.has(Role::LoadBalancer)) {
                rep.error(
                    "spec.nodePools.loadBalancers.count",
                    format!("the cloud load balancer replaces the load-balancer nodes (`{}` would be unused): set the count to 0", h.name),
                );
            }
            let port = lb.port.unwrap_or(6443);
            if port == 0 {
                rep.error("spec.loadBalancer.port", "port 0 is not a valid port");
            }
            let (address, _) = check_vip(
                s,
                hosts,
                node_subnet,
                "type cloud needs a fixed address for the load balancer",
                rep,
            )?;
            Some(Endpoint::Cloud { address, port })
        }
        LoadBalancerType::HaproxyKeepalived => {
            if lb.endpoint.is_some() {
                rep.error(
                    "spec.loadBalancer.endpoint",
                    "endpoint is only used with type external",
                );
            }
            let lb_nodes: Vec<String> = hosts
                .iter()
                .filter(|h| h.has(Role::LoadBalancer))
                .map(|h| h.name.clone())
                .collect();
            let placement = lb.placement.unwrap_or(if lb_nodes.is_empty() {
                Placement::ControlPlane
            } else {
                Placement::Dedicated
            });
            let lb_hosts: Vec<String> = match placement {
                Placement::Dedicated => {
                    if lb_nodes.is_empty() {
                        rep.error(
                            "spec.loadBalancer.placement",
                            "placement dedicated needs load-balancer nodes: set spec.nodePools.loadBalancers.count or put hosts in the inventory's load-balancer group",
                        );
                        return None;
                    }
                    lb_nodes
                }
                Placement::ControlPlane => {
                    if !lb_nodes.is_empty() {
                        rep.error(
                            "spec.loadBalancer.placement",
                            "placement control-plane leaves the load-balancer nodes unused: remove them or use placement dedicated",
                        );
                    }
                    hosts
                        .iter()
                        .filter(|h| h.has(Role::ControlPlane))
                        .map(|h| h.name.clone())
                        .collect()
                }
            };
            let port = lb.port.unwrap_or(match placement {
                Placement::Dedicated => 6443,
                Placement::ControlPlane => 8443,
            });
            if port == 0 {
                rep.error("spec.loadBalancer.port", "port 0 is not a valid port");
            }
            if placement == Placement::ControlPlane && port == api_port {
                rep.error(
                    "spec.loadBalancer.port",
                    format!("port {port} is taken by the kube-apiserver on the control-plane nodes where HAProxy runs: choose another (default 8443)"),
                );
            }
            if lb.virtual_router_id == 0 {
                rep.error(
                    "spec.loadBalancer.virtualRouterId",
                    "VRRP router ids run from 1 to 255",
                );
            }
            if let Err(e) = syntax::interface_name(&lb.interface) {
                rep.error("spec.loadBalancer.interface", e);
            }
            let (vip, sub) = check_vip(
                s,
                hosts,
                node_subnet,
                "type haproxy-keepalived needs a VIP",
                rep,
            )?;
            Some(Endpoint::Vip {
                vip,
                port,
                prefix_len: sub.prefix_len(),
                lb_hosts,
            })
        }
    }
}

/// The VIP (keepalived's, or the cloud load balancer's fixed address): written, or the
/// subnet's last usable address on providers that make machines; inside the nodes'
/// subnet and no host's address.
fn check_vip(
    s: &ClusterSpec,
    hosts: &[Host],
    node_subnet: Option<&IpNet>,
    needs: &str,
    rep: &mut Reporter<'_>,
) -> Option<(IpAddr, IpNet)> {
    let lb = &s.load_balancer;
    let vip = match (&lb.vip, node_subnet, &s.provider) {
        (Some(v), _, _) => match parse_ip(v) {
            Ok(ip) => ip,
            Err(e) => {
                rep.error("spec.loadBalancer.vip", e);
                return None;
            }
        },
        (None, Some(sub), p) if p.makes_machines() => match sub {
            IpNet::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4.broadcast()) - 1)),
            IpNet::V6(_) => {
                rep.error(
                    "spec.loadBalancer.vip",
                    "set the VIP explicitly on IPv6 networks",
                );
                return None;
            }
        },
        _ => {
            rep.error(
                "spec.loadBalancer.vip",
                format!("{needs}: a free address in the nodes' subnet"),
            );
            return None;
        }
    };
    let Some(sub) = node_subnet else {
        rep.error(
            "spec.networking.nodeSubnet",
            format!("required with a keepalived VIP on the static provider, to check that the VIP {vip} is in the nodes' subnet"),
        );
        return None;
    };
    if !sub.contains(&vip) {
        rep.error(
            "spec.loadBalancer.vip",
            format!("VIP {vip} is outside the node subnet {sub}"),
        );
    } else if vip == sub.network() || (matches!(sub, IpNet::V4(_)) && vip == sub.broadcast()) {
        rep.error(
            "spec.loadBalancer.vip",
            format!("VIP {vip} is the network or broadcast address of {sub}"),
        );
    }
    if let Some(h) = hosts
        .iter()
        .find(|h| h.address == vip || h.internal_address == vip)
    {
        rep.error(
            "spec.loadBalancer.vip",
            format!("VIP {vip} is already the address of host `{}`", h.name),
        );
    }
    Some((vip, *sub))
}

/// `loadBalancer.failover`: keepalived's VIP moved through the cloud's API (AWS, Hetzner).
fn check_failover(s: &ClusterSpec, f: &Failover, rep: &mut Reporter<'_>) {
    let field = "spec.loadBalancer.failover";
    if s.load_balancer.kind != LoadBalancerType::HaproxyKeepalived {
        rep.error(
            field,
            "failover moves keepalived's VIP: it is only used with type haproxy-keepalived",
        );
        return;
    }
    let aws = matches!(s.provider, Provider::Aws(_));
    let hetzner = matches!(s.provider, Provider::Hetzner(_));
    if !aws && !hetzner {
        rep.error(
            field,
            format!(
                "failover through a cloud API is for the aws and hetzner providers; on {} keepalived moves the VIP itself",
                s.provider.name()
            ),
        );
        return;
    }
    for (key, v, ok) in [
        ("accessKeyIdEnv", &f.access_key_id_env, aws),
        ("secretAccessKeyEnv", &f.secret_access_key_env, aws),
        ("tokenEnv", &f.token_env, hetzner),
    ] {
        let Some(v) = v else { continue };
        let fk = format!("{field}.{key}");
        if !ok {
            rep.error(
                &fk,
                format!("{key} is not used with the {} provider", s.provider.name()),
            );
        } else if !syntax::is_env_name(v) {
            rep.error(
                &fk,
                format!("`{}` is not an environment variable name", syntax::shown(v)),
            );
        }
    }
    if aws && f.access_key_id_env.is_some() != f.secret_access_key_env.is_some() {
        rep.error(
            field,
            "set both accessKeyIdEnv and secretAccessKeyEnv, or neither (the load balancers' instance role)",
        );
    }
}

fn check_addons(
    s: &ClusterSpec,
    hosts: &[Host],
    endpoint: &Endpoint,
    nets: &Nets,
    rep: &mut Reporter<'_>,
) {
    let mut pool_ranges: Vec<(String, String, AddrRange)> = Vec::new();
    let host_names: BTreeSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    // A CNI from an upstream manifest follows the same compatibility matrix.
    match s.networking.cni {
        Cni::Flannel => check_addon_version(s, AddonId::Flannel, "spec.networking.cni", None, rep),
        Cni::Calico => check_addon_version(s, AddonId::Calico, "spec.networking.cni", None, rep),
        Cni::Bridge | Cni::None => {}
    }
    if let Some(m) = &s.addons.metallb {
        check_addon_version(
            s,
            AddonId::Metallb,
            "spec.addons.metallb",
            m.version.as_deref(),
            rep,
        );
        if m.pools.is_empty() {
            rep.error(
                "spec.addons.metallb.pools",
                "MetalLB needs at least one address pool",
            );
        }
        let mut names = BTreeSet::new();
        for (i, p) in m.pools.iter().enumerate() {
            let field = format!("spec.addons.metallb.pools[{i}]");
            if !is_dns_label(&p.name, 63) {
                rep.error(
                    &format!("{field}.name"),
                    format!(
                        "`{}` is not a valid pool name (lower-case letters, digits and `-`)",
                        p.name
                    ),
                );
            }
            if !names.insert(p.name.clone()) {
                rep.error(
                    &format!("{field}.name"),
                    format!("duplicate pool name `{}`", p.name),
                );
            }
            if p.addresses.is_empty() {
                rep.error(
                    &format!("{field}.addresses"),
                    "a pool needs at least one CIDR or range",
                );
            }
            for (j, a) in p.addresses.iter().enumerate() {
                let afield = format!("{field}.addresses[{j}]");
                let r = match AddrRange::parse(a) {
                    Ok(r) => r,
                    Err(e) => {
                        rep.error(&afield, e);
                        continue;
                    }
                };
                for (other_pool, other_a, other) in &pool_ranges {
                    if r.overlaps(other) {
                        rep.error(
                            &afield,
                            format!("{a} overlaps {other_a} of pool `{other_pool}`"),
                        );
                    }
                }
                for (what, net) in [("podSubnet", &nets.pod), ("serviceSubnet", &nets.service)] {
                    if let Some(net) = net {
                        if r.overlaps_net(net) {
                            rep.error(
                                &afield,
                                format!("{a} overlaps spec.networking.{what} {net}"),
                            );
                        }
                    }
                }
                if let Some(h) = hosts
                    .iter()
                    .find(|h| r.contains(&h.address) || r.contains(&h.internal_address))
                {
                    rep.error(
                        &afield,
                        format!("{a} contains the address of host `{}`", h.name),
                    );
                }
                if let Endpoint::Vip { vip, .. } = endpoint {
                    if r.contains(vip) {
                        rep.error(&afield, format!("{a} contains the control-plane VIP {vip}"));
                    }
                }
                pool_ranges.push((p.name.clone(), a.clone(), r));
            }
        }
        match (m.mode, &m.bgp) {
            (MetalLbMode::Bgp, None) => rep.error(
                "spec.addons.metallb.mode",
                "BGP mode needs spec.addons.metallb.bgp with myASN and at least one peer",
            ),
            (MetalLbMode::Bgp, Some(b)) => {
                if b.peers.is_empty() {
                    rep.error(
                        "spec.addons.metallb.bgp.peers",
                        "BGP mode needs at least one peer",
                    );
                }
                if b.my_asn == 0 {
                    rep.error("spec.addons.metallb.bgp.myASN", "ASN 0 is reserved");
                }
                for (i, p) in b.peers.iter().enumerate() {
                    let field = format!("spec.addons.metallb.bgp.peers[{i}]");
                    if let Err(e) = parse_ip(&p.address) {
                        rep.error(&format!("{field}.address"), e);
                    }
                    if p.asn == 0 {
                        rep.error(&format!("{field}.asn"), "ASN 0 is reserved");
                    }
                    for (j, n) in p.nodes.iter().enumerate() {
                        if !host_names.contains(n.as_str()) {
                            rep.error(
                                &format!("{field}.nodes[{j}]"),
                                format!("no host named `{n}`"),
                            );
                        }
                    }
                }
                for (i, c) in b.communities.iter().enumerate() {
                    let ok = c
                        .split_once(':')
                        .is_some_and(|(a, b)| a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok());
                    if !ok {
                        rep.error(
                            &format!("spec.addons.metallb.bgp.communities[{i}]"),
                            format!("`{c}` is not a BGP community like 64512:100"),
                        );
                    }
                }
            }
            (MetalLbMode::L2, Some(_)) => rep.error(
                "spec.addons.metallb.bgp",
                "BGP settings are only used with mode: bgp",
            ),
            (MetalLbMode::L2, None) => {}
        }
    }
    if let Some(ing) = &s.addons.ingress {
        let id = match ing.controller {
            IngressController::Contour => AddonId::Contour,
            IngressController::IngressNginx => AddonId::IngressNginx,
        };
        check_addon_version(s, id, "spec.addons.ingress", ing.version.as_deref(), rep);
        if ing.controller == IngressController::IngressNginx {
            rep.warn(
                "spec.addons.ingress.controller",
                "ingress-nginx was retired upstream in March 2026 and gets no more fixes; contour is the maintained default",
            );
        }
        match &s.addons.metallb {
            // Another LoadBalancer implementation (a cloud's) may serve the Service.
            None if ing.pool.is_none() && ing.load_balancer_ip.is_none() => rep.warn(
                "spec.addons.ingress",
                "the ingress controller is exposed through a LoadBalancer Service and spec.addons.metallb is not configured: its address stays pending unless the cluster has another load-balancer implementation",
            ),
            None => rep.error(
                if ing.pool.is_some() {
                    "spec.addons.ingress.pool"
                } else {
                    "spec.addons.ingress.loadBalancerIp"
                },
                "refers to MetalLB, but spec.addons.metallb is not configured",
            ),
            Some(m) => {
                if let Some(pool) = &ing.pool {
                    if !m.pools.iter().any(|p| &p.name == pool) {
                        rep.error(
                            "spec.addons.ingress.pool",
                            format!("no MetalLB pool named `{pool}`"),
                        );
                    }
                }
                if let Some(ip) = &ing.load_balancer_ip {
                    match parse_ip(ip) {
                        Err(e) => rep.error("spec.addons.ingress.loadBalancerIp", e),
                        Ok(addr) => {
                            let in_pool = pool_ranges.iter().any(|(name, _, r)| {
                                r.contains(&addr) && ing.pool.as_ref().is_none_or(|p| p == name)
                            });
                            if !in_pool {
                                rep.error(
                                    "spec.addons.ingress.loadBalancerIp",
                                    format!("{addr} is not inside {}", match &ing.pool {
                                        Some(p) => format!("MetalLB pool `{p}`"),
                                        None => "any MetalLB pool".into(),
                                    }),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(r) = &s.addons.rook_ceph {
        check_addon_version(
            s,
            AddonId::RookCeph,
            "spec.addons.rookCeph",
            r.version.as_deref(),
            rep,
        );
        if r.mon_count == 0 || r.mon_count % 2 == 0 || r.mon_count > 9 {
            rep.error(
                "spec.addons.rookCeph.monCount",
                format!(
                    "{} monitors cannot keep a quorum well: use an odd number (1, 3 or 5)",
                    r.mon_count
                ),
            );
        }
        let k8s_nodes = hosts.iter().filter(|h| h.is_kubernetes_node()).count() as u32;
        if r.mon_count > k8s_nodes {
            rep.error(
                "spec.addons.rookCeph.monCount",
                format!(
                    "{} monitors need as many nodes, the cluster has {k8s_nodes}",
                    r.mon_count
                ),
            );
        }
        if r.nodes.is_empty() && r.device_filter.is_none() {
            rep.error(
                "spec.addons.rookCeph",
                "say which disks Ceph may use: list nodes with devices, or set deviceFilter",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, n) in r.nodes.iter().enumerate() {
            let field = format!("spec.addons.rookCeph.nodes[{i}]");
            match host_names
                .contains(n.name.as_str())
                .then(|| hosts.iter().find(|h| h.name == n.name))
                .flatten()
            {
                None => rep.error(
                    &format!("{field}.name"),
                    format!("no host named `{}`", n.name),
                ),
                Some(h) if !h.is_kubernetes_node() => rep.error(
                    &format!("{field}.name"),
                    format!("`{}` is a load-balancer node and runs no kubelet", n.name),
                ),
                Some(_) => {}
            }
            if !seen.insert(&n.name) {
                rep.error(
                    &format!("{field}.name"),
                    format!("`{}` is listed twice", n.name),
                );
            }
            if n.devices.is_empty() && n.device_filter.is_none() && r.device_filter.is_none() {
                rep.error(
                    &field,
                    format!("node `{}` has no devices and no deviceFilter", n.name),
                );
            }
        }
    }
}

/// The addon compatibility matrix: a pinned release must be known and support the
/// cluster's Kubernetes (error on `<addon>.version`); without a pin some known release
/// must (error on the addon).
fn check_addon_version(
    s: &ClusterSpec,
    addon: AddonId,
    field: &str,
    pinned: Option<&str>,
    rep: &mut Reporter<'_>,
) {
    let Some(k8s) = parse_kubernetes_version(&s.kubernetes_version) else {
        return; // reported on kubernetesVersion
    };
    if let Err(why) = crate::addons::catalogue::select(addon, pinned, &k8s) {
        match pinned {
            Some(_) => rep.error(&format!("{field}.version"), why),
            None => rep.error(field, why),
        }
    }
}

/// Every value that ends up in a remote command or a rendered config file, checked
/// against what it may be (see `syntax`): a value that passes is inert in a shell word
/// and in a config line.
fn check_values(c: &Cluster, rep: &mut Reporter<'_>) {
    let s = &c.spec;
    let minor = parse_kubernetes_version(&s.kubernetes_version)
        .map(|v| v.minor)
        .filter(|m| *m >= OLDEST_SUPPORTED_MINOR);
    // kubeadm --skip-phases: phases of `kubeadm init` or `kubeadm join` of this release.
    if let Some(minor) = minor {
        let init = syntax::kubeadm_init_phases(minor);
        let join = syntax::kubeadm_join_phases(minor);
        for (i, p) in s.kubeadm.skip_phases.iter().enumerate() {
            if !init.contains(&p.as_str()) && !join.contains(&p.as_str()) {
                rep.error(
                    &format!("spec.kubeadm.skipPhases[{i}]"),
                    format!(
                        "`{}` is not a phase of kubeadm init or join 1.{minor} (e.g. preflight, addon/coredns; `kubeadm init --help` lists them)",
                        syntax::shown(p)
                    ),
                );
            }
        }
    }
    for (i, p) in s.kubeadm.ignore_preflight_errors.iter().enumerate() {
        if let Err(e) = syntax::preflight_check(p) {
            rep.error(&format!("spec.kubeadm.ignorePreflightErrors[{i}]"), e);
        }
    }
    if let Some(m) = &s.artifacts.mirror {
        if m.is_empty() || m.chars().any(char::is_control) {
            rep.error(
                "spec.artifacts.mirror",
                format!(
                    "`{}` is not a mirror: an http(s) URL or a directory, without control characters",
                    syntax::shown(m)
                ),
            );
        }
    }
    if let Some(repo) = &s.artifacts.image_repository {
        if let Err(e) = syntax::image_repository(repo) {
            rep.error("spec.artifacts.imageRepository", e);
        }
    }
    if let Provider::Docker(d) = &s.provider {
        if let Some(image) = &d.image {
            if let Err(e) = syntax::image_reference(image) {
                rep.error("spec.provider.docker.image", e);
            }
        }
        if let Some(net) = &d.network {
            if let Err(e) = syntax::docker_network(net) {
                rep.error("spec.provider.docker.network", e);
            }
        }
    }
    for (i, san) in s.load_balancer.cert_sans.iter().enumerate() {
        if let Err(e) = syntax::cert_san(san) {
            rep.error(&format!("spec.loadBalancer.certSans[{i}]"), e);
        }
    }
    if let Err(e) = syntax::unix_user(&s.ssh.user) {
        rep.error("spec.ssh.user", e);
    }
    if let Some(b) = &s.ssh.bastion {
        let hops = b
            .via
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("spec.ssh.bastion.via[{i}]"), h))
            .chain(std::iter::once(("spec.ssh.bastion".to_string(), b)));
        for (field, h) in hops {
            if let Err(e) = syntax::host(&h.host) {
                rep.error(&format!("{field}.host"), e);
            }
            if let Some(u) = &h.user {
                if let Err(e) = syntax::unix_user(u) {
                    rep.error(&format!("{field}.user"), e);
                }
            }
            if h.port == 0 {
                rep.error(&format!("{field}.port"), "port 0 is not a valid port");
            }
            if !std::ptr::eq(h, b) && !h.via.is_empty() {
                rep.error(
                    &format!("{field}.via"),
                    "list every jump host in spec.ssh.bastion.via, in order (a hop has no via of its own)",
                );
            }
        }
    }
    for (pool_field, pool) in [
        ("controlPlane", &s.node_pools.control_plane),
        ("workers", &s.node_pools.workers),
        ("loadBalancers", &s.node_pools.load_balancers),
    ] {
        check_labels(
            &pool.labels,
            &format!("spec.nodePools.{pool_field}.labels"),
            |field, msg| rep.error(field, msg),
        );
    }
    if let Some(m) = &s.addons.metallb {
        for (i, name) in m.interfaces.iter().enumerate() {
            if let Err(e) = syntax::interface_name(name) {
                rep.error(&format!("spec.addons.metallb.interfaces[{i}]"), e);
            }
        }
        if let Some(b) = &m.bgp {
            for (i, p) in b.peers.iter().enumerate() {
                let field = format!("spec.addons.metallb.bgp.peers[{i}]");
                if let Some(secret) = &p.password_secret {
                    if !syntax::is_dns1123_subdomain(secret) {
                        rep.error(
                            &format!("{field}.passwordSecret"),
                            format!(
                                "`{}` is not a Secret name (lower-case DNS name like bgp-password)",
                                syntax::shown(secret)
                            ),
                        );
                    }
                }
                if let Some(h) = &p.hold_time {
                    if let Err(e) = syntax::go_duration(h) {
                        rep.error(&format!("{field}.holdTime"), e);
                    }
                }
            }
        }
    }
    if let Some(r) = &s.addons.rook_ceph {
        if let Some(f) = &r.device_filter {
            if let Err(e) = syntax::device_filter(f) {
                rep.error("spec.addons.rookCeph.deviceFilter", e);
            }
        }
        for (i, n) in r.nodes.iter().enumerate() {
            let field = format!("spec.addons.rookCeph.nodes[{i}]");
            for (j, d) in n.devices.iter().enumerate() {
                if let Err(e) = syntax::device(d) {
                    rep.error(&format!("{field}.devices[{j}]"), e);
                }
            }
            if let Some(f) = &n.device_filter {
                if let Err(e) = syntax::device_filter(f) {
                    rep.error(&format!("{field}.deviceFilter"), e);
                }
            }
        }
        if let Err(e) = syntax::absolute_path(&r.data_dir_host_path) {
            rep.error("spec.addons.rookCeph.dataDirHostPath", e);
        }
    }
}

/// Node labels: valid keys and values, and keys kubelet may set on its own node.
fn check_labels(
    labels: &BTreeMap<String, String>,
    field: &str,
    mut error: impl FnMut(&str, String),
) {
    for (k, v) in labels {
        let f = format!("{field}.{k}");
        if let Err(e) = syntax::node_label_key(k) {
            error(&f, e);
        } else if let Err(e) = syntax::label_value(v) {
            error(&f, e);
        }
    }
}

/// kubeforge's bridge CNI gives every Kubernetes node a /24 of the pod subnet and a
/// route to every other node's: the pod subnet must hold one /24 per node, and the
/// cluster must stay small.
fn check_bridge_cni(s: &ClusterSpec, hosts: &[Host], nets: &Nets, rep: &mut Reporter<'_>) {
    if s.networking.cni != Cni::Bridge {
        return;
    }
    let nodes = hosts.iter().filter(|h| h.is_kubernetes_node()).count();
    if nodes > MAX_BRIDGE_NODES {
        rep.error(
            "spec.networking.cni",
            format!("the bridge CNI routes every node to every other node and serves at most {MAX_BRIDGE_NODES} Kubernetes nodes; this cluster has {nodes}: use cni: none and install a CNI for larger clusters"),
        );
        return;
    }
    if let Some(IpNet::V4(p)) = &nets.pod {
        let slots = 1usize << (24 - p.prefix_len().min(24));
        if nodes > slots {
            rep.error(
                "spec.networking.podSubnet",
                format!("{p} holds {slots} node /24s, but the cluster has {nodes} Kubernetes nodes: use a larger pod subnet"),
            );
        }
    }
}

/// Fields that would do nothing in this combination are refused rather than ignored.
fn check_effective(c: &Cluster, rep: &mut Reporter<'_>) {
    let s = &c.spec;
    let written = |rep: &Reporter<'_>, f: &str| rep.positions.contains(f);
    if !s.node_pools.load_balancers.labels.is_empty() {
        rep.error(
            "spec.nodePools.loadBalancers.labels",
            "load-balancer nodes run no kubelet: their labels would never be applied",
        );
    }
    if s.provider.makes_machines() && s.networking.node_subnet.is_some() {
        let (_, field) = s
            .provider
            .machine_subnet()
            .unwrap_or(("", "the provider's subnet"));
        rep.error(
            "spec.networking.nodeSubnet",
            format!(
                "the {} provider places its machines in {field}: set the subnet there",
                s.provider.name()
            ),
        );
    }
    if !s.provider.makes_machines() {
        for pool in ["controlPlane", "workers", "loadBalancers"] {
            let f = format!("spec.nodePools.{pool}.extraDisks");
            if written(rep, &f) {
                rep.error(
                    &f,
                    "the static provider attaches no disks to existing hosts: list the hosts' disks in spec.addons.rookCeph.nodes",
                );
            }
        }
    }
    if s.ssh.agent_key.is_some() && !s.ssh.agent {
        rep.error(
            "spec.ssh.agentKey",
            "chooses one of the ssh-agent's keys: set agent: true too",
        );
    }
    if s.ssh.key_file.is_some() && s.ssh.agent {
        rep.error(
            "spec.ssh.agent",
            "set keyFile or agent: true, not both (the key file would be used and the agent never)",
        );
    }
    if s.load_balancer.kind == LoadBalancerType::External {
        for key in [
            "placement",
            "port",
            "interface",
            "virtualRouterId",
            "healthCheck",
        ] {
            let f = format!("spec.loadBalancer.{key}");
            if written(rep, &f) {
                rep.error(
                    &f,
                    format!("{key} is only used with type haproxy-keepalived (the external load balancer is configured outside kubeforge)"),
                );
            }
        }
    }
    if s.load_balancer.kind == LoadBalancerType::Cloud {
        for key in ["placement", "interface", "virtualRouterId"] {
            let f = format!("spec.loadBalancer.{key}");
            if written(rep, &f) {
                rep.error(
                    &f,
                    format!("{key} is only used with type haproxy-keepalived (the cloud load balancer needs no nodes of its own)"),
                );
            }
        }
    }
    if let Some(f) = &s.load_balancer.failover {
        check_failover(s, f, rep);
    }
    if let Some(m) = &s.addons.metallb {
        if m.mode == MetalLbMode::Bgp && !m.interfaces.is_empty() {
            rep.error(
                "spec.addons.metallb.interfaces",
                "interfaces limit L2 announcements and are not used with mode: bgp",
            );
        }
    }
    if let Some(url) = &s.state.url {
        if !url.starts_with("s3://") && s.state.region.is_some() {
            rep.error(
                "spec.state.region",
                "region applies to s3:// state URLs only",
            );
        }
    }
}
