use super::exec;
use super::{
    host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step, APPLIED_DIR,
};
use crate::render::views::{Profile, BIN_DIR};
use crate::render::FileGroup;
use crate::transport::shell::quote;

pub struct InitControlPlane;

pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// Written after `kubeadm init` succeeded.
pub const INIT_DONE: &str = "/var/lib/kubeforge/applied/kubeadm-init";
pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
/// Where the CA public key hash is kept in the state's secrets (not secret itself, but
/// it belongs with the PKI).
pub const CA_HASH_KEY: &str = "ca-cert-hash";

/// `kubectl` as root on a control-plane node.
pub fn kubectl() -> String {
    format!("{BIN_DIR}/kubectl --kubeconfig={ADMIN_CONF}")
}

/// Extra kubeadm flags: patches, skipped phases, ignored preflight errors.
pub fn kubeadm_flags(ctx: &PlanContext<'_>, control_plane: bool) -> String {
    kubeadm_flags_for(ctx, control_plane, false)
}

/// The same for `kubeadm join`.
pub fn kubeadm_join_flags(ctx: &PlanContext<'_>, control_plane: bool) -> String {
    kubeadm_flags_for(ctx, control_plane, true)
}

fn kubeadm_flags_for(ctx: &PlanContext<'_>, control_plane: bool, join: bool) -> String {
    let c = ctx.cluster;
    let mut out = String::new();
    if control_plane && Profile::of(c).etcd_ephemeral_storage_patch {
        let flag = if c.version().minor < 22 {
            "--experimental-patches"
        } else {
            "--patches"
        };
        out.push_str(&format!(" {flag} /etc/kubeforge/patches"));
    }
    let k = &c.cluster.spec.kubeadm;
    // Each command gets the phases it has (validation refused names neither has); init
    // phases such as addon/coredns are not passed to join, which rejects them.
    let minor = c.version().minor;
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

/// `sha256:<hex>` of a PEM certificate's SubjectPublicKeyInfo, as kubeadm's
/// `--discovery-token-ca-cert-hash` expects.
pub fn ca_cert_hash(pem: &[u8]) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

#[async_trait::async_trait]
impl Phase for InitControlPlane {
    fn name(&self) -> &'static str {
        "init-control-plane"
    }
    fn description(&self) -> &'static str {
        "kubeadm init on the first control-plane node"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let flags = kubeadm_flags(ctx, true);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::Kubeadm],
                // A finished init is marked, and never run again (an unhealthy
                // apiserver later is not a reason to re-init over etcd's data); an
                // init that failed half-way is run again.
                vec![Step::cmd(format!(
                    "{BIN_DIR}/kubeadm init --config /etc/kubeforge/kubeadm-init.yaml --upload-certs{flags} \
&& mkdir -p {APPLIED_DIR} && touch {INIT_DONE}"
                ))
                .unless_check(
                    format!("kubeadm init finished here before ({INIT_DONE})"),
                    format!("test -f {ADMIN_CONF} && test -f {INIT_DONE}"),
                )],
            ));
        }
        p.operator.push(Step::new(format!(
            "record the cluster CA and its public key hash in the state; wait for https://{}/readyz",
            ctx.cluster.topology.endpoint.address()
        )));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &exec::NoSpecial).await?;
        let phase = self.name().to_string();
        let Some((first, s)) = ctx.first_control_plane(&phase).await? else {
            return Ok(());
        };
        let pem = exec::download(s.as_ref(), &first.name, CA_CERT)
            .await
            .map_err(|e| PhaseError::host(&phase, e))?;
        let hash = ca_cert_hash(&pem).map_err(|message| PhaseError::Gate {
            phase: phase.clone(),
            message: format!("{CA_CERT} on {}: {message}", first.name),
        })?;
        let ca = String::from_utf8_lossy(&pem).to_string();
        ctx.state
            .update(|doc| {
                doc.secrets.pki.insert("ca.crt".into(), ca);
                doc.secrets.extra.insert(CA_HASH_KEY.into(), hash);
            })
            .await
            .map_err(|source| PhaseError::State {
                phase: phase.clone(),
                source,
            })?;
        super::wait_ready::wait_readyz(ctx, s.as_ref(), &phase).await
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn ca_hash_matches_what_openssl_computes() {
        let dir = tempfile::tempdir().unwrap();
        let crt = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=kubernetes",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl is installed");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let script = format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            crt.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let want = format!(
            "sha256:{}",
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
        );
        let pem = std::fs::read(&crt).unwrap();
        assert_eq!(super::ca_cert_hash(&pem).unwrap(), want);
        assert!(super::ca_cert_hash(b"not a certificate").is_err());
    }
}
