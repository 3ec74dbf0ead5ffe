//! Files kubeforge writes to hosts, rendered from tera templates embedded in the binary
//! (`templates/`, mirroring the remote path) and fed only by typed view structs.

pub mod secrets;
pub mod views;

pub use secrets::Secrets;

use crate::spec::{LoadedCluster, Role};
use serde::Serialize;
use std::sync::OnceLock;
use tera::{Context, Tera};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template `{name}` failed to render")]
    Template {
        name: String,
        #[source]
        source: tera::Error,
    },
    #[error("the embedded templates are broken")]
    Load(#[source] tera::Error),
    #[error("spec.loadBalancer.failover: {0}")]
    Failover(String),
    #[error("cannot turn the {what} view into template input")]
    View {
        what: &'static str,
        #[source]
        source: tera::Error,
    },
}

/// keepalived's notify_master script on AWS/Hetzner (`loadBalancer.failover`).
pub const FAILOVER_SCRIPT: &str = include_str!("../../templates/keepalived/vip-failover.py");

/// Every template, embedded at build time (a missing file fails the build).
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "haproxy/haproxy.cfg",
        include_str!("../../templates/haproxy/haproxy.cfg.tera"),
    ),
    (
        "keepalived/keepalived.conf",
        include_str!("../../templates/keepalived/keepalived.conf.tera"),
    ),
    (
        "keepalived/check_haproxy.sh",
        include_str!("../../templates/keepalived/check_haproxy.sh.tera"),
    ),
    (
        "containerd/config.toml",
        include_str!("../../templates/containerd/config.toml.tera"),
    ),
    (
        "kubelet/kubelet.service",
        include_str!("../../templates/kubelet/kubelet.service.tera"),
    ),
    (
        "kubelet/kubelet-cgroup-root.sh",
        include_str!("../../templates/kubelet/kubelet-cgroup-root.sh.tera"),
    ),
    (
        "kubelet/20-kubeforge-cgroup-root.conf",
        include_str!("../../templates/kubelet/20-kubeforge-cgroup-root.conf.tera"),
    ),
    (
        "kubelet/10-kubeadm.conf",
        include_str!("../../templates/kubelet/10-kubeadm.conf.tera"),
    ),
    (
        "system/sysctl.conf",
        include_str!("../../templates/system/sysctl.conf.tera"),
    ),
    (
        "system/modules.conf",
        include_str!("../../templates/system/modules.conf.tera"),
    ),
    (
        "cni/10-kubeforge.conflist",
        include_str!("../../templates/cni/10-kubeforge.conflist.tera"),
    ),
    (
        "cni/kubeforge-podnet.service",
        include_str!("../../templates/cni/kubeforge-podnet.service.tera"),
    ),
    (
        "cni/podnet.sh",
        include_str!("../../templates/cni/podnet.sh.tera"),
    ),
    (
        "kubeadm/etcd+json.yaml",
        include_str!("../../templates/kubeadm/etcd+json.yaml.tera"),
    ),
    (
        "etcd-backup/kubeforge-etcd-snapshot.sh",
        include_str!("../../templates/etcd-backup/kubeforge-etcd-snapshot.sh.tera"),
    ),
    (
        "etcd-backup/kubeforge-etcd-snapshot.service",
        include_str!("../../templates/etcd-backup/kubeforge-etcd-snapshot.service.tera"),
    ),
    (
        "etcd-backup/kubeforge-etcd-snapshot.timer",
        include_str!("../../templates/etcd-backup/kubeforge-etcd-snapshot.timer.tera"),
    ),
    (
        "kubeadm/v1beta2/init.yaml",
        include_str!("../../templates/kubeadm/v1beta2/init.yaml.tera"),
    ),
    (
        "kubeadm/v1beta2/join.yaml",
        include_str!("../../templates/kubeadm/v1beta2/join.yaml.tera"),
    ),
    (
        "kubeadm/v1beta3/init.yaml",
        include_str!("../../templates/kubeadm/v1beta3/init.yaml.tera"),
    ),
    (
        "kubeadm/v1beta3/join.yaml",
        include_str!("../../templates/kubeadm/v1beta3/join.yaml.tera"),
    ),
    (
        "kubeadm/v1beta4/init.yaml",
        include_str!("../../templates/kubeadm/v1beta4/init.yaml.tera"),
    ),
    (
        "kubeadm/v1beta4/join.yaml",
        include_str!("../../templates/kubeadm/v1beta4/join.yaml.tera"),
    ),
];

