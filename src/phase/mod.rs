//! Phases: one file each. `plan` is read-only and makes every decision; `apply` (with the
//! SSH transport and the state store) carries out exactly that plan.
//!
//! Without facts from the hosts (offline `kubeforge plan`), a phase plans as for fresh
//! hosts: every file is written, every guarded step is listed with its guard.

mod addons;
mod backup;
mod binaries;
pub mod certs;
mod cni;
mod connect;
pub mod exec;
pub mod init;
mod join;
mod kubeconfig;
mod load_balancer;
mod prepare;
pub mod provision;
pub mod remove;
pub mod reset;
pub mod restore;
pub mod upgrade;
mod wait_ready;

pub use crate::kube::ready_nodes;
pub use init::CA_HASH_KEY;

use crate::playbook::{PhaseRef, Strategy};
use crate::render::{FileGroup, RenderedFile, Secrets};
use crate::spec::{Host, LoadedCluster};
use crate::state::StateError;
pub use crate::state::StateHandle;
use serde::Serialize;

/// What a phase needs to plan.
pub struct PlanContext<'a> {
    pub cluster: &'a LoadedCluster,
    /// Every rendered file of every host (with real secrets; redacted for display).
    pub files: &'a [(FileGroup, RenderedFile)],
    pub secrets: &'a Secrets,
    /// The hosts the playbook selected for this phase.
    pub hosts: Vec<&'a Host>,
    /// What the hosts and the cluster are now (None: offline, or before `connect`).
    pub facts: Option<&'a crate::facts::ClusterFacts>,
    /// `files` by host (indices, in order): a plan of thousands of hosts looks up each
    /// host's files without scanning every file of every host.
    pub by_host: std::collections::HashMap<&'a str, Vec<usize>>,
}

impl<'a> PlanContext<'a> {
    /// The index of `files` by host.
    pub fn index(
        files: &'a [(FileGroup, RenderedFile)],
    ) -> std::collections::HashMap<&'a str, Vec<usize>> {
        let mut by_host: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        for (i, (_, f)) in files.iter().enumerate() {
            by_host.entry(f.host.as_str()).or_default().push(i);
        }
        by_host
    }

    /// The files of `group` for `host`.
    pub fn files_for(&self, host: &str, group: FileGroup) -> Vec<&'a RenderedFile> {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(|&i| &self.files[i])
            .filter(|(g, _)| *g == group)
            .map(|(_, f)| f)
            .collect()
    }
}

/// What a phase needs to carry its plan out.
pub struct ApplyContext<'a> {
    pub cluster: &'a LoadedCluster,
    pub files: &'a [(FileGroup, RenderedFile)],
    pub secrets: &'a Secrets,
    pub rt: &'a exec::Runtime,
    pub state: &'a StateHandle,
    /// The machine provider, when the cluster's machines are made by kubeforge (docker,
    /// clouds); None for the static provider.
    pub provider: Option<&'a dyn crate::provider::Provider>,
    /// What the host parts did, summed over the phase (for the run's report).
    pub done: std::sync::Mutex<exec::HostReport>,
    /// How addons are applied (`--force-conflicts`, `--wait`, `--timeout`).
    pub addons: &'a crate::addons::AddonOptions,
    /// How an upgrade rolls (`--max-unavailable`, `--drain-timeout`).
    pub upgrade: &'a upgrade::UpgradeOptions,
    /// What a restore restores (`--snapshot`).
    pub restore: &'a restore::RestoreOptions,
    /// Lines for the operator, printed after the phase (addon outcomes, readiness).
    pub notes: std::sync::Mutex<Vec<String>>,
    /// Nothing changed on any host or machine earlier in this run, and this phase
    /// finished last time: gates that prove what a change did (a probe Pod behind a
    /// Service) can stand on that run's proof.
    pub quiet: bool,
    /// Hosts whose part of this phase the run's preview found done (the same plan,
    /// moments ago, nothing changed since): they are not asked again.
    pub unchanged: std::collections::HashSet<String>,
}

impl ApplyContext<'_> {
    pub fn note(&self, line: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(line);
        }
    }

    /// Whether the preview found every host part of `plan` done moments ago and the
    /// plan has no repair of kubeforge's own: nothing of it will change a host.
    pub fn nothing_to_do(&self, plan: &PhasePlan) -> bool {
        plan.hosts
            .iter()
            .all(|hp| self.unchanged.contains(&hp.host))
            && plan.operator.iter().all(|s| s.special.is_none())
    }
}

