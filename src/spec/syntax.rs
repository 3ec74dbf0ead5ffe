//! What a value of the cluster file may look like, by what it becomes on a host: an
//! interface name, a kubeadm phase or preflight check, an image reference, a host name,
//! a Kubernetes label, a certificate SAN, a unix user, an absolute path. Each check
//! returns `Err(message)` saying what was expected; `validate` puts the message at the
//! field's position.
//!
//! Every value accepted here is made of characters that are inert in a POSIX shell word,
//! a YAML/TOML/JSON scalar and a keepalived or HAProxy config token (no white space, no
//! quotes, no `;`, `$`, `` ` ``, `\`, `#`, `{`, `}`), so that even a value that slipped
//! past the quoting of one command could not end a line or a word.

use std::net::IpAddr;

/// A DNS-1123 label: lower-case letters, digits and `-`, starting and ending with a
/// letter or digit, at most 63 characters.
/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A host name as written for a bastion (letters of either case).
fn is_hostname_any_case(s: &str) -> bool {
    is_dns1123_subdomain(&s.to_ascii_lowercase())
}

/// An IPv4 address (IPv6 is not supported yet, see `not_ipv6`).
pub fn ipv4(s: &str) -> Result<std::net::Ipv4Addr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(ipv6_unsupported(s)),
        Err(_) => Err(format!("`{}` is not an IP address", shown(s))),
    }
}

/// The message for an IPv6 value anywhere in the cluster file.
pub fn ipv6_unsupported(s: &str) -> String {
    format!("`{s}` is IPv6: IPv6 is not supported yet, use IPv4")
}

/// A network interface name as Linux allows it (at most 15 bytes) in the characters
/// keepalived and MetalLB can take as one token: letters, digits, `.`, `_` and `-`.
pub fn interface_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or_else(|| {
        format!("`{}` is not a network interface name like eth0 or bond0.100 (letters, digits, `.`, `_`, `-`, at most 15 characters)", shown(s))
    })
}

/// A unix user name as POSIX portable names and useradd allow: letters, digits, `.`,
/// `_`, `-`, not starting with `-`, at most 32 characters.
pub fn unix_user(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a user name like root or debian (letters, digits, `.`, `_`, `-`, at most 32 characters)",
            shown(s)
        )
    })
}

/// A host to connect to: a host name or an IPv4 address.
pub fn host(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return ipv4(s).map(|_| ());
    }
    if is_hostname_any_case(s) {
        return Ok(());
    }
    Err(format!(
        "`{}` is not a host name or IPv4 address like bastion.example.com or 192.0.2.1",
        shown(s)
    ))
}

/// A DNS name or IP address for the apiserver certificate: a DNS-1123 subdomain, a
/// wildcard (`*.` then a subdomain), or an IP address (as kubeadm's certSANs allow).
pub fn cert_san(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || is_dns1123_subdomain(s) {
        return Ok(());
    }
    if let Some(rest) = s.strip_prefix("*.") {
        if is_dns1123_subdomain(rest) {
            return Ok(());
        }
    }
    Err(format!(
        "`{}` is not a certificate SAN: use a lower-case DNS name (api.example.com), a wildcard (*.example.com) or an IP address",
        shown(s)
    ))
}

