//! kubeadm command lines for the cluster's Kubernetes version, in one place (as
//! KubeOne's Kubeadm interface does): init, join, token, certificate upload, and the
//! flags that differ between versions. Secrets never appear on a command line: they
//! are in the uploaded configuration files (mode 0600).

use crate::render::views::{Profile, BIN_DIR};
use crate::spec::LoadedCluster;
use crate::transport::shell::quote;

/// Where the rendered kubeadm configurations are uploaded.
pub const INIT_CONFIG: &str = "/etc/kubeforge/kubeadm-init.yaml";
pub const JOIN_CONFIG: &str = "/etc/kubeforge/kubeadm-join.yaml";
pub const PATCHES_DIR: &str = "/etc/kubeforge/patches";
/// Written after `kubeadm init` succeeded.
pub const INIT_DONE: &str = "/var/lib/kubeforge/applied/kubeadm-init";

/// Where the detached kubeadm runs log (appended, one file per unit).
pub const LOG_DIR: &str = "/var/log/kubeforge";
pub const JOIN_DONE: &str = "/var/lib/kubeforge/applied/kubeadm-join";

/// Run `command` as the transient systemd unit `unit`, detached from the SSH session:
/// if kubeforge is killed (or the connection drops) the command runs to its end, and the
/// next run waits for it instead of starting a second one. Success is recorded by
/// touching `marker` (the step's guard checks it); the output goes to
/// `/var/log/kubeforge/<unit>.log`, whose end is printed when the command fails.
pub fn detached(unit: &str, command: &str, marker: &str) -> String {
    let log = format!("{LOG_DIR}/{unit}.log");
    let inner = format!(
        "{command} && mkdir -p {dir} && touch {marker}",
        dir = crate::phase::APPLIED_DIR
    );
    format!(
        "mkdir -p {LOG_DIR}; \
while systemctl is-active --quiet {unit}; do sleep 2; done; \
if [ -f {marker} ]; then exit 0; fi; \
systemctl reset-failed {unit} >/dev/null 2>&1; \
echo \"== $(date -u +%FT%TZ) {unit}\" >> {log}; \
systemd-run --unit={unit} --wait --collect --quiet -p StandardOutput=append:{log} -p StandardError=append:{log} \
/bin/sh -c {quoted} || {{ rc=$?; tail -n 30 {log} >&2; exit $rc; }}",
        quoted = crate::transport::shell::quote(&inner),
    )
}

/// When a restore put etcd's data in place before `kubeadm init` (every control plane
/// was lost), init runs over it: its preflight must accept the non-empty data directory.
pub const RESTORED_ETCD_FLAG: &str = "$(ls /var/lib/kubeforge/applied/etcd-restore-* >/dev/null 2>&1 && echo ' --ignore-preflight-errors=DirAvailable--var-lib-etcd')";

/// The kubeadm of one cluster.
pub struct Kubeadm<'a> {
    cluster: &'a LoadedCluster,
}