/// How old the run's facts may be for a phase that changes nothing to stand on them
/// instead of asking the hosts again.
pub const FACTS_HOLD_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl ApplyContext<'_> {
    /// The run's facts (its preview's, moments ago), when a phase that changes nothing
    /// may stand on them instead of asking again: nothing changed earlier in this run,
    /// this phase finished last time, and they are at most [`FACTS_HOLD_FOR`] old.
    pub fn standing_facts(&self) -> Option<std::sync::Arc<crate::facts::ClusterFacts>> {
        if !self.quiet {
            return None;
        }
        self.rt.fresh_facts(FACTS_HOLD_FOR)
    }

    /// The output of read-only `command` on `host`: with `ahead`, its answer asked ahead
    /// in the facts' round trip (see [`Phase::ask_ahead`]) while this phase stands on the
    /// facts ([`ApplyContext::standing_facts`]); else asked now. A command that fails is
    /// an error naming the host.
    pub async fn ask(
        &self,
        host: &Host,
        command: &str,
        ahead: bool,
    ) -> Result<String, exec::HostError> {
        if ahead && self.standing_facts().is_some() {
            if let Some(out) = self.rt.asked_ahead(&host.name, command) {
                return Ok(out);
            }
        }
        let s = exec::session(self.rt, host).await?;
        exec::run(s.as_ref(), &host.name, command, self.secrets, false).await
    }

    /// Whether `host`'s files at `paths` hold exactly `known` (compared by sha256), told
    /// by the answer to [`exec::digests_command`] asked ahead in the facts' round trip
    /// while this phase stands on the facts. False whenever that cannot be told (no such
    /// answer, a file missing there or unknown here): the caller reads the files then.
    /// Secrets stay out of the facts' answer this way: only their digests ride in it.
    pub fn files_unchanged_ahead(
        &self,
        host: &Host,
        paths: &[&str],
        known: &[Option<&str>],
    ) -> bool {
        if self.standing_facts().is_none() {
            return false;
        }
        let Some(out) = self
            .rt
            .asked_ahead(&host.name, &exec::digests_command(paths))
        else {
            return false;
        };
        exec::digests_match(&out, paths, known)
    }

    /// The first control-plane node and the connection to it (None: no control plane).
    pub async fn first_control_plane(
        &self,
        phase: &str,
    ) -> Result<Option<(&Host, std::sync::Arc<crate::transport::SshSession>)>, PhaseError> {
        let facts = self.rt.facts();
        let Some(first) = crate::facts::init_node(&self.cluster.topology, facts.as_deref()) else {
            return Ok(None);
        };
        let s = exec::session(self.rt, first)
            .await
            .map_err(|e| PhaseError::host(phase, e))?;
        Ok(Some((first, s)))
    }

    /// Run the plan's host parts with the given handler for steps without a command.
    pub async fn hosts(
        &self,
        plan: &PhasePlan,
        special: &dyn exec::SpecialSteps,
    ) -> Result<Vec<(String, exec::HostReport)>, PhaseError> {
        let reports = exec::apply_hosts(
            self.rt,
            self.cluster,
            self.files,
            self.secrets,
            plan,
            special,
            &self.unchanged,
        )
        .await
        .map_err(|errors| PhaseError::Hosts {
            phase: plan.name.clone(),
            errors,
        })?;
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        for (_, r) in &reports {
            done.files_sent += r.files_sent;
            done.steps_run += r.steps_run;
            done.steps_skipped += r.steps_skipped;
        }
        Ok(reports)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("phase {phase} failed on {} host(s):\n{}", errors.len(), list(errors))]
    Hosts {
        phase: String,
        errors: Vec<exec::HostError>,
    },
    #[error("phase {phase}: the machine provider failed")]
    Provider {
        phase: String,
        #[source]
        source: crate::provider::ProviderError,
    },
    #[error("phase {phase}: the state store failed")]
    State {
        phase: String,
        #[source]
        source: StateError,
    },
    #[error("phase {phase}: {message}")]
    Gate { phase: String, message: String },
    #[error("phase {phase} failed")]
    Addons {
        phase: String,
        #[source]
        source: crate::addons::AddonsError,
    },
    #[error("phase {phase}: the Kubernetes artifacts")]
    Artifacts {
        phase: String,
        #[source]
        source: crate::artifacts::ArtifactsError,
    },
}