/// A registry host with an optional port: `registry.k8s.io`, `localhost:5000`,
/// `10.0.0.5:5000`.
fn registry_host(s: &str) -> bool {
    let (h, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    port_ok && (is_dns1123_subdomain(h) || h.parse::<std::net::Ipv4Addr>().is_ok())
}

/// One path component of an image name (distribution's reference grammar):
/// lower-case alphanumerics separated by `.`, `_`, `__` or one or more `-`.
fn path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).is_some_and(|c| is_alnum_lower(*c)) {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// An image repository kubeadm prefixes its image names with: `host[:port]` then
/// optional `/path` components, all lower-case (`registry.k8s.io`,
/// `registry.example.com:5000/k8s`).
pub fn image_repository(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{}` is not an image repository like registry.k8s.io or registry.example.com:5000/k8s (lower-case registry host[:port], then /path)",
            shown(s)
        )
    };
    if s.is_empty() || s.len() > 255 {
        return Err(bad());
    }
    let mut parts = s.split('/');
    let first = parts.next().unwrap_or_default();
    if !registry_host(first) {
        return Err(bad());
    }
    if !parts.all(path_component) {
        return Err(bad());
    }
    Ok(())
}

/// A full image reference: `[host[:port]/]path[:tag][@digest]`.
pub fn image_reference(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{}` is not an image reference like kubeforge/node:1 or registry.example.com/node@sha256:...",
            shown(s)
        )
    };
    if s.is_empty() || s.len() > 512 {
        return Err(bad());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|b| is_alnum_lower(b) || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err(bad());
        }
    }
    // A tag follows the last `:` after the last `/`.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(bad());
        }
    }
    let comps: Vec<&str> = name.split('/').collect();
    let path = if comps.len() > 1
        && (comps[0].contains('.') || comps[0].contains(':') || comps[0] == "localhost")
    {
        if !registry_host(comps[0]) {
            return Err(bad());
        }
        &comps[1..]
    } else {
        &comps[..]
    };
    if path.is_empty() || !path.iter().all(|c| path_component(c)) {
        return Err(bad());
    }
    Ok(())
}

/// A docker network name: letters, digits, `_`, `.`, `-`, starting with a letter or digit.
pub fn docker_network(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a docker network name (letters, digits, `.`, `_`, `-`)",
            shown(s)
        )
    })
}

/// A kubeadm preflight check name as `--ignore-preflight-errors` takes it: `all`, or a
/// check's name (`Swap`, `NumCPU`, `Port-6443`, `FileAvailable--etc-kubernetes-manifests-etcd.yaml`).
pub fn preflight_check(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a kubeadm preflight check name like Swap, NumCPU, Port-6443 or all",
            shown(s)
        )
    })
}

/// kubeadm's `init` phases (and sub-phases) for a Kubernetes minor version, as
/// `kubeadm init --help` lists them.
pub fn kubeadm_init_phases(minor: u64) -> Vec<&'static str> {
    let mut v = vec![
        "preflight",
        "certs",
        "certs/all",
        "certs/ca",
        "certs/apiserver",
        "certs/apiserver-kubelet-client",
        "certs/front-proxy-ca",
        "certs/front-proxy-client",
        "certs/etcd-ca",
        "certs/etcd-server",
        "certs/etcd-peer",
        "certs/etcd-healthcheck-client",
        "certs/apiserver-etcd-client",
        "certs/sa",
        "kubeconfig",
        "kubeconfig/all",
        "kubeconfig/admin",
        "kubeconfig/kubelet",
        "kubeconfig/controller-manager",
        "kubeconfig/scheduler",
        "kubelet-start",
        "control-plane",
        "control-plane/all",
        "control-plane/apiserver",
        "control-plane/controller-manager",
        "control-plane/scheduler",
        "etcd",
        "etcd/local",
        "wait-control-plane",
        "upload-config",
        "upload-config/all",
        "upload-config/kubeadm",
        "upload-config/kubelet",
        "upload-certs",
        "mark-control-plane",
        "bootstrap-token",
        "kubelet-finalize",
        "kubelet-finalize/all",
        "addon",
        "addon/all",
        "addon/coredns",
        "addon/kube-proxy",
    ];
    if minor >= 29 {
        v.extend(["kubeconfig/super-admin", "show-join-command"]);
    }
    // Deprecated in 1.31 for enable-client-cert-rotation, removed in 1.32.
    if minor <= 31 {
        v.push("kubelet-finalize/experimental-cert-rotation");
    }
    if minor >= 31 {
        v.push("kubelet-finalize/enable-client-cert-rotation");
    }
    v
}

