//! The rolling upgrade (`kubeforge upgrade`, the upgrade playbook): an etcd snapshot
//! into the state store first, then the control-plane nodes strictly one at a time, then
//! the workers in batches. The cluster here is the *target* (its kubernetesVersion is the
//! version upgraded to).
//!
//! One control-plane node: its apiserver is drained out of every HAProxy through the
//! runtime API (no reload), the node is drained (PodDisruptionBudgets respected, bounded
//! time), the target's kubeadm, images and crictl are installed, `kubeadm upgrade apply`
//! (the first node) or `kubeadm upgrade node` (the others) runs detached, then kubelet and
//! kubectl, kubelet restarted; gates: the node's apiserver /readyz, its etcd member
//! healthy, the Node Ready at the target version; kubeadm's backup copies are removed,
//! the server is put back into every HAProxy (and seen UP), the node uncordoned.
//!
//! A node is done when its Node reports the target version, is schedulable and (control
//! planes) its apiserver manifest carries the target's image tag: a re-run skips it, and a
//! killed run resumes at the first node that is not done (every step is idempotent; the
//! detached kubeadm leaves a per-version marker).

use super::exec::{self, HostError};
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::artifacts::LocalArtifact;
use crate::kube::{self, etcd, kubectl, lb, Kubeadm};
use crate::spec::{Host, LoadedCluster};
use crate::transport::shell::quote;
use crate::transport::Transport;
use std::time::{Duration, Instant};

/// How long a node may take to become Ready at the new version after its kubelet restart.
const NODE_WAIT: Duration = Duration::from_secs(300);
/// How long an upgraded apiserver may take to answer /readyz.
const READYZ_WAIT: Duration = Duration::from_secs(300);

/// What the upgrade run is told on the command line (`--max-unavailable`,
/// `--drain-timeout`).
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Workers upgraded at once.
    pub max_unavailable: usize,
    /// How long `kubectl drain` may wait for evictions (PodDisruptionBudgets).
    pub drain_timeout: Duration,
}

impl Default for UpgradeOptions {
    fn default() -> Self {
        UpgradeOptions {
            max_unavailable: 1,
            drain_timeout: Duration::from_secs(300),
        }
    }
}

/// The version upgraded to, as Kubernetes writes it (`v1.20.2`), and its image tag.
pub fn target(c: &LoadedCluster) -> (String, String) {
    let v = c.version();
    (format!("v{v}"), crate::artifacts::catalogue::image_tag(&v))
}

/// The marker the detached kubeadm upgrade of this version leaves on a node.
fn upgrade_marker(tag: &str) -> String {
    format!("{}/kubeadm-upgrade-{tag}", super::APPLIED_DIR)
}

/// The image tag in a static pod manifest's first `image:` line.
pub fn manifest_tag(manifest: &str) -> Option<String> {
    let image = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("image:"))?
        .trim()
        .trim_matches('"');
    let (_, tag) = image.rsplit_once(':')?;
    (!tag.contains('/')).then(|| tag.to_string())
}

/// Image tags of the node's control-plane static pods (apiserver, controller-manager,
/// scheduler); None where a manifest is missing.
async fn control_plane_tags(
    t: &dyn Transport,
    host: &str,
    ctx: &ApplyContext<'_>,
) -> Result<Vec<Option<String>>, HostError> {
    let mut tags = Vec::new();
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let out = exec::run(
            t,
            host,
            &format!("cat {}/{c}.yaml 2>/dev/null || true", kube::MANIFESTS),
            ctx.secrets,
            false,
        )
        .await?;
        tags.push(manifest_tag(&out));
    }
    Ok(tags)
}