fn engine() -> Result<&'static Tera, RenderError> {
    static ENGINE: OnceLock<Result<Tera, String>> = OnceLock::new();
    let built = ENGINE.get_or_init(|| {
        let mut t = Tera::default();
        t.autoescape_on(vec![]);
        t.add_raw_templates(TEMPLATES.iter().copied())
            .map(|_| t)
            .map_err(|e| format!("{e:?}"))
    });
    built
        .as_ref()
        .map_err(|e| RenderError::Load(tera::Error::msg(e.clone())))
}

/// Render one template with a view.
pub fn render<V: Serialize>(name: &str, view: &V) -> Result<String, RenderError> {
    let ctx = Context::from_serialize(view).map_err(|source| RenderError::View {
        what: "template",
        source,
    })?;
    engine()?
        .render(name, &ctx)
        .map_err(|source| RenderError::Template {
            name: name.to_string(),
            source,
        })
}

/// The kubeadm config API for a Kubernetes version: v1beta2 for 1.20-1.21, v1beta3 for
/// 1.22-1.30, v1beta4 from 1.31.
pub fn kubeadm_api_version(v: &semver::Version) -> &'static str {
    match v.minor {
        0..=21 => "v1beta2",
        22..=30 => "v1beta3",
        _ => "v1beta4",
    }
}

/// A file for one host.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedFile {
    pub host: String,
    /// Absolute path on the host.
    pub path: String,
    pub mode: u32,
    /// The template it came from.
    pub template: String,
    pub content: String,
    /// Holds secrets: shown redacted, never logged.
    pub sensitive: bool,
}

impl RenderedFile {
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.content.as_bytes()))
    }
}

/// Which files a host gets, by group. Used by the phases to pick their share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileGroup {
    /// Kernel settings, containerd, kubelet unit: every Kubernetes node.
    NodeBase,
    /// HAProxy + keepalived.
    LoadBalancer,
    /// kubeadm init/join configuration and patches.
    Kubeadm,
    /// The pod network.
    Cni,
    /// The etcd snapshot timer of the control-plane nodes.
    Backup,
}

/// All files of all hosts, tagged by group.
pub fn render_all(
    c: &LoadedCluster,
    secrets: &Secrets,
) -> Result<Vec<(FileGroup, RenderedFile)>, RenderError> {
    render_all_with_init(c, secrets, None)
}