/// kubeadm's `join` phases for a Kubernetes minor version.
pub fn kubeadm_join_phases(minor: u64) -> Vec<&'static str> {
    let mut v = vec![
        "preflight",
        "control-plane-prepare",
        "control-plane-prepare/all",
        "control-plane-prepare/download-certs",
        "control-plane-prepare/certs",
        "control-plane-prepare/kubeconfig",
        "control-plane-prepare/control-plane",
        "kubelet-start",
        "control-plane-join",
        "control-plane-join/all",
        "control-plane-join/etcd",
        "control-plane-join/mark-control-plane",
    ];
    // A no-op from 1.22 and removed later; accepted while it may still be known.
    if minor <= 25 {
        v.push("control-plane-join/update-status");
    }
    if minor >= 31 {
        v.extend([
            "kubelet-wait-bootstrap",
            "wait-control-plane",
            "control-plane-join/etcd-join",
        ]);
    }
    v
}

/// A Kubernetes label key: an optional DNS-1123 subdomain prefix and `/`, then a name
/// of at most 63 characters (alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric).
pub fn label_key(s: &str) -> Result<(), String> {
    let bad = |why: &str| format!("`{}` is not a label key: {why}", shown(s));
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return Err(bad(
                "the prefix before `/` must be a lower-case DNS name like example.com",
            ));
        }
    }
    if !is_label_name(name) || name.is_empty() {
        return Err(bad("the name must be 1-63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

/// A Kubernetes label value: empty, or 1-63 alphanumerics, `-`, `_`, `.`, starting and
/// ending alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    is_label_name(s).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a label value: at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
            shown(s)
        )
    })
}

/// Labels in the `kubernetes.io` and `k8s.io` namespaces that kubelet may set on its
/// own node with `--node-labels` (kubelet refuses to start with any other).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// A label kubelet may set on its own node: not in the `kubernetes.io` / `k8s.io`
/// namespaces (`node-role.kubernetes.io/...` included), unless kubelet allows it.
pub fn node_label_key(s: &str) -> Result<(), String> {
    label_key(s)?;
    let Some((ns, _)) = s.split_once('/') else {
        return Ok(());
    };
    let in_ns = |base: &str| ns == base || ns.ends_with(&format!(".{base}"));
    if !(in_ns("kubernetes.io") || in_ns("k8s.io")) {
        return Ok(());
    }
    if KUBELET_LABELS.contains(&s) || KUBELET_LABEL_NAMESPACES.iter().any(|n| in_ns(n)) {
        return Ok(());
    }
    Err(format!(
        "`{s}` is in the kubernetes.io/k8s.io namespace, which kubelet may not set on its own node (it refuses to start): use your own prefix like example.com/role, or node.kubernetes.io/..."
    ))
}

/// An absolute path in plain characters (letters, digits, `/`, `.`, `_`, `-`, `+`),
/// without `..` components.
pub fn absolute_path(s: &str) -> Result<(), String> {
    let ok = s.starts_with('/')
        && s.len() <= 4096
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'))
        && !s.split('/').any(|c| c == "..");
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an absolute path like /var/lib/rook (letters, digits, `/`, `.`, `_`, `-`, no `..`)",
            shown(s)
        )
    })
}

/// A block device: a name under /dev (`sdb`, `nvme0n1`) or a path under /dev
/// (`/dev/disk/by-id/...`).
pub fn device(s: &str) -> Result<(), String> {
    let plain = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+'))
    };
    let ok = s.len() <= 255
        && match s.strip_prefix("/dev/") {
            Some(rest) => rest.split('/').all(|c| plain(c) && c != "." && c != ".."),
            None => plain(s),
        };
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a device name like sdb or /dev/disk/by-id/...",
            shown(s)
        )
    })
}