/// The Nodes as the API shows them now.
async fn nodes(
    ctx: &ApplyContext<'_>,
    first: &str,
    t: &dyn Transport,
) -> Result<Vec<kube::NodeInfo>, HostError> {
    let out = exec::run(
        t,
        first,
        &format!("{} get nodes -o json", kubectl()),
        ctx.secrets,
        false,
    )
    .await?;
    kube::parse_nodes(&out).map_err(|message| HostError::Other {
        host: first.to_string(),
        message,
    })
}

/// Whether `node` is at the target version and schedulable (per the API).
fn node_done(nodes: &[kube::NodeInfo], node: &str, version: &str) -> bool {
    nodes
        .iter()
        .any(|n| n.name == node && n.kubelet_version == version && !n.unschedulable)
}

// ---------------------------------------------------------------------------------------
// etcd snapshot

pub struct EtcdSnapshot;

/// Name of the snapshot taken before upgrading to `tag` at `now`.
pub fn snapshot_name(tag: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("pre-upgrade-{tag}-{}", now.format("%Y%m%dT%H%M%SZ"))
}

#[async_trait::async_trait]
impl Phase for EtcdSnapshot {
    fn name(&self) -> &'static str {
        "etcd-snapshot"
    }
    fn description(&self) -> &'static str {
        "an etcd snapshot into the state store before anything changes"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let (_, tag) = target(ctx.cluster);
        if let Some(h) = ctx.hosts.first() {
            p.operator.push(Step::new(format!(
                "take an etcd snapshot from the member on {} (one member, its local client port), check its sha256, \
store it encrypted in the state store as snapshots/{}.age (a resumed upgrade keeps the one taken when it began)",
                h.name,
                snapshot_name(&tag, chrono::Utc::now())
            )));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if plan.operator.is_empty() {
            return Ok(());
        }
        let phase = self.name();
        let Some((first, s)) = ctx.first_control_plane(phase).await? else {
            return Ok(());
        };
        let (_, tag) = target(ctx.cluster);
        // The version it runs now (the cluster's version is the target here).
        let running = ctx
            .rt
            .facts()
            .and_then(|f| f.host(&first.name).and_then(|h| h.apiserver_tag.clone()))
            .unwrap_or_default();
        // A resumed upgrade keeps the snapshot taken when it began: that one holds the
        // cluster as it was before anything changed.
        let prefix = format!("pre-upgrade-{tag}-");
        let state_err = |source| PhaseError::State {
            phase: phase.to_string(),
            source,
        };
        let taken = ctx.state.store.snapshots().await.map_err(state_err)?;
        if let Some(earlier) = taken.iter().find(|i| i.name.starts_with(&prefix)) {
            ctx.note(format!(
                "etcd snapshot {} (taken when this upgrade began) is kept; no new one",
                earlier.name
            ));
            return Ok(());
        }
        let started = Instant::now();
        let from = first.name.clone();
        let meta = crate::backup::take(
            phase,
            s.as_ref(),
            &from,
            &ctx.state.store,
            ctx.secrets,
            &format!("pre-upgrade-{tag}"),
            "pre-upgrade",
            &running,
        )
        .await?;
        ctx.note(format!(
            "etcd snapshot {}: {} bytes from {from} (revision {}, {} keys, sha256 {}), verified and encrypted in the state store, {:.1}s",
            meta.name,
            meta.db_bytes,
            meta.revision,
            meta.total_keys,
            &meta.sha256[..16.min(meta.sha256.len())],
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// artifacts first, everywhere

pub struct UpgradePrepare;

/// What a node gets before any node is upgraded: the target's kubeadm (and crictl), and
/// the images it will run — every control-plane image on control planes; kube-proxy and
/// the sandbox on workers, because `kubeadm upgrade apply` rolls the kube-proxy
/// DaemonSet to the new image on every node at once. kubelet and kubectl wait for the
/// node's turn.
fn prepare_artifacts(fetched: &[LocalArtifact], control_plane: bool) -> Vec<LocalArtifact> {
    use crate::artifacts::ArtifactKind;
    fetched
        .iter()
        .filter(|a| a.name != "kubelet" && a.name != "kubectl")
        .filter(|a| {
            control_plane
                || a.kind != ArtifactKind::Image
                || a.name == "kube-proxy"
                || a.name == "pause"
        })
        .cloned()
        .collect()
}

#[async_trait::async_trait]
impl Phase for UpgradePrepare {
    fn name(&self) -> &'static str {
        "upgrade-prepare"
    }
    fn description(&self) -> &'static str {
        "the target's kubeadm and images on every node, before any node changes"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let (version, _) = target(ctx.cluster);
        for h in &ctx.hosts {
            let what = if h.has(crate::spec::Role::ControlPlane) {
                "kubeadm, crictl and the control-plane images"
            } else {
                "kubeadm, crictl and the kube-proxy and sandbox images"
            };
            p.hosts.push(super::HostPlan {
                host: h.name.clone(),
                files: Vec::new(),
                commands: vec![Step::new(format!(
                    "install {what} of {version} (sha256-verified; unchanged files are not sent again)"
                ))],
            });
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        if plan.hosts.is_empty() {
            return Ok(());
        }
        let fetched = fetch(ctx, phase).await?;
        let runs = plan
            .hosts
            .iter()
            .filter_map(|hp| ctx.cluster.topology.host(&hp.host))
            .map(|h| {
                let files = prepare_artifacts(&fetched, h.has(crate::spec::Role::ControlPlane));
                async move {
                    let t = exec::session(ctx.rt, h).await?;
                    super::binaries::install(t.as_ref(), h, &files).await
                }
            });
        let results = futures::future::join_all(runs).await;
        let errors: Vec<HostError> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PhaseError::Hosts {
                phase: phase.to_string(),
                errors,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// control plane

pub struct UpgradeControlPlane;

/// The plan of one node's upgrade, as shown.
fn node_steps(ctx: &PlanContext<'_>, h: &Host, first: bool, control_plane: bool) -> Vec<Step> {
    let (version, tag) = target(ctx.cluster);
    let kubeadm = Kubeadm::of(ctx.cluster);
    let mut steps = Vec::new();
    if control_plane && !ctx.cluster.topology.lb_hosts().is_empty() {
        steps.push(Step::new(format!(
            "drain server {}/{} on every HAProxy (runtime API: no new connections, no reload)",
            lb::BACKEND,
            h.name
        )));
    }
    steps.push(Step::new(format!(
        "kubectl drain {} --ignore-daemonsets --delete-emptydir-data (PodDisruptionBudgets respected)",
        h.name
    )));
    let cmd = if first {
        kubeadm.upgrade_apply(&version)
    } else {
        kubeadm.upgrade_node(control_plane)
    };
    steps.push(
        Step::new(format!("{cmd} (detached)")).unless(format!("{} exists", upgrade_marker(&tag))),
    );
    steps.push(Step::new(format!(
        "install kubelet and kubectl {version}, restart kubelet"
    )));
    let mut gates = vec![format!("the Node is Ready at {version}")];
    if control_plane {
        gates.insert(0, "its apiserver's /readyz answers ok".to_string());
        gates.insert(1, "its etcd member is healthy".to_string());
        gates.push(
            "a probe Service gets Endpoints, every apiserver's watch caches and every kube-proxy see it"
                .to_string(),
        );
    }
    steps.push(Step::new(format!("gates: {}", gates.join(", "))));
    if control_plane {
        steps.push(Step::new(
            "remove kubeadm's backup copies in /etc/kubernetes/tmp (the etcd data copy of each upgrade)",
        ));
        if !ctx.cluster.topology.lb_hosts().is_empty() {
            steps.push(Step::new(format!(
                "put server {}/{} back on every HAProxy and wait until each shows it UP",
                lb::BACKEND,
                h.name
            )));
        }
    }
    steps.push(Step::new(format!("kubectl uncordon {}", h.name)));
    steps
}

/// Whether the facts say `h` is done (its Node at the target, schedulable).
fn planned_done(ctx: &PlanContext<'_>, h: &Host) -> bool {
    let (version, _) = target(ctx.cluster);
    ctx.facts
        .and_then(|f| f.nodes.as_deref())
        .map(|n| node_done(n, &h.name, &version))
        .unwrap_or(false)
}

fn plan_nodes(ctx: &PlanContext<'_>, p: &mut PhasePlan, control_plane: bool) {
    let (version, _) = target(ctx.cluster);
    let first = ctx.facts.and_then(|f| {
        crate::facts::init_node(&ctx.cluster.topology, Some(f)).map(|h| h.name.clone())
    });
    let first = first.or_else(|| {
        ctx.cluster
            .topology
            .first_control_plane()
            .map(|h| h.name.clone())
    });
    for h in &ctx.hosts {
        let steps = if planned_done(ctx, h) {
            vec![
                Step::new(format!("nothing: the Node is at {version} and schedulable"))
                    .unless("done"),
            ]
        } else {
            node_steps(
                ctx,
                h,
                control_plane && first.as_deref() == Some(h.name.as_str()),
                control_plane,
            )
        };
        p.hosts.push(super::HostPlan {
            host: h.name.clone(),
            files: Vec::new(),
            commands: steps,
        });
    }
}

/// The nodes of this phase in the order they are upgraded: the init node first.
fn ordered<'a>(ctx: &ApplyContext<'a>, plan: &PhasePlan) -> Vec<&'a Host> {
    let facts = ctx.rt.facts();
    let first =
        crate::facts::init_node(&ctx.cluster.topology, facts.as_deref()).map(|h| h.name.clone());
    let mut hosts: Vec<&Host> = plan
        .hosts
        .iter()
        .filter_map(|hp| ctx.cluster.topology.host(&hp.host))
        .collect();
    hosts.sort_by_key(|h| Some(&h.name) != first.as_ref());
    hosts
}

#[async_trait::async_trait]
impl Phase for UpgradeControlPlane {
    fn name(&self) -> &'static str {
        "upgrade-control-plane"
    }
    fn description(&self) -> &'static str {
        "upgrade the control-plane nodes one at a time, each out of the load balancers and gated"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        plan_nodes(ctx, &mut p, true);
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let hosts = ordered(ctx, plan);
        if hosts.is_empty() {
            return Ok(());
        }
        let fetched = fetch(ctx, phase).await?;
        let init = hosts[0].name.clone();
        for h in hosts {
            upgrade_node(ctx, phase, h, h.name == init, true, &fetched).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// workers

pub struct UpgradeWorkers;

#[async_trait::async_trait]
impl Phase for UpgradeWorkers {
    fn name(&self) -> &'static str {
        "upgrade-workers"
    }
    fn description(&self) -> &'static str {
        "upgrade the workers in batches of --max-unavailable, each drained and gated"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        plan_nodes(ctx, &mut p, false);
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let hosts = ordered(ctx, plan);
        if hosts.is_empty() {
            return Ok(());
        }
        let fetched = fetch(ctx, phase).await?;
        let batch = ctx.upgrade.max_unavailable.max(1);
        for chunk in hosts.chunks(batch) {
            let runs = chunk
                .iter()
                .map(|h| upgrade_node(ctx, phase, h, false, false, &fetched));
            // Every node of the batch runs to its end (none is left cordoned and
            // unreported because another one failed); then the failures stop the run.
            let mut errors: Vec<PhaseError> = futures::future::join_all(runs)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            match errors.len() {
                0 => {}
                1 => return Err(errors.remove(0)),
                _ => {
                    return Err(PhaseError::Gate {
                        phase: phase.to_string(),
                        message: errors
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    })
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// one node

async fn fetch(ctx: &ApplyContext<'_>, phase: &str) -> Result<Vec<LocalArtifact>, PhaseError> {
    super::binaries::fetch_with_crictl(ctx.cluster)
        .await
        .map_err(|source| PhaseError::Artifacts {
            phase: phase.to_string(),
            source,
        })
}

/// What is left undone on a node when its upgrade stops half-way, for the error.
#[derive(Default)]
struct Undone {
    cordoned: bool,
    drained_on: Vec<String>,
}

impl Undone {
    fn describe(&self, node: &str) -> String {
        let mut parts = Vec::new();
        if self.cordoned {
            parts.push(format!("{node} is cordoned (`kubectl uncordon {node}`)"));
        }
        if !self.drained_on.is_empty() {
            parts.push(format!(
                "its apiserver is drained on the HAProxy of {}",
                self.drained_on.join(", ")
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(
                "\n{}; run `kubeforge upgrade` again to resume at this node once the cause is fixed",
                parts.join("; ")
            )
        }
    }
}

/// Upgrade one node (see the module documentation). Skipped when it is done.
async fn upgrade_node(
    ctx: &ApplyContext<'_>,
    phase: &str,
    h: &Host,
    first: bool,
    control_plane: bool,
    fetched: &[LocalArtifact],
) -> Result<(), PhaseError> {
    let (version, tag) = target(ctx.cluster);
    let err = |e: HostError| PhaseError::host(phase, e);
    let Some((api_host, api)) = ctx.first_control_plane(phase).await? else {
        return Ok(());
    };
    let t = exec::session(ctx.rt, h).await.map_err(err)?;
    let now = nodes(ctx, &api_host.name, api.as_ref())
        .await
        .map_err(err)?;
    let tags_done = if control_plane {
        control_plane_tags(t.as_ref(), &h.name, ctx)
            .await
            .map_err(err)?
            .iter()
            .all(|x| x.as_deref() == Some(tag.as_str()))
    } else {
        true
    };
    if tags_done && node_done(&now, &h.name, &version) {
        ctx.note(format!("{}: already at {version}", h.name));
        return Ok(());
    }
    let started = Instant::now();
    let mut undone = Undone::default();
    let result = upgrade_steps(ctx, phase, h, first, control_plane, fetched, &mut undone).await;
    match result {
        Ok(times) => {
            ctx.note(format!(
                "{}: upgraded to {version} in {:.0}s ({times})",
                h.name,
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Err(e) => Err(PhaseError::Gate {
            phase: phase.to_string(),
            message: format!("{}: {e}{}", h.name, undone.describe(&h.name)),
        }),
    }
}

/// The steps of one node; returns the time each took, for the note.
async fn upgrade_steps(
    ctx: &ApplyContext<'_>,
    phase: &str,
    h: &Host,
    first: bool,
    control_plane: bool,
    fetched: &[LocalArtifact],
    undone: &mut Undone,
) -> Result<String, String> {
    let (version, tag) = target(ctx.cluster);
    let show = |e: HostError| e.to_string();
    let (api_host, api) = ctx
        .first_control_plane(phase)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no control-plane node")?;
    let t = exec::session(ctx.rt, h).await.map_err(show)?;
    let mut times = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |what: &str, times: &mut Vec<String>| {
        times.push(format!("{what} {:.0}s", clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let lbs: Vec<&Host> = if control_plane {
        ctx.cluster.topology.lb_hosts()
    } else {
        Vec::new()
    };

    // Out of the load balancers, then drained.
    for l in &lbs {
        let lt = exec::session(ctx.rt, l).await.map_err(show)?;
        lb::set_state(
            lt.as_ref(),
            &l.name,
            &h.name,
            lb::ServerState::Drain,
            ctx.secrets,
        )
        .await
        .map_err(show)?;
        undone.drained_on.push(l.name.clone());
    }
    undone.cordoned = true;
    if let Err(e) = drain(ctx, api.as_ref(), &h.name).await {
        // Nothing changed on the node yet: it goes back to how it was.
        back_in_service(ctx, &lbs, h, api_host, api.as_ref(), undone).await?;
        return Err(format!(
            "{e}; the node was uncordoned and left at its version"
        ));
    }
    lap("drain", &mut times);

    let kubeadm = Kubeadm::of(ctx.cluster);
    let cmd = if first {
        kubeadm.upgrade_apply(&version)
    } else {
        kubeadm.upgrade_node(control_plane)
    };
    exec::run(
        t.as_ref(),
        &h.name,
        &kube::kubeadm::detached("kubeforge-kubeadm-upgrade", &cmd, &upgrade_marker(&tag)),
        ctx.secrets,
        false,
    )
    .await
    .map_err(show)?;
    lap("kubeadm", &mut times);

    // kubelet and kubectl, then kubelet restarted on them.
    let after: Vec<LocalArtifact> = fetched
        .iter()
        .filter(|a| a.name == "kubelet" || a.name == "kubectl")
        .cloned()
        .collect();
    super::binaries::install(t.as_ref(), h, &after)
        .await
        .map_err(show)?;
    exec::run(
        t.as_ref(),
        &h.name,
        "systemctl daemon-reload && systemctl restart kubelet",
        ctx.secrets,
        false,
    )
    .await
    .map_err(show)?;

    // Gates.
    if control_plane {
        let port = ctx.cluster.cluster.spec.networking.api_server_port;
        let own = std::net::SocketAddr::new(h.internal_address, port).to_string();
        kube::wait_readyz(t.as_ref(), &own, READYZ_WAIT).await?;
        let url = format!(
            "https://{}",
            std::net::SocketAddr::new(h.internal_address, 2379)
        );
        etcd::wait_healthy(t.as_ref(), &url, READYZ_WAIT)
            .await
            .map_err(|e| format!("its etcd member ({url}) is not healthy: {e}"))?;
    }
    let start = Instant::now();
    loop {
        let now = nodes(ctx, &api_host.name, api.as_ref())
            .await
            .map_err(show)?;
        let n = now.iter().find(|n| n.name == h.name);
        if n.is_some_and(|n| n.ready && n.kubelet_version == version) {
            break;
        }
        if start.elapsed() > NODE_WAIT {
            return Err(match n {
                Some(n) => format!(
                    "the Node is not Ready at {version} after {}s (ready: {}, kubelet {})",
                    NODE_WAIT.as_secs(),
                    n.ready,
                    n.kubelet_version
                ),
                None => "the Node is gone from the API".to_string(),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if control_plane {
        // A Service gets Endpoints, every apiserver's watch caches see it and every
        // kube-proxy programs it (the bootstrap's gate), with this node upgraded.
        super::wait_ready::endpoints_gate(ctx, phase)
            .await
            .map_err(|e| e.to_string())?;
    }
    lap("gates", &mut times);

    if control_plane {
        // kubeadm copies the whole etcd data directory on every upgrade and never
        // removes it (kubernetes#125357).
        exec::run(
            t.as_ref(),
            &h.name,
            "rm -rf /etc/kubernetes/tmp/kubeadm-backup-etcd-* /etc/kubernetes/tmp/kubeadm-backup-manifests-*",
            ctx.secrets,
            false,
        )
        .await
        .map_err(show)?;
    }

    back_in_service(ctx, &lbs, h, api_host, api.as_ref(), undone).await?;
    lap("back", &mut times);
    Ok(times.join(", "))
}

/// Back into every load balancer (each sees it UP), then schedulable.
async fn back_in_service(
    ctx: &ApplyContext<'_>,
    lbs: &[&Host],
    h: &Host,
    api_host: &Host,
    api: &dyn Transport,
    undone: &mut Undone,
) -> Result<(), String> {
    let show = |e: HostError| e.to_string();
    // Control planes only: workers are not in the load balancers.
    if !lbs.is_empty() {
        super::back_into_lbs(ctx, h).await?;
        undone.drained_on.clear();
    }
    exec::run(
        api,
        &api_host.name,
        &format!("{} uncordon {}", kubectl(), quote(&h.name)),
        ctx.secrets,
        false,
    )
    .await
    .map_err(show)?;
    undone.cordoned = false;
    Ok(())
}

/// `kubectl drain`, bounded; a PodDisruptionBudget that blocks it is named, and the node
/// is left cordoned for the caller to report.
pub(crate) async fn drain(
    ctx: &ApplyContext<'_>,
    api: &dyn Transport,
    node: &str,
) -> Result<(), String> {
    let secs = ctx.upgrade.drain_timeout.as_secs().max(1);
    let cmd = format!(
        "{} drain {} --ignore-daemonsets --delete-emptydir-data --force --timeout={secs}s 2>&1",
        kubectl(),
        quote(node)
    );
    let out = api.exec(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(());
    }
    Err(drain_failure(&out.stdout, secs))
}

/// Why a drain failed, naming the pods a PodDisruptionBudget protects.
pub fn drain_failure(output: &str, secs: u64) -> String {
    // kubectl: error when evicting pods/"web-1" -n "default" (will retry after 5s):
    // Cannot evict pod as it would violate the pod's disruption budget.
    let quoted_after = |l: &str, key: &str| -> Option<String> {
        let rest = l.split(key).nth(1)?;
        rest.split('"').next().map(str::to_string)
    };
    let blocked: std::collections::BTreeSet<String> = output
        .lines()
        .filter(|l| l.contains("disruption budget"))
        .filter_map(|l| {
            let pod = quoted_after(l, "pods/\"")?;
            Some(match quoted_after(l, "-n \"") {
                Some(ns) => format!("{ns}/{pod}"),
                None => pod,
            })
        })
        .collect();
    if !blocked.is_empty() {
        return format!(
            "drain did not finish within {secs}s: a PodDisruptionBudget forbids evicting {} \
(`kubectl get pdb -A` shows which budget; scale the workload up or relax the budget, or raise --drain-timeout)",
            blocked.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let tail: Vec<&str> = output.lines().rev().take(5).collect();
    format!(
        "drain failed: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_tag_is_read_from_a_manifest() {
        let m = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    image: k8s.gcr.io/kube-apiserver:v1.20.2_kf.1\n    imagePullPolicy: IfNotPresent\n";
        assert_eq!(manifest_tag(m).as_deref(), Some("v1.20.2_kf.1"));
        assert_eq!(
            manifest_tag("    image: \"registry:5000/kube-apiserver:v1.20.2\"").as_deref(),
            Some("v1.20.2")
        );
        assert_eq!(
            manifest_tag("    image: registry:5000/kube-apiserver"),
            None
        );
        assert_eq!(manifest_tag(""), None);
    }

    #[test]
    fn a_blocking_budget_is_named() {
        let out = "node/w1 cordoned\nevicting pod default/web-1\nerror when evicting pods/\"web-1\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.\n\
There are pending pods in node \"w1\" when an error occurred: error when evicting pods/\"web-1\" -n \"default\": global timeout reached: 30s\n";
        let m = drain_failure(out, 30);
        assert!(m.contains("PodDisruptionBudget"), "{m}");
        assert!(m.contains("evicting default/web-1 "), "{m}");
        assert!(m.contains("30s"), "{m}");
        let m = drain_failure("error: unable to drain node \"w1\": something else\n", 30);
        assert!(m.starts_with("drain failed: error: unable"), "{m}");
    }

    #[test]
    fn snapshot_names_are_valid_state_names() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            snapshot_name("v1.20.2_kf.1", now),
            "pre-upgrade-v1.20.2_kf.1-20261129T030405Z"
        );
    }
}