fn list(errors: &[exec::HostError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl PhaseError {
    /// One host's failure as the phase's error.
    pub fn host(phase: &str, e: exec::HostError) -> PhaseError {
        PhaseError::Hosts {
            phase: phase.to_string(),
            errors: vec![e],
        }
    }

    pub fn exit_kind(&self) -> crate::error::ExitKind {
        use crate::error::ExitKind;
        match self {
            PhaseError::Hosts { errors, .. } if errors.iter().all(|e| e.is_transport()) => {
                ExitKind::Ssh
            }
            PhaseError::Hosts { .. } | PhaseError::Gate { .. } => ExitKind::Remote,
            PhaseError::Provider { .. } => ExitKind::Provider,
            PhaseError::State { source, .. } => source.exit_kind(),
            PhaseError::Artifacts { source, .. } => source.exit_kind(),
            PhaseError::Addons { source, .. } => source.exit_kind(),
        }
    }
}

/// How long a gate waits for /readyz through the control-plane endpoint.
const READYZ_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Gate: the apiserver answers `ok` on /readyz through the control-plane endpoint
/// (asked from `t`, a control-plane node).
pub async fn wait_readyz(
    ctx: &ApplyContext<'_>,
    t: &dyn crate::transport::Transport,
    phase: &str,
) -> Result<(), PhaseError> {
    let endpoint = ctx.cluster.topology.endpoint.address();
    crate::kube::wait_readyz(t, &endpoint, READYZ_WAIT)
        .await
        .map_err(|message| PhaseError::Gate {
            phase: phase.to_string(),
            message,
        })
}

#[async_trait::async_trait]
pub trait Phase: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// Steps on the operator's machine and on each selected host. Read-only.
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan;
    /// Carry out exactly `plan`. The default uploads each host's files and runs its
    /// commands (guarded by their checks).
    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &exec::NoSpecial).await.map(|_| ())
    }
    /// Read-only commands (host name, command) whose output `apply` reads even when it
    /// changes nothing: asked ahead in the facts' round trip, and read back through
    /// [`ApplyContext::ask`] while the run has changed nothing.
    fn ask_ahead(&self, _cluster: &LoadedCluster) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    pub name: String,
    pub description: String,
    pub strategy: Strategy,
    /// Steps kubeforge itself performs (provider calls, API checks, state updates).
    pub operator: Vec<Step>,
    pub hosts: Vec<HostPlan>,
}

/// A digest of everything a host plan would do (files by content hash and mode, steps
/// with their commands and checks): the preview and the run compare it to know they
/// speak of the same plan.
pub fn host_plan_digest(hp: &HostPlan) -> String {
    json_digest(hp)
}

/// sha256 (hex) of a value's JSON: what a plan (or part of one) is, for comparing.
pub fn json_digest<T: Serialize>(value: &T) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// The phases whose effect on a host is all in their host plans (files and checked
/// steps); what else they do goes through the API or the state. While a run of only
/// these has changed nothing, a host part its preview found done moments ago is not
/// asked again.
pub const DECLARATIVE: &[&str] = &[
    "provision",
    "connect",
    "prepare-hosts",
    "load-balancer",
    "remove-nodes",
    "init-control-plane",
    "join-control-plane",
    "join-workers",
    "kubeconfig",
    "cni",
    "wait-ready",
    "etcd-backup",
    "addons",
];

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub files: Vec<PlannedFile>,
    pub commands: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub path: String,
    pub mode: String,
    pub size: usize,
    pub sha256: String,
    pub template: String,
    pub sensitive: bool,
    /// The content with every secret replaced by `<redacted>`.
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the step does: the shell command on a host, or a description of an
    /// operator step.
    pub action: String,
    /// When the step is skipped on a re-run, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_if: Option<String>,
    /// The shell command run on the host (`None`: the phase carries the step out
    /// itself, e.g. provider calls, artifact uploads, waits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A read-only shell command: exit 0 means the step's result already exists and the
    /// step is skipped. Evaluated when planning against live hosts and again right
    /// before the step runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// What a step without a command is, for the phase that carries it out (steps are
    /// never recognised by their text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub special: Option<Special>,
}

/// Steps a phase carries out itself (on a host, or on the operator's machine through
/// a control-plane node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Special {
    /// Upload the verified Kubernetes binaries and images and install them.
    InstallArtifacts,
    /// Remove an etcd member that blocks joins (never started, or its machine is gone),
    /// asked of a healthy member, only while a quorum of healthy members holds.
    RemoveEtcdMember { id: u64, name: String },
    /// Delete the Node object of a host that is joined again, or that leaves.
    DeleteNode { name: String },
    /// Drain a node that leaves the cluster.
    Drain { name: String },
    /// Remove the etcd member of a control plane that leaves (quorum checked first).
    LeaveEtcd { name: String },
    /// Reset a host that leaves, over SSH.
    ResetHost { name: String },
    /// Delete the machine of a host that leaves at the provider.
    DeleteMachine { name: String },
    /// Forget a host that left in the state.
    ForgetMachine { name: String },
}