/// A Go duration like `90s` or `1m30s` (MetalLB's holdTime).
pub fn go_duration(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut any = false;
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        if i == start {
            any = false;
            break;
        }
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        if !matches!(&s[ustart..i], "ns" | "us" | "ms" | "s" | "m" | "h") {
            any = false;
            break;
        }
        any = true;
    }
    any.then_some(())
        .ok_or_else(|| format!("`{}` is not a duration like 90s or 1m30s", shown(s)))
}

/// A regular expression for device names (Rook's deviceFilter): printable, no white
/// space, at most 256 characters.
pub fn device_filter(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a device filter like ^sd[b-d] (printable characters, no spaces)",
            shown(s)
        )
    })
}

/// `s` for a message: control characters escaped, cut at 80 characters.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["eth0", "bond0.100", "enp0s31f6", "br-lan", "wg_0"] {
            assert!(interface_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "eth0\n",
            "eth0 x",
            "a;b",
            "0123456789abcdef",
            "-x",
            "..",
            "e\"x",
        ] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_repositories_and_references() {
        for ok in [
            "registry.k8s.io",
            "k8s.gcr.io",
            "localhost:5000",
            "registry.example.com:5000/k8s",
            "10.0.0.5:5000/a/b",
            "docker.io/my_org/sub--x",
        ] {
            assert!(image_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Registry.k8s.io",
            "registry.k8s.io/",
            "registry.k8s.io/A",
            "r.io;id",
            "r.io/a b",
            "r.io:0",
            "r.io/-a",
            "r.io/a..b",
        ] {
            assert!(image_repository(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "kubeforge/node:abc123",
            "node",
            "localhost:5000/node:1.0",
            "registry.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Node", "node:", "node:$(id)", "a b", "node@sha256:xyz"] {
            assert!(image_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_and_kubelet_namespaces() {
        for ok in [
            "role",
            "example.com/tier",
            "a.b/c_d.e-f",
            "node.kubernetes.io/pool",
        ] {
            assert!(node_label_key(ok).is_ok(), "{ok}");
        }
        assert!(node_label_key("topology.kubernetes.io/zone").is_ok());
        for bad in [
            "",
            "/x",
            "Example.com/x",
            "x/",
            "a/b/c",
            "-x",
            "x=y",
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "foo.k8s.io/x",
        ] {
            assert!(node_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("a,b").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn sans_hosts_users_paths() {
        for ok in [
            "api.example.com",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "localhost",
        ] {
            assert!(cert_san(ok).is_ok(), "{ok}");
        }
        for bad in ["API.example.com", "*", "a.*.com", "x y", "a_b.com", ""] {
            assert!(cert_san(bad).is_err(), "{bad:?}");
        }
        assert!(host("Bastion.example.com").is_ok());
        assert!(host("::1").is_err());
        assert!(unix_user("debian").is_ok());
        assert!(unix_user("root;id").is_err());
        assert!(absolute_path("/var/lib/rook").is_ok());
        assert!(absolute_path("/var/../etc").is_err());
        assert!(absolute_path("var").is_err());
        assert!(device("/dev/disk/by-path/pci-0000:00:1f.2-ata-1").is_ok());
        assert!(device("/dev/../etc/passwd").is_err());
        assert!(go_duration("1m30s").is_ok());
        assert!(go_duration("90").is_err());
    }

    #[test]
    fn kubeadm_phases_follow_the_version() {
        assert!(kubeadm_init_phases(20).contains(&"addon/coredns"));
        assert!(!kubeadm_init_phases(20).contains(&"show-join-command"));
        assert!(kubeadm_init_phases(30).contains(&"show-join-command"));
        assert!(!kubeadm_init_phases(32).contains(&"kubelet-finalize/experimental-cert-rotation"));
        assert!(preflight_check("FileAvailable--etc-kubernetes-manifests-etcd.yaml").is_ok());
        assert!(preflight_check("Swap,all").is_err());
    }
}
