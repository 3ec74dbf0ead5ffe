use super::{host_plan, new_plan, Phase, PhasePlan, PlanContext, Step};
use crate::render::views::Profile;
use crate::render::FileGroup;

pub struct InitControlPlane;

/// `--experimental-patches` (1.20-1.21) or `--patches` (1.22+) when patches are rendered.
pub fn patches_flag(ctx: &PlanContext<'_>) -> String {
    let c = ctx.cluster;
    if Profile::of(c).etcd_ephemeral_storage_patch {
        let flag = if c.version().minor < 22 {
            "--experimental-patches"
        } else {
            "--patches"
        };
        format!(" {flag} /etc/kubeforge/patches")
    } else {
        String::new()
    }
}

impl Phase for InitControlPlane {
    fn name(&self) -> &'static str {
        "init-control-plane"
    }
    fn description(&self) -> &'static str {
        "kubeadm init on the first control-plane node"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let patches = patches_flag(ctx);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[FileGroup::Kubeadm],
                vec![
                    Step::new(format!(
                        "kubeadm init --config /etc/kubeforge/kubeadm-init.yaml --upload-certs{patches}"
                    ))
                    .unless("/etc/kubernetes/admin.conf exists and the apiserver answers"),
                    Step::new(
                        "openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | openssl pkey -pubin -outform der | sha256sum",
                    ),
                ],
            ));
        }
        p.operator.push(Step::new(format!(
            "record the CA public key hash in the state; wait for https://{}/readyz",
            ctx.cluster.topology.endpoint.address()
        )));
        p
    }
}