impl<'a> Kubeadm<'a> {
    pub fn of(cluster: &'a LoadedCluster) -> Kubeadm<'a> {
        Kubeadm { cluster }
    }

    fn bin(&self) -> String {
        format!("{BIN_DIR}/kubeadm")
    }

    /// `--experimental-patches` before 1.22, `--patches` from then on, when the
    /// cluster's profile patches the etcd manifest (kubernetes#99305).
    fn patches_flag(&self) -> String {
        if !Profile::of(self.cluster).etcd_ephemeral_storage_patch {
            return String::new();
        }
        let flag = if self.cluster.version().minor < 22 {
            "--experimental-patches"
        } else {
            "--patches"
        };
        format!(" {flag} {PATCHES_DIR}")
    }

    fn flags(&self, control_plane: bool, join: bool) -> String {
        let mut out = String::new();
        if control_plane {
            out.push_str(&self.patches_flag());
        }
        let k = &self.cluster.cluster.spec.kubeadm;
        // Each command gets the phases it has (validation refused names neither has);
        // init phases such as addon/coredns are not passed to join, which rejects them.
        let minor = self.cluster.version().minor;
        let known = if join {
            crate::spec::syntax::kubeadm_join_phases(minor)
        } else {
            crate::spec::syntax::kubeadm_init_phases(minor)
        };
        let skip: Vec<&str> = k
            .skip_phases
            .iter()
            .map(String::as_str)
            .filter(|p| known.contains(p))
            .collect();
        if !skip.is_empty() {
            out.push_str(&format!(" --skip-phases={}", quote(&skip.join(","))));
        }
        if !k.ignore_preflight_errors.is_empty() {
            out.push_str(&format!(
                " --ignore-preflight-errors={}",
                quote(&k.ignore_preflight_errors.join(","))
            ));
        }
        out
    }

    /// `kubeadm init` from the uploaded configuration, certificates uploaded for the
    /// control-plane joins.
    pub fn init(&self) -> String {
        format!(
            "{} init --config {INIT_CONFIG} --upload-certs{}{}",
            self.bin(),
            self.flags(true, false),
            RESTORED_ETCD_FLAG
        )
    }

    /// Renew every certificate kubeadm made on this node (the CAs stay).
    pub fn certs_renew(&self) -> String {
        format!("{} certs renew all", self.bin())
    }

    /// `kubeadm join` from the uploaded configuration.
    pub fn join(&self, control_plane: bool) -> String {
        format!(
            "{} join --config {JOIN_CONFIG}{}",
            self.bin(),
            self.flags(control_plane, true)
        )
    }

    /// Make sure the bootstrap token of the init configuration exists (it expires after
    /// 24 hours). The token is read from the configuration file; only its public id
    /// appears here.
    pub fn ensure_token(&self, token_id: &str) -> String {
        let admin = super::ADMIN_CONF;
        format!(
            "{bin} token list --kubeconfig {admin} | awk '{{print $1}}' | grep -q '^{token_id}\\.' \
|| {bin} token create --config {INIT_CONFIG} --kubeconfig {admin}",
            bin = self.bin()
        )
    }

    /// Upload the control-plane certificates again (kubeadm deletes the
    /// `kubeadm-certs` Secret two hours after an upload), encrypted with the
    /// certificate key of the init configuration, unless the Secret is there.
    pub fn ensure_uploaded_certs(&self) -> String {
        format!(
            "{kubectl} -n kube-system get secret kubeadm-certs >/dev/null 2>&1 \
|| {bin} init phase upload-certs --upload-certs --config {INIT_CONFIG}",
            kubectl = super::kubectl(),
            bin = self.bin()
        )
    }

    /// `kubeadm upgrade apply` on the first control-plane node (the target's kubeadm).
    /// A pre-release target needs kubeadm's experimental (or release-candidate) flag;
    /// without CoreDNS (addon/coredns skipped) its image is absent on purpose, so the
    /// image check is not an error for it.
    pub fn upgrade_apply(&self, version: &str) -> String {
        let mut flags = self.patches_flag();
        if let Some(v) = crate::spec::validate::parse_kubernetes_version(version) {
            if !v.pre.is_empty() {
                flags.push_str(if v.pre.as_str().starts_with("rc") {
                    " --allow-release-candidate-upgrades"
                } else {
                    " --allow-experimental-upgrades"
                });
            }
        }
        let k = &self.cluster.cluster.spec.kubeadm;
        let mut ignore = k.ignore_preflight_errors.clone();
        // Without CoreDNS its image is absent on purpose, and kubeadm's CoreDNS checks
        // fail on a Deployment that does not exist ("start version '' not supported").
        if k.skip_phases
            .iter()
            .any(|p| p == "addon/coredns" || p == "addon")
            && !ignore.iter().any(|i| i == "all")
        {
            for check in ["ImagePull", "CoreDNSUnsupportedPlugins", "CoreDNSMigration"] {
                if !ignore.iter().any(|i| i == check) {
                    ignore.push(check.into());
                }
            }
        }
        if !ignore.is_empty() {
            flags.push_str(&format!(
                " --ignore-preflight-errors={}",
                quote(&ignore.join(","))
            ));
        }
        format!(
            "{} upgrade apply {} --yes --certificate-renewal=true{flags}",
            self.bin(),
            quote(version)
        )
    }

    /// Whether the cluster runs without CoreDNS (addon/coredns skipped).
    fn without_coredns(&self) -> bool {
        self.cluster
            .cluster
            .spec
            .kubeadm
            .skip_phases
            .iter()
            .any(|p| p == "addon/coredns" || p == "addon")
    }

    /// `kubeadm upgrade node` on the other nodes. On a control plane of a cluster
    /// without CoreDNS its preflight (an image pre-pull through crictl) would fail on the
    /// CoreDNS image that is absent on purpose; the images are in place already.
    pub fn upgrade_node(&self, control_plane: bool) -> String {
        let mut flags = String::new();
        if control_plane {
            flags.push_str(&self.patches_flag());
            if self.without_coredns() {
                flags.push_str(" --skip-phases=preflight");
            }
        }
        format!("{} upgrade node{flags}", self.bin())
    }

    /// `kubeadm reset` of a node that is to be joined again (kubeforge's markers of a
    /// finished init or join go with it).
    pub fn reset(&self) -> String {
        format!(
            "{} reset --force && rm -f {INIT_DONE} {JOIN_DONE}",
            self.bin()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> LoadedCluster {
        crate::spec::load_file(&std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/local.yaml"
        )))
        .expect("the local example loads")
    }

    #[test]
    fn command_lines_follow_the_version_and_hold_no_secret() {
        let c = cluster();
        let k = Kubeadm::of(&c);
        let init = k.init();
        assert!(init.contains("--config /etc/kubeforge/kubeadm-init.yaml --upload-certs"));
        // 1.20 in containers: the etcd patch, with the pre-1.22 flag.
        assert!(
            init.contains("--experimental-patches /etc/kubeforge/patches"),
            "{init}"
        );
        let join = k.join(false);
        assert!(!join.contains("patches"), "{join}");
        // Phases of init only are not passed to join.
        if c.cluster
            .spec
            .kubeadm
            .skip_phases
            .iter()
            .any(|p| p.starts_with("addon"))
        {
            assert!(!join.contains("addon/"), "{join}");
        }
        let tok = k.ensure_token("abcdef");
        assert!(tok.contains("grep -q '^abcdef\\.'"), "{tok}");
        assert!(tok.contains("token create --config /etc/kubeforge/kubeadm-init.yaml"));
        assert!(k
            .upgrade_apply("v1.20.3")
            .starts_with("/usr/local/bin/kubeadm upgrade apply v1.20.3 --yes"));
        assert!(!k.upgrade_apply("v1.20.3").contains("--allow-"));
        assert!(k
            .upgrade_apply("v1.20.3-kf.0")
            .contains(" --allow-experimental-upgrades"));
        assert!(k
            .upgrade_apply("v1.21.0-rc.1")
            .contains(" --allow-release-candidate-upgrades"));
        // A build label is quoted (`+` is not special to the shell, but stays one word).
        assert!(
            k.upgrade_apply("v1.20.2+kf.1")
                .contains("upgrade apply 'v1.20.2+kf.1' --yes")
                || k.upgrade_apply("v1.20.2+kf.1")
                    .contains("upgrade apply v1.20.2+kf.1 --yes")
        );
    }
}
