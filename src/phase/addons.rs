use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::addons::manifest;
use crate::artifacts::Cache;
use crate::spec::{IngressController, MetalLbMode};

pub struct Addons;

#[async_trait::async_trait]
impl Phase for Addons {
    fn name(&self) -> &'static str {
        "addons"
    }
    fn description(&self) -> &'static str {
        "MetalLB, ingress controller, Rook-Ceph by server-side apply"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let a = &ctx.cluster.cluster.spec.addons;
        if let Some(m) = &a.metallb {
            let mode = match m.mode {
                MetalLbMode::L2 => "L2",
                MetalLbMode::Bgp => "BGP (FRR)",
            };
            p.operator.push(Step::new(format!(
                "apply MetalLB {} in {mode} mode; wait for its CRDs and webhook",
                m.version.as_deref().unwrap_or("v0.16.1")
            )));
            for pool in &m.pools {
                p.operator.push(Step::new(format!(
                    "apply IPAddressPool `{}`: {}",
                    pool.name,
                    pool.addresses.join(", ")
                )));
            }
            match (m.mode, &m.bgp) {
                (MetalLbMode::Bgp, Some(b)) => {
                    for peer in &b.peers {
                        p.operator.push(Step::new(format!(
                            "apply BGPPeer {} (ASN {}, local ASN {}) and a BGPAdvertisement",
                            peer.address, peer.asn, b.my_asn
                        )));
                    }
                }
                _ => p
                    .operator
                    .push(Step::new("apply an L2Advertisement for every pool")),
            }
        }
        if let Some(i) = &a.ingress {
            let (name, version) = match i.controller {
                IngressController::Contour => ("Contour", "v1.33.6"),
                IngressController::IngressNginx => ("ingress-nginx (legacy)", "controller-v1.15.1"),
            };
            p.operator.push(Step::new(format!(
                "apply {name} {} exposed by a LoadBalancer Service{}",
                i.version.as_deref().unwrap_or(version),
                i.pool
                    .as_ref()
                    .map(|pool| format!(" from pool `{pool}`"))
                    .unwrap_or_default()
            )));
        }
        if let Some(r) = &a.rook_ceph {
            let nodes = if r.nodes.is_empty() {
                format!(
                    "every node, devices matching `{}`",
                    r.device_filter.as_deref().unwrap_or("")
                )
            } else {
                r.nodes
                    .iter()
                    .map(|n| format!("{} [{}]", n.name, n.devices.join(",")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            p.operator.push(Step::new(format!(
                "apply Rook-Ceph {} (CRDs, common, operator) and a CephCluster with {} mons on {nodes}",
                r.version.as_deref().unwrap_or("v1.20.6"),
                r.mon_count
            )));
        }
        if p.operator.is_empty() {
            p.operator.push(Step::new("no addons configured"));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let err = |source| PhaseError::Addons {
            phase: phase.into(),
            source,
        };
        let mut bundles = manifest::load(ctx.cluster, &Cache::default_location())
            .await
            .map_err(err)?;
        let doc = ctx.state.get().await;
        if bundles.is_empty() && doc.addons.is_empty() {
            return Ok(());
        }
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
        for b in &bundles {
            for n in &b.notes {
                ctx.note(format!("note: {}: {n}", b.addon));
            }
        }
        let outcomes = engine
            .apply(&bundles, &doc.addons, ctx.state, &|line| {
                tracing::info!("{line}")
            })
            .await
            .map_err(err)?;
        for o in &outcomes {
            ctx.note(o.line());
        }
        let status = if ctx.addons.wait {
            engine.wait_ready(&bundles).await
        } else {
            engine.status(&bundles).await
        }
        .map_err(err)?;
        for s in &status {
            for l in s.lines() {
                ctx.note(l);
            }
        }
        if status.iter().any(|s| !s.ready) {
            ctx.note("addons are applied but not all ready yet: `kubeforge addons status` shows them; `apply --wait` waits".into());
        }
        Ok(())
    }
}
