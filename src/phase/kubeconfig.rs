use super::exec;
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::ADMIN_CONF;

pub struct Kubeconfig;

#[async_trait::async_trait]
impl Phase for Kubeconfig {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }
    fn description(&self) -> &'static str {
        "store the admin kubeconfig (encrypted) in the state"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[],
                vec![Step::new(format!("read {ADMIN_CONF}"))],
            ));
        }
        p.operator.push(Step::new(format!(
            "store the admin kubeconfig (server https://{}) encrypted in the state; `kubeforge kubeconfig` prints it",
            ctx.cluster.topology.endpoint.address()
        )));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let Some((first, s)) = ctx.first_control_plane(phase).await? else {
            return Ok(());
        };
        // A run that changed nothing asked the file's digest in the facts' round trip:
        // no read when it is what the state holds (the secret itself never rides there).
        let known = ctx.state.get().await.secrets.admin_kubeconfig.clone();
        if ctx.files_unchanged_ahead(first, &[ADMIN_CONF], &[known.as_deref()]) {
            return Ok(());
        }
        let conf = exec::download(s.as_ref(), &first.name, ADMIN_CONF)
            .await
            .map_err(|e| PhaseError::host(phase, e))?;
        let conf = String::from_utf8_lossy(&conf).to_string();
        let unchanged =
            ctx.state.get().await.secrets.admin_kubeconfig.as_deref() == Some(conf.as_str());
        if unchanged {
            return Ok(());
        }
        ctx.state
            .update(|doc| doc.secrets.admin_kubeconfig = Some(conf))
            .await
            .map_err(|source| PhaseError::State {
                phase: phase.into(),
                source,
            })
    }

    fn ask_ahead(&self, c: &crate::spec::LoadedCluster) -> Vec<(String, String)> {
        crate::facts::init_node(&c.topology, None)
            .map(|first| (first.name.clone(), exec::digests_command(&[ADMIN_CONF])))
            .into_iter()
            .collect()
    }
}
