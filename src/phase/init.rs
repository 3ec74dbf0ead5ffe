use super::exec;
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::render::FileGroup;

pub struct InitControlPlane;

pub use crate::kube::kubeadm::INIT_DONE;
pub use crate::kube::{ADMIN_CONF, CA_CERT};
/// Where the CA public key hash is kept in the state's secrets (not secret itself, but
/// it belongs with the PKI).
pub const CA_HASH_KEY: &str = "ca-cert-hash";

/// The PKI every control plane of a cluster shares (what kubeadm's `kubeadm-certs`
/// Secret carries), relative to /etc/kubernetes/pki.
pub const SHARED_PKI: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "sa.key",
    "sa.pub",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
];

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
        let kubeadm = crate::kube::Kubeadm::of(ctx.cluster);
        for h in &ctx.hosts {
            // A node that joined the control plane earlier and now takes the first
            // node's part (the first was replaced): the cluster exists, no init.
            let joined = ctx
                .facts
                .and_then(|f| f.host(&h.name))
                .is_some_and(|f| f.control_plane_manifests && !f.kubeadm_init_done);
            if joined {
                p.hosts
                    .push(host_plan(ctx, h, &[FileGroup::Kubeadm], Vec::new()));
                p.operator.push(Step::new(format!(
                    "{} runs a control plane already (joined earlier): the cluster exists, no kubeadm init; it takes the first control-plane node's part for the joins",
                    h.name
                )));
                continue;
            }
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::Kubeadm],
                // A finished init is marked, and never run again (an unhealthy
                // apiserver later is not a reason to re-init over etcd's data); an
                // init that failed half-way is run again.
                vec![Step {
                    run: Some(crate::kube::kubeadm::detached(
                        "kubeforge-kubeadm-init",
                        &kubeadm.init(),
                        INIT_DONE,
                    )),
                    ..Step::cmd(format!(
                        "{} (detached: survives a lost connection; log in {}/kubeforge-kubeadm-init.log)",
                        kubeadm.init(),
                        crate::kube::kubeadm::LOG_DIR
                    ))
                }
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
        // Never `kubeadm init` a second cluster over a live one: when this node has no
        // kubeadm state but another control-plane node runs etcd, stop here.
        if let Some(f) = ctx.rt.facts() {
            for hp in &plan.hosts {
                let fresh = f
                    .host(&hp.host)
                    .is_some_and(|h| !h.kubeadm_init_done && !h.control_plane_manifests);
                let live: Vec<&String> = f
                    .hosts
                    .iter()
                    .filter(|(n, h)| *n != &hp.host && h.control_plane_manifests)
                    .map(|(n, _)| n)
                    .collect();
                if fresh && !live.is_empty() {
                    return Err(PhaseError::Gate {
                        phase: self.name().into(),
                        message: format!(
                            "{} has no kubeadm state, but the cluster runs on {}: not running kubeadm init over a live cluster (the first control-plane node was replaced; it must join the existing control plane instead)",
                            hp.host,
                            live.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
        }
        ctx.hosts(plan, &exec::NoSpecial).await?;
        let phase = self.name().to_string();
        let Some((first, s)) = ctx.first_control_plane(&phase).await? else {
            return Ok(());
        };
        // The CA certificate and the shared PKI a rebuild needs (every control plane
        // lost): the same CAs and service-account key keep workers, kubeconfigs and
        // tokens valid. Read in one round trip; encrypted with the other secrets of the
        // state. A run that changed nothing knows from the facts' round trip whether
        // they still are what the state holds (their digests asked ahead): no read then.
        let paths = pki_paths();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let kept = {
            let doc = ctx.state.get().await;
            let pki = &doc.secrets.pki;
            let known: Vec<Option<&str>> = pki_names()
                .map(|n| pki.get(n).map(String::as_str))
                .collect();
            doc.secrets.extra.contains_key(CA_HASH_KEY)
                && ctx.nothing_to_do(plan)
                && ctx.files_unchanged_ahead(first, &paths, &known)
        };
        if kept {
            tracing::debug!(host = %first.name, "the PKI is what the state holds (digests asked ahead)");
        } else {
            read_pki(ctx, first, s.as_ref(), &paths, &phase).await?;
        }
        // Nothing changed in this run and the preview's facts were answered through the
        // API moments ago: no readiness wait.
        if ctx.nothing_to_do(plan) && ctx.standing_facts().is_some_and(|f| f.nodes.is_some()) {
            return Ok(());
        }
        super::wait_readyz(ctx, s.as_ref(), &phase).await
    }

    fn ask_ahead(&self, c: &crate::spec::LoadedCluster) -> Vec<(String, String)> {
        let Some(first) = crate::facts::init_node(&c.topology, None) else {
            return Vec::new();
        };
        let paths = pki_paths();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        vec![(first.name.clone(), exec::digests_command(&paths))]
    }
}

/// What is read of the first control plane's PKI, by name under /etc/kubernetes/pki (as
/// the state keeps it): the CA certificate (`CA_CERT`, whose hash is taken), then the
/// shared PKI (`SHARED_PKI`).
fn pki_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("ca.crt").chain(SHARED_PKI)
}

/// [`pki_names`] as paths on a control plane.
fn pki_paths() -> Vec<String> {
    pki_names()
        .map(|n| format!("/etc/kubernetes/pki/{n}"))
        .collect()
}

/// Read the CA and the shared PKI from `first` into the state.
async fn read_pki(
    ctx: &ApplyContext<'_>,
    first: &crate::spec::Host,
    s: &dyn crate::transport::Transport,
    paths: &[&str],
    phase: &str,
) -> Result<(), PhaseError> {
    let phase = phase.to_string();
    let mut read = exec::download_all(s, &first.name, paths)
        .await
        .map_err(|e| PhaseError::host(&phase, e))?
        .into_iter();
    let pem = read.next().unwrap_or_default();
    let hash = ca_cert_hash(&pem).map_err(|message| PhaseError::Gate {
        phase: phase.clone(),
        message: format!("{CA_CERT} on {}: {message}", first.name),
    })?;
    let ca = String::from_utf8_lossy(&pem).to_string();
    let shared: std::collections::BTreeMap<String, String> = SHARED_PKI
        .iter()
        .zip(read)
        .map(|(n, bytes)| (n.to_string(), String::from_utf8_lossy(&bytes).to_string()))
        .collect();
    ctx.state
        .update(|doc| {
            doc.secrets.pki.extend(shared);
            doc.secrets.pki.insert("ca.crt".into(), ca);
            doc.secrets.extra.insert(CA_HASH_KEY.into(), hash);
        })
        .await
        .map_err(|source| PhaseError::State { phase, source })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// The first file read is the CA certificate whose hash the joins use.
    #[test]
    fn the_pki_read_starts_with_the_ca_certificate() {
        let paths = super::pki_paths();
        assert_eq!(paths.first().map(String::as_str), Some(super::CA_CERT));
        assert_eq!(paths.len(), 1 + super::SHARED_PKI.len());
    }

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