impl Step {
    /// A step the phase carries out itself.
    pub fn new(action: impl Into<String>) -> Step {
        Step {
            action: action.into(),
            skip_if: None,
            run: None,
            check: None,
            special: None,
        }
    }

    /// A host step the phase carries out itself, of kind `special`.
    pub fn special(special: Special, action: impl Into<String>) -> Step {
        Step {
            special: Some(special),
            ..Step::new(action)
        }
    }

    /// A shell command run on the host as shown.
    pub fn cmd(command: impl Into<String>) -> Step {
        let command = command.into();
        Step {
            action: command.clone(),
            skip_if: None,
            run: Some(command),
            check: None,
            special: None,
        }
    }

    /// Skipped when `guard` (described) holds.
    pub fn unless(mut self, guard: impl Into<String>) -> Step {
        self.skip_if = Some(guard.into());
        self
    }

    /// Skipped when the shell command `check` exits 0 (`why` describes it).
    pub fn unless_check(mut self, why: impl Into<String>, check: impl Into<String>) -> Step {
        self.skip_if = Some(why.into());
        self.check = Some(check.into());
        self
    }
}

/// Where kubeforge records what it applied on a host (sha256 of the config a service
/// was last restarted with), so that an interrupted run restarts it next time.
pub const APPLIED_DIR: &str = "/var/lib/kubeforge/applied";

/// `restart` runs when the given files' content differs from what it last ran with
/// (recorded under `marker`), or when `service` (if any) is not running.
pub fn restart_step(
    marker: &str,
    restart: &str,
    files: &[&crate::render::RenderedFile],
    service: Option<&str>,
) -> Step {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update(f.content.as_bytes());
    }
    // 128 bits are plenty to notice a change.
    let digest = hex::encode(&h.finalize()[..16]);
    let path = format!("{APPLIED_DIR}/{marker}");
    use crate::transport::shell::{FILE_EQUALS, UNIT_ACTIVE};
    let mut check = format!("{FILE_EQUALS} kfeq {path} {digest}");
    if let Some(svc) = service {
        check = format!("{UNIT_ACTIVE} {check} && kfup {svc}");
    }
    Step::cmd(format!(
        "{restart} && mkdir -p {APPLIED_DIR} && echo {digest} > {path}"
    ))
    .unless_check(
        match service {
            Some(svc) => format!("{svc} runs with this configuration"),
            None => "it was done with this configuration".to_string(),
        },
        check,
    )
}

impl PlannedFile {
    pub fn from(f: &RenderedFile, secrets: &Secrets) -> PlannedFile {
        PlannedFile {
            path: f.path.clone(),
            mode: format!("{:04o}", f.mode),
            size: f.content.len(),
            // The digest of the real content (what a re-run compares against the host);
            // it reveals nothing of the secrets in it.
            sha256: f.sha256(),
            template: f.template.clone(),
            sensitive: f.sensitive,
            content: secrets.redact(&f.content),
        }
    }
}

/// Every phase this binary implements, in bootstrap order.
pub fn registry() -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(provision::Provision),
        Box::new(connect::Connect),
        Box::new(prepare::PrepareHosts),
        Box::new(load_balancer::LoadBalancer),
        Box::new(remove::RemoveNodes),
        Box::new(init::InitControlPlane),
        Box::new(join::JoinControlPlane),
        Box::new(join::JoinWorkers),
        Box::new(kubeconfig::Kubeconfig),
        Box::new(cni::Cni),
        Box::new(wait_ready::WaitReady),
        Box::new(backup::EtcdBackupTimer),
        Box::new(restore::EtcdRestore),
        Box::new(restore::RestoreFinish),
        Box::new(certs::CertsRenew),
        Box::new(reset::ResetHosts),
        Box::new(addons::Addons),
        Box::new(upgrade::EtcdSnapshot),
        Box::new(upgrade::UpgradePrepare),
        Box::new(upgrade::UpgradeControlPlane),
        Box::new(upgrade::UpgradeWorkers),
    ]
}

pub fn names() -> Vec<&'static str> {
    registry().iter().map(|p| p.name()).collect()
}

