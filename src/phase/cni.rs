use super::{
    exec, host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan,
    PlanContext, Step,
};
use crate::addons::{catalogue, manifest, AddonId};
use crate::artifacts::Cache;
use crate::render::views::{pod_cidr, PODNET_UNIT, VXLAN_DEVICE, VXLAN_PORT};
use crate::render::FileGroup;
use crate::spec::Cni as CniChoice;

pub struct Cni;

#[async_trait::async_trait]
impl Phase for Cni {
    fn name(&self) -> &'static str {
        "cni"
    }
    fn description(&self) -> &'static str {
        "pod network: one /24 per node on a bridge, a VXLAN overlay between nodes"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        if c.cluster.spec.networking.cni == CniChoice::None {
            p.operator.push(Step::new(
                "no CNI (networking.cni: none): the operator installs one",
            ));
            return p;
        }
        if let Some(id) = upstream_cni(c) {
            let version = catalogue::select(id, None, &c.version())
                .map(|r| r.version.to_string())
                .unwrap_or_else(|why| why);
            p.operator.push(Step::new(format!(
                "apply {} {version} through the API with pod network {} (the nodes need its images)",
                id.title(),
                c.cluster.spec.networking.pod_subnet
            )));
            return p;
        }
        for h in &ctx.hosts {
            // The script, its unit and the CNI config it fills in: a change to any of
            // them re-runs the script (which is idempotent).
            let files = ctx.files_for(&h.name, FileGroup::Cni);
            let mut cmd = restart_step(
                "podnet",
                &format!(
                    "systemctl daemon-reload && systemctl enable {PODNET_UNIT} && systemctl restart {PODNET_UNIT}"
                ),
                &files,
                None,
            );
            if let Some(own) = pod_cidr(c, h) {
                cmd.action = format!(
                    "{}  # pods of {} use {own}; {VXLAN_DEVICE} (UDP {VXLAN_PORT}) to the other nodes' /24s",
                    cmd.action, h.name
                );
            }
            let cmds = vec![cmd];
            p.hosts.push(host_plan(ctx, h, &[FileGroup::Cni], cmds));
        }
        p
    }

    /// The built-in network: the hosts' files and unit (the default). Flannel or Calico:
    /// their upstream manifest through the API (the addons engine; the addons phase
    /// applies it again, unchanged, with the other addons).
    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let Some(id) = upstream_cni(ctx.cluster) else {
            ctx.hosts(plan, &exec::NoSpecial).await?;
            // Each node keeps the /24 it was given now, whatever joins or leaves later.
            let given: Vec<(String, String)> = crate::render::views::pod_cidrs(ctx.cluster)
                .into_iter()
                .map(|(h, c)| (h.name.clone(), c.to_string()))
                .collect();
            return ctx
                .state
                .update(|doc| doc.pod_cidrs.extend(given))
                .await
                .map_err(|source| PhaseError::State {
                    phase: self.name().into(),
                    source,
                });
        };
        let phase = self.name();
        let err = |source| PhaseError::Addons {
            phase: phase.into(),
            source,
        };
        let mut bundles = manifest::load(ctx.cluster, &Cache::default_location())
            .await
            .map_err(err)?;
        bundles.retain(|b| b.addon == id);
        let doc = ctx.state.get().await;
        let kubeconfig = doc
            .secrets
            .admin_kubeconfig
            .clone()
            .ok_or_else(|| PhaseError::Gate {
                phase: phase.into(),
                message:
                    "the state has no admin kubeconfig yet: the kubeconfig phase must run first"
                        .into(),
            })?;
        let Some((host, session)) = ctx.first_control_plane(phase).await? else {
            return Err(PhaseError::Gate {
                phase: phase.into(),
                message: "the cluster has no control-plane node to reach the API through".into(),
            });
        };
        let engine = ctx
            .rt
            .api
            .engine(ctx.cluster, host, session, &kubeconfig, ctx.addons.clone())
            .await
            .map_err(err)?;
        engine.adapt(&mut bundles);
        // Only this addon's record: the others are the addons phase's to prune.
        let mut recorded = doc.addons.clone();
        recorded.retain(|k, _| *k == id.as_str());
        let outcomes = engine
            .apply(&bundles, &recorded, ctx.state, &|line| {
                tracing::info!("{line}")
            })
            .await
            .map_err(err)?;
        for o in &outcomes {
            ctx.note(o.line());
        }
        Ok(())
    }
}

/// The CNI that comes from an upstream manifest, if the cluster file names one.
fn upstream_cni(c: &crate::spec::LoadedCluster) -> Option<AddonId> {
    match c.cluster.spec.networking.cni {
        CniChoice::Flannel => Some(AddonId::Flannel),
        CniChoice::Calico => Some(AddonId::Calico),
        CniChoice::Bridge | CniChoice::None => None,
    }
}
