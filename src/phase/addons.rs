use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::addons::{catalogue, manifest, AddonId};
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
        let k8s = ctx.cluster.version();
        // The release the compatibility matrix gives (validated on load).
        let release = |id: AddonId, pinned: &Option<String>| {
            catalogue::select(id, pinned.as_deref(), &k8s)
                .map(|c| c.version.to_string())
                .unwrap_or_else(|why| why)
        };
        if let Some(m) = &a.metallb {
            let mode = match m.mode {
                MetalLbMode::L2 => "L2",
                MetalLbMode::Bgp => "BGP (FRR)",
            };
            p.operator.push(Step::new(format!(
                "apply MetalLB {} in {mode} mode; wait for its CRDs and webhook",
                release(AddonId::Metallb, &m.version)
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
            let (name, id) = match i.controller {
                IngressController::Contour => ("Contour", AddonId::Contour),
                IngressController::IngressNginx => {
                    ("ingress-nginx (legacy)", AddonId::IngressNginx)
                }
            };
            p.operator.push(Step::new(format!(
                "apply {name} {} exposed by a LoadBalancer Service{}",
                release(id, &i.version),
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
                "apply Rook-Ceph {} ({}) and a CephCluster with {} mons on {nodes}",
                release(AddonId::RookCeph, &r.version),
                catalogue::select(AddonId::RookCeph, r.version.as_deref(), &k8s)
                    .ok()
                    .and_then(|c| catalogue::release(
                        AddonId::RookCeph,
                        c.version,
                        catalogue::MetallbFlavour::Native
                    ))
                    .map(|rel| rel
                        .files
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
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
