//! Phases: one file each. `plan` is read-only and makes every decision; `apply` (with the
//! SSH transport and the state store) carries out exactly that plan.
//!
//! Without facts from the hosts (offline `kubeforge plan`), a phase plans as for fresh
//! hosts: every file is written, every guarded step is listed with its guard.

mod addons;
mod cni;
mod connect;
mod init;
mod join;
mod kubeconfig;
mod load_balancer;
mod prepare;
mod provision;
mod wait_ready;

use crate::playbook::{PhaseRef, Strategy};
use crate::render::{FileGroup, RenderedFile, Secrets};
use crate::spec::{Host, LoadedCluster};
use serde::Serialize;

/// What a phase needs to plan.
pub struct PlanContext<'a> {
    pub cluster: &'a LoadedCluster,
    /// Every rendered file of every host (with real secrets; redacted for display).
    pub files: &'a [(FileGroup, RenderedFile)],
    pub secrets: &'a Secrets,
    /// The hosts the playbook selected for this phase.
    pub hosts: Vec<&'a Host>,
}

impl PlanContext<'_> {
    /// The files of `group` for `host`.
    pub fn files_for(&self, host: &str, group: FileGroup) -> Vec<&RenderedFile> {
        self.files
            .iter()
            .filter(|(g, f)| *g == group && f.host == host)
            .map(|(_, f)| f)
            .collect()
    }
}

pub trait Phase: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// Steps on the operator's machine and on each selected host.
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan;
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
    /// A shell command on the host, or a description of an operator step.
    pub action: String,
    /// When the step is skipped on a re-run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_if: Option<String>,
}

impl Step {
    pub fn new(action: impl Into<String>) -> Step {
        Step {
            action: action.into(),
            skip_if: None,
        }
    }

    pub fn unless(mut self, guard: impl Into<String>) -> Step {
        self.skip_if = Some(guard.into());
        self
    }
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
        Box::new(init::InitControlPlane),
        Box::new(join::JoinControlPlane),
        Box::new(join::JoinWorkers),
        Box::new(kubeconfig::Kubeconfig),
        Box::new(cni::Cni),
        Box::new(wait_ready::WaitReady),
        Box::new(addons::Addons),
    ]
}

pub fn names() -> Vec<&'static str> {
    registry().iter().map(|p| p.name()).collect()
}

/// Plan one phase of a playbook.
pub fn plan_phase(
    phase: &dyn Phase,
    r: &PhaseRef,
    cluster: &LoadedCluster,
    files: &[(FileGroup, RenderedFile)],
    secrets: &Secrets,
) -> PhasePlan {
    let ctx = PlanContext {
        cluster,
        files,
        secrets,
        hosts: r.hosts.select(&cluster.topology),
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