/// The name of the node holding the init configuration, from the facts (the first
/// control-plane node unless it was replaced).
pub fn init_node_name(
    cluster: &LoadedCluster,
    facts: Option<&crate::facts::ClusterFacts>,
) -> Option<String> {
    crate::facts::init_node(&cluster.topology, facts).map(|h| h.name.clone())
}

/// Plan one phase of a playbook.
pub fn plan_phase(
    phase: &dyn Phase,
    r: &PhaseRef,
    cluster: &LoadedCluster,
    files: &[(FileGroup, RenderedFile)],
    secrets: &Secrets,
    facts: Option<&crate::facts::ClusterFacts>,
) -> PhasePlan {
    let t = &cluster.topology;
    let init = crate::facts::init_node(t, facts);
    let ctx = PlanContext {
        cluster,
        files,
        secrets,
        hosts: r.hosts.select_with_init(t, init),
        facts,
        by_host: PlanContext::index(files),
    };
    let mut p = phase.plan(&ctx);
    p.strategy = r.strategy;
    p
}

/// A phase plan with the standard header.
pub fn new_plan(phase: &dyn Phase) -> PhasePlan {
    PhasePlan {
        name: phase.name().to_string(),
        description: phase.description().to_string(),
        strategy: Strategy::Parallel,
        operator: Vec::new(),
        hosts: Vec::new(),
    }
}

/// One host's share: its files of `groups`, then `commands`.
pub fn host_plan(
    ctx: &PlanContext<'_>,
    host: &Host,
    groups: &[FileGroup],
    commands: Vec<Step>,
) -> HostPlan {
    HostPlan {
        host: host.name.clone(),
        files: groups
            .iter()
            .flat_map(|g| ctx.files_for(&host.name, *g))
            .map(|f| PlannedFile::from(f, ctx.secrets))
            .collect(),
        commands,
    }
}

/// kubeadm before 1.22 lists every control plane it joined in its ClusterStatus and
/// drops an entry only when that node runs `kubeadm reset`: remove the entries of control
/// planes not in the cluster file, through `host`. Returns the names removed (none on
/// later versions, which have no ClusterStatus).
pub(crate) async fn prune_cluster_status(
    ctx: &ApplyContext<'_>,
    t: &dyn crate::transport::Transport,
    host: &str,
    phase: &str,
) -> Result<Vec<String>, PhaseError> {
    if ctx.cluster.version().minor >= 22 {
        return Ok(Vec::new());
    }
    let keep: Vec<String> = ctx
        .cluster
        .topology
        .control_planes()
        .iter()
        .map(|h| h.name.clone())
        .collect();
    crate::kube::remove_stale_api_endpoints(t, host, &keep, ctx.secrets)
        .await
        .map_err(|e| PhaseError::host(phase, e))
}

/// How long HAProxy may take to see a server back UP (rise 2 x inter 1 s, slow start).
const LB_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Take control plane `h` out of every load balancer (HAProxy runtime API: drain, so no
/// new connection goes to it) before its apiserver restarts.
pub(crate) async fn drain_from_lbs(ctx: &ApplyContext<'_>, h: &Host) -> Result<(), String> {
    for l in ctx.cluster.topology.lb_hosts() {
        let lt = exec::session(ctx.rt, l).await.map_err(|e| e.to_string())?;
        crate::kube::lb::set_state(
            lt.as_ref(),
            &l.name,
            &h.name,
            crate::kube::lb::ServerState::Drain,
            ctx.secrets,
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Put `h` back into every load balancer and wait until each sees it UP.
pub(crate) async fn back_into_lbs(ctx: &ApplyContext<'_>, h: &Host) -> Result<(), String> {
    use crate::kube::lb;
    for l in ctx.cluster.topology.lb_hosts() {
        let lt = exec::session(ctx.rt, l).await.map_err(|e| e.to_string())?;
        lb::set_state(
            lt.as_ref(),
            &l.name,
            &h.name,
            lb::ServerState::Ready,
            ctx.secrets,
        )
        .await
        .map_err(|e| e.to_string())?;
        let start = std::time::Instant::now();
        loop {
            let st = lb::status(lt.as_ref(), &l.name, &h.name, ctx.secrets)
                .await
                .map_err(|e| e.to_string())?;
            if st.as_deref() == Some("UP") {
                break;
            }
            if start.elapsed() > LB_UP_WAIT {
                return Err(format!(
                    "the HAProxy of {} shows {}/{} as {} after {}s",
                    l.name,
                    lb::BACKEND,
                    h.name,
                    st.unwrap_or_else(|| "absent".into()),
                    LB_UP_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    Ok(())
}