/// The same, with `init` (a control-plane host's name) as the node that holds the init
/// configuration instead of the first control-plane node of the topology (the first was
/// replaced and joins the running control plane).
pub fn render_all_with_init(
    c: &LoadedCluster,
    secrets: &Secrets,
    init: Option<&str>,
) -> Result<Vec<(FileGroup, RenderedFile)>, RenderError> {
    let mut out = Vec::new();
    let t = &c.topology;
    let init: Option<String> = init
        .map(String::from)
        .or_else(|| t.first_control_plane().map(|f| f.name.clone()));
    let profile = views::Profile::of(c);
    let api = kubeadm_api_version(&c.version());
    for h in &t.hosts {
        let mut add = |group: FileGroup,
                       template: &str,
                       path: &str,
                       mode: u32,
                       content: String,
                       sensitive: bool| {
            out.push((
                group,
                RenderedFile {
                    host: h.name.clone(),
                    path: path.to_string(),
                    mode,
                    template: template.to_string(),
                    content,
                    sensitive,
                },
            ))
        };
        if h.is_kubernetes_node() {
            let base = views::base(c, &profile);
            for (template, path, mode) in [
                (
                    "system/modules.conf",
                    "/etc/modules-load.d/kubeforge.conf",
                    0o644,
                ),
                (
                    "system/sysctl.conf",
                    "/etc/sysctl.d/90-kubeforge.conf",
                    0o644,
                ),
                (
                    "containerd/config.toml",
                    "/etc/containerd/config.toml",
                    0o644,
                ),
                (
                    "kubelet/kubelet.service",
                    "/etc/systemd/system/kubelet.service",
                    0o644,
                ),
                (
                    "kubelet/10-kubeadm.conf",
                    "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
                    0o644,
                ),
            ] {
                add(
                    FileGroup::NodeBase,
                    template,
                    path,
                    mode,
                    render(template, &base)?,
                    false,
                );
            }
            if profile.container {
                for (template, path, mode) in [
                    (
                        "kubelet/kubelet-cgroup-root.sh",
                        views::CGROUP_SCRIPT,
                        0o755,
                    ),
                    (
                        "kubelet/20-kubeforge-cgroup-root.conf",
                        "/etc/systemd/system/kubelet.service.d/20-kubeforge-cgroup-root.conf",
                        0o644,
                    ),
                ] {
                    add(
                        FileGroup::NodeBase,
                        template,
                        path,
                        mode,
                        render(template, &base)?,
                        false,
                    );
                }
            }
            let is_first = init.as_deref() == Some(h.name.as_str());
            let kubeadm_path = if is_first {
                "/etc/kubeforge/kubeadm-init.yaml"
            } else {
                "/etc/kubeforge/kubeadm-join.yaml"
            };
            let template = if is_first {
                format!("kubeadm/{api}/init.yaml")
            } else {
                format!("kubeadm/{api}/join.yaml")
            };
            let view = views::kubeadm(c, h, &profile, secrets);
            add(
                FileGroup::Kubeadm,
                &template,
                kubeadm_path,
                0o600,
                render(&template, &view)?,
                true,
            );
            if profile.etcd_ephemeral_storage_patch && h.has(Role::ControlPlane) {
                add(
                    FileGroup::Kubeadm,
                    "kubeadm/etcd+json.yaml",
                    "/etc/kubeforge/patches/etcd+json.yaml",
                    0o644,
                    render("kubeadm/etcd+json.yaml", &base)?,
                    false,
                );
            }
            if let Some(cni) = views::cni(c, h) {
                add(
                    FileGroup::Cni,
                    "cni/10-kubeforge.conflist",
                    views::CONFLIST_TEMPLATE,
                    0o644,
                    render("cni/10-kubeforge.conflist", &cni)?,
                    false,
                );
                add(
                    FileGroup::Cni,
                    "cni/podnet.sh",
                    views::PODNET_SCRIPT,
                    0o755,
                    render("cni/podnet.sh", &cni)?,
                    false,
                );
                add(
                    FileGroup::Cni,
                    "cni/kubeforge-podnet.service",
                    &format!("/etc/systemd/system/{}.service", views::PODNET_UNIT),
                    0o644,
                    render("cni/kubeforge-podnet.service", &cni)?,
                    false,
                );
            }
        }
        let backup = &c.cluster.spec.backup;
        if h.has(Role::ControlPlane) && backup.interval_minutes > 0 {
            let view = serde_json::json!({
                "host": h.name,
                "dir": views::SNAPSHOT_TIMER_DIR,
                "keep": backup.keep,
                "interval": backup.interval_minutes,
                "script": views::SNAPSHOT_SCRIPT,
                "ship": backup.ship.is_some() && backup.interval_minutes > 0,
                "ship_binary": crate::backup::NODE_BINARY,
                "ship_config": crate::backup::SHIP_CONFIG,
            });
            for (template, path, mode) in [
                (
                    "etcd-backup/kubeforge-etcd-snapshot.sh",
                    views::SNAPSHOT_SCRIPT.to_string(),
                    0o755,
                ),
                (
                    "etcd-backup/kubeforge-etcd-snapshot.service",
                    format!("/etc/systemd/system/{}.service", views::SNAPSHOT_UNIT),
                    0o644,
                ),
                (
                    "etcd-backup/kubeforge-etcd-snapshot.timer",
                    format!("/etc/systemd/system/{}.timer", views::SNAPSHOT_UNIT),
                    0o644,
                ),
            ] {
                add(
                    FileGroup::Backup,
                    template,
                    &path,
                    mode,
                    render(template, &view)?,
                    false,
                );
            }
        }
        if t.endpoint.lb_hosts().contains(&h.name) {
            let hv = views::haproxy(c);
            add(
                FileGroup::LoadBalancer,
                "haproxy/haproxy.cfg",
                "/etc/haproxy/haproxy.cfg",
                0o644,
                render("haproxy/haproxy.cfg", &hv)?,
                false,
            );
            if let Some(kv) = views::keepalived(c, h) {
                add(
                    FileGroup::LoadBalancer,
                    "keepalived/keepalived.conf",
                    "/etc/keepalived/keepalived.conf",
                    0o644,
                    render("keepalived/keepalived.conf", &kv)?,
                    false,
                );
                add(
                    FileGroup::LoadBalancer,
                    "keepalived/check_haproxy.sh",
                    views::CHECK_SCRIPT,
                    0o755,
                    render("keepalived/check_haproxy.sh", &hv)?,
                    false,
                );
                if let Some((config, secret)) =
                    views::failover_config(c, h).map_err(RenderError::Failover)?
                {
                    // Not a template: the script reads its JSON configuration.
                    add(
                        FileGroup::LoadBalancer,
                        "keepalived/vip-failover.py",
                        views::FAILOVER_SCRIPT,
                        0o755,
                        FAILOVER_SCRIPT.to_string(),
                        false,
                    );
                    add(
                        FileGroup::LoadBalancer,
                        "keepalived/vip-failover.json",
                        views::FAILOVER_CONFIG,
                        0o600,
                        config,
                        secret,
                    );
                }
            }
        }
    }
    Ok(out)
}
