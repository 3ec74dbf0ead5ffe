use super::exec::{self, HostError};
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::{kubectl, ready_nodes};
use std::time::{Duration, Instant};

pub struct WaitReady;

const READY_WAIT: Duration = Duration::from_secs(300);
/// How long kube-controller-manager may take to fill a new Service's Endpoints.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(30);

/// Whether the probe Service's Endpoints get an address within `limit`.
async fn endpoints_filled(
    t: &dyn crate::transport::Transport,
    host: &str,
    ctx: &ApplyContext<'_>,
    limit: Duration,
) -> Result<bool, HostError> {
    let start = Instant::now();
    loop {
        let eps = crate::kube::probe_endpoints(t, host, ctx.secrets).await?;
        if !eps.is_empty() {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Gate: kube-controller-manager fills a new Service's Endpoints. After etcd members are
/// added, its watches can stay dead (seen on this test bed): Services then never get
/// Endpoints although every node is Ready. Caught here, and repaired by restarting it.
pub(super) async fn endpoints_gate(ctx: &ApplyContext<'_>, phase: &str) -> Result<(), PhaseError> {
    let Some((first, s)) = ctx.first_control_plane(phase).await? else {
        return Ok(());
    };
    let err = |e: HostError| PhaseError::host(phase, e);
    let image = crate::render::views::Profile::of(ctx.cluster).sandbox_image;
    let manifest = crate::kube::endpoints_probe_manifest(&image);
    exec::run(
        s.as_ref(),
        &first.name,
        &format!(
            "{} apply -f - <<'KUBEFORGE_EOF'\n{manifest}\nKUBEFORGE_EOF",
            kubectl()
        ),
        ctx.secrets,
        false,
    )
    .await
    .map_err(err)?;
    let mut ok = endpoints_filled(s.as_ref(), &first.name, ctx, ENDPOINTS_WAIT)
        .await
        .map_err(err)?;
    if !ok {
        let cps: Vec<String> = ctx
            .cluster
            .topology
            .control_planes()
            .iter()
            .map(|h| h.name.clone())
            .collect();
        ctx.note(format!(
            "a new Service got no Endpoints within {}s: restarting kube-controller-manager on {}",
            ENDPOINTS_WAIT.as_secs(),
            cps.join(", ")
        ));
        for h in ctx.cluster.topology.control_planes() {
            let hs = exec::session(ctx.rt, h).await.map_err(err)?;
            // kubelet starts the static pod's container again.
            exec::run(
                hs.as_ref(),
                &h.name,
                "pkill -f '^kube-controller-manager ' || true",
                ctx.secrets,
                false,
            )
            .await
            .map_err(err)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        ok = endpoints_filled(s.as_ref(), &first.name, ctx, Duration::from_secs(120))
            .await
            .map_err(err)?;
    }
    let result = if ok {
        watchers_gate(ctx, phase, &first.name, s.as_ref()).await
    } else {
        Err(PhaseError::Gate {
            phase: phase.to_string(),
            message: format!(
                "every node is Ready, but a new Service gets no Endpoints even after kube-controller-manager was restarted: Services will not route (see `kubectl -n kube-system logs` of kube-controller-manager on {})",
                first.name
            ),
        })
    };
    exec::run(
        s.as_ref(),
        &first.name,
        &format!(
            "{k} -n kube-system delete service {p} --ignore-not-found --wait=false && {k} -n kube-system delete pod {p} --ignore-not-found --wait=false",
            k = kubectl(),
            p = crate::kube::PROBE
        ),
        ctx.secrets,
        false,
    )
    .await
    .map_err(err)?;
    result
}

/// How long a kube-apiserver's watch cache may lag behind etcd before it counts as stuck.
const CACHE_WAIT: Duration = Duration::from_secs(15);
/// How long kube-proxy may take to program a new Service.
const PROXY_WAIT: Duration = Duration::from_secs(20);
/// How long a restarted kube-apiserver may take to answer /readyz.
const RESTART_WAIT: Duration = Duration::from_secs(180);

/// Poll `check` every 2 s until it says yes or `limit` passes.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Result<bool, HostError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, HostError>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Gate: every kube-apiserver's watch cache and every node's kube-proxy see the probe
/// Service whose Endpoints etcd holds. After etcd member adds the first apiserver's
/// watch on etcd can stay stuck (kubernetes/kubernetes#97294, seen on this test bed):
/// every client watching through it — kube-proxy, kubelets, controllers — then misses
/// new objects, and a Service does not route on the nodes it serves. A stale apiserver
/// is restarted (one at a time, /readyz before the next); a kube-proxy that still has
/// no rule gets its Pod replaced.
async fn watchers_gate(
    ctx: &ApplyContext<'_>,
    phase: &str,
    first: &str,
    s: &dyn crate::transport::Transport,
) -> Result<(), PhaseError> {
    let gate = |message: String| PhaseError::Gate {
        phase: phase.to_string(),
        message,
    };
    let port = ctx.cluster.cluster.spec.networking.api_server_port;
    for h in ctx.cluster.topology.control_planes() {
        let err = |e: HostError| PhaseError::host(phase, e);
        let hs = exec::session(ctx.rt, h).await.map_err(err)?;
        let api = std::net::SocketAddr::new(h.internal_address, port).to_string();
        let minor = ctx.cluster.version().minor;
        let sees = || crate::kube::stale_caches(hs.as_ref(), &h.name, &api, minor, ctx.secrets);
        let start = Instant::now();
        let stale = loop {
            let stale = sees().await.map_err(err)?;
            if stale.is_empty() || start.elapsed() > CACHE_WAIT {
                break stale;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        if stale.is_empty() {
            continue;
        }
        ctx.note(format!(
            "kube-apiserver on {} serves stale watch caches ({}: a Service etcd has held for {}s is missing from them; kubernetes/kubernetes#97294): restarting it",
            h.name,
            stale.join(", "),
            CACHE_WAIT.as_secs()
        ));
        // Out of the load balancers first: a restarting apiserver drops the
        // connections it has.
        super::drain_from_lbs(ctx, h).await.map_err(gate)?;
        crate::kube::restart_apiserver(hs.as_ref(), &h.name, ctx.secrets)
            .await
            .map_err(err)?;
        crate::kube::wait_readyz(hs.as_ref(), &api, RESTART_WAIT)
            .await
            .map_err(|m| {
                gate(format!(
                    "kube-apiserver on {} after its restart: {m}",
                    h.name
                ))
            })?;
        super::back_into_lbs(ctx, h).await.map_err(gate)?;
        let fresh = || async { sees().await.map(|s| s.is_empty()) };
        if !within(Duration::from_secs(60), fresh).await.map_err(err)? {
            return Err(gate(format!(
                "kube-apiserver on {} still serves a stale watch cache after a restart: clients watching through it miss changes (see its log and its etcd member's health)",
                h.name
            )));
        }
    }

    let err = |e: HostError| PhaseError::host(phase, e);
    let ip = crate::kube::probe_cluster_ip(s, first, ctx.secrets)
        .await
        .map_err(err)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
        gate(format!(
            "the probe Service kube-system/{} has no ClusterIP (`{ip}`)",
            crate::kube::PROBE
        ))
    })?;
    let checks = ctx
        .cluster
        .topology
        .kubernetes_nodes()
        .into_iter()
        .map(|h| {
            let ip = &ip;
            async move {
                let err = |e: HostError| PhaseError::host(phase, e);
                let hs = exec::session(ctx.rt, h).await.map_err(err)?;
                let programmed =
                    || crate::kube::service_programmed(hs.as_ref(), &h.name, ip, ctx.secrets);
                if within(PROXY_WAIT, programmed).await.map_err(err)? {
                    return Ok(None);
                }
                Ok::<_, PhaseError>(Some(h))
            }
        });
    let late: Vec<_> = futures::future::try_join_all(checks)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    for h in &late {
        // What the Pod looked like, for the note (restarts, state): the evidence of why.
        let seen = exec::run(
            s,
            first,
            &format!(
                "{k} -n kube-system get pod -l k8s-app=kube-proxy --field-selector {sel} -o jsonpath='{{range .items[*]}}{{.metadata.name}} restarts={{.status.containerStatuses[0].restartCount}} state={{.status.containerStatuses[0].state}}{{end}}' 2>&1 || true; \
for p in $({k} -n kube-system get pod -l k8s-app=kube-proxy --field-selector {sel} -o name 2>/dev/null); do echo; {k} -n kube-system logs --tail=6 \"$p\" 2>&1 | cut -c1-300; done",
                k = kubectl(),
                sel = crate::transport::shell::quote(&format!("spec.nodeName={}", h.name))
            ),
            ctx.secrets,
            false,
        )
        .await
        .unwrap_or_default();
        let mut seen = seen.trim().lines();
        let status = seen.next().unwrap_or_default().trim().to_string();
        let log: Vec<&str> = seen.map(str::trim).filter(|l| !l.is_empty()).collect();
        ctx.note(format!(
            "kube-proxy did not program a new Service within {}s on {} ({status}): replacing its Pod there{}",
            PROXY_WAIT.as_secs(),
            h.name,
            if log.is_empty() {
                String::new()
            } else {
                format!("; its last log lines: {}", log.join(" | "))
            }
        ));
    }
    for h in &late {
        crate::kube::replace_kube_proxies(s, first, Some(&h.name), ctx.secrets, false)
            .await
            .map_err(err)?;
    }
    for h in late {
        let hs = exec::session(ctx.rt, h).await.map_err(err)?;
        let programmed = || crate::kube::service_programmed(hs.as_ref(), &h.name, &ip, ctx.secrets);
        if !within(Duration::from_secs(90), programmed)
            .await
            .map_err(err)?
        {
            return Err(gate(format!(
                "kube-proxy on {} does not program Services even after its Pod was replaced: Services will not route there (see `kubectl -n kube-system logs` of its kube-proxy Pod)",
                h.name
            )));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Phase for WaitReady {
    fn name(&self) -> &'static str {
        "wait-ready"
    }
    fn description(&self) -> &'static str {
        "wait until every node is Ready"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let n = ctx.cluster.topology.kubernetes_nodes().len();
        p.operator.push(Step::new(format!(
            "wait until {n} nodes report Ready through https://{}",
            ctx.cluster.topology.endpoint.address()
        )));
        p.operator.push(Step::new(format!(
            "gate: a probe Service (kube-system/{}) gets the Endpoints of its Pod within {}s \
(otherwise kube-controller-manager is restarted on each control-plane node, one at a time); every kube-apiserver's watch cache \
serves them within {}s (a stale one is restarted, /readyz before the next); kube-proxy on every node programs the Service within {}s \
(otherwise its Pod is replaced); the probe is deleted",
            crate::kube::PROBE,
            ENDPOINTS_WAIT.as_secs(),
            CACHE_WAIT.as_secs(),
            PROXY_WAIT.as_secs()
        )));
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name().to_string();
        let Some((first, s)) = ctx.first_control_plane(&phase).await? else {
            return Ok(());
        };
        let err = |e: HostError| PhaseError::host(&phase, e);
        let want: Vec<String> = ctx
            .cluster
            .topology
            .kubernetes_nodes()
            .iter()
            .map(|h| h.name.clone())
            .collect();
        // Nothing changed in this run and the last one proved Services route: the nodes
        // the preview found Ready moments ago are not asked again.
        if let Some(f) = ctx.standing_facts() {
            if want
                .iter()
                .all(|n| f.node(n).is_some_and(|node| node.ready))
            {
                return Ok(());
            }
        }
        let start = Instant::now();
        loop {
            let out = exec::run(
                s.as_ref(),
                &first.name,
                &format!("{} get nodes -o json", kubectl()),
                ctx.secrets,
                false,
            )
            .await
            .map_err(err)?;
            let (ready, _) = ready_nodes(&out).map_err(|m| PhaseError::Gate {
                phase: phase.clone(),
                message: m,
            })?;
            let missing: Vec<&String> = want.iter().filter(|n| !ready.contains(n)).collect();
            if missing.is_empty() {
                if ctx.quiet {
                    // Nothing changed in this run and the last one proved Services
                    // route: no probe Pod for a no-op (`status` checks the cluster).
                    return Ok(());
                }
                return endpoints_gate(ctx, &phase).await;
            }
            if start.elapsed() > READY_WAIT {
                return Err(PhaseError::Gate {
                    phase,
                    message: format!(
                        "after {}s these nodes are not Ready: {}",
                        READY_WAIT.as_secs(),
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
