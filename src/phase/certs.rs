//! `certs-renew`: `kubeadm certs renew all` on each control plane, one at a time, out
//! of the load balancers meanwhile, and the static Pods restarted so that they use the
//! new certificates (kubelet does not restart them on a file change): etcd (healthy
//! again before the next step), kube-apiserver (/readyz), controller-manager and
//! scheduler. The node goes back into every load balancer (seen UP) before the next.

use super::exec::{self, HostError};
use super::{host_plan, new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::{self, etcd, Kubeadm};
use crate::spec::Host;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(180);

/// Which certificates a node has and when each expires (`name|openssl enddate` lines):
/// the PKI files, the client certificates embedded in kubeadm's kubeconfigs, and the
/// kubelet's rotated client certificate.
pub const CHECK_COMMAND: &str = "cd /etc/kubernetes/pki 2>/dev/null || exit 0; \
for f in *.crt etcd/*.crt; do [ -f \"$f\" ] && echo \"$f|$(openssl x509 -enddate -noout -in \"$f\" | cut -d= -f2)\"; done; \
for k in admin controller-manager scheduler; do c=/etc/kubernetes/$k.conf; \
d=$(sed -n 's/^ *client-certificate-data: *//p' $c 2>/dev/null | head -n1); \
[ -n \"$d\" ] && echo \"$k.conf|$(echo \"$d\" | base64 -d | openssl x509 -enddate -noout | cut -d= -f2)\"; done; \
k=/var/lib/kubelet/pki/kubelet-client-current.pem; \
[ -f $k ] && echo \"kubelet-client|$(openssl x509 -enddate -noout -in $k | cut -d= -f2)\"; true";

/// A date as `openssl x509 -enddate` prints it (`Nov 29 07:14:00 2027 GMT`).
pub fn parse_enddate(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%b %e %H:%M:%S %Y GMT")
        .ok()
        .map(|t| t.and_utc())
}

pub struct CertsRenew;

#[async_trait::async_trait]
impl Phase for CertsRenew {
    fn name(&self) -> &'static str {
        "certs-renew"
    }
    fn description(&self) -> &'static str {
        "renew the control-plane certificates one node at a time, out of the load balancers"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for h in &ctx.hosts {
            p.hosts.push(host_plan(
                ctx,
                h,
                &[],
                vec![
                    Step::new("out of the load balancers (HAProxy drain)"),
                    Step::new(Kubeadm::of(ctx.cluster).certs_renew()),
                    Step::new("restart etcd (healthy), kube-apiserver (/readyz), kube-controller-manager, kube-scheduler"),
                    Step::new("back into the load balancers (UP)"),
                ],
            ));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let topo = &ctx.cluster.topology;
        let hosts: Vec<&Host> = plan
            .hosts
            .iter()
            .filter_map(|hp| topo.host(&hp.host))
            .collect();
        for h in hosts {
            let start = Instant::now();
            renew_one(ctx, h)
                .await
                .map_err(|message| PhaseError::Gate {
                    phase: phase.to_string(),
                    message: format!("{}: {message}", h.name),
                })?;
            ctx.note(format!(
                "{}: certificates renewed, control plane restarted, back in the load balancers in {:.0}s",
                h.name,
                start.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

async fn renew_one(ctx: &ApplyContext<'_>, h: &Host) -> Result<(), String> {
    let show = |e: HostError| e.to_string();
    let t = exec::session(ctx.rt, h).await.map_err(show)?;
    super::drain_from_lbs(ctx, h).await?;
    exec::run(
        t.as_ref(),
        &h.name,
        &Kubeadm::of(ctx.cluster).certs_renew(),
        ctx.secrets,
        ctx.rt.verbose,
    )
    .await
    .map_err(show)?;
    // kubelet does not restart static Pods on a file change: their processes are
    // stopped and it starts them again.
    let restart = |pattern: &'static str| {
        let t = t.clone();
        async move {
            kube::restart_static_pod(t.as_ref(), &h.name, pattern, 60, ctx.secrets)
                .await
                .map_err(show)
        }
    };
    restart("^etcd ").await?;
    let url = format!(
        "https://{}",
        std::net::SocketAddr::new(h.internal_address, 2379)
    );
    etcd::wait_healthy(t.as_ref(), &url, WAIT)
        .await
        .map_err(|e| format!("etcd is not healthy after its restart: {e}"))?;
    kube::restart_apiserver(t.as_ref(), &h.name, ctx.secrets)
        .await
        .map_err(show)?;
    let port = ctx.cluster.cluster.spec.networking.api_server_port;
    let own = std::net::SocketAddr::new(h.internal_address, port).to_string();
    kube::wait_readyz(t.as_ref(), &own, WAIT).await?;
    restart("^kube-controller-manager ").await?;
    restart("^kube-scheduler ").await?;
    super::back_into_lbs(ctx, h).await?;
    Ok(())
}
