//! The preview of a run, shown by `plan` and by every command before it asks for
//! confirmation (one function for both): for fresh hosts the whole playbook; once
//! machines exist, what would change on them (files as diffs, commands whose checks did
//! not find their result), the addons' object changes, and what the facts show is
//! missing or unhealthy — a host that is gone is never "No changes".

use crate::error::Error;
use crate::facts::ClusterFacts;
use crate::ops::plan::{self as planmod, Plan};
use crate::ops::session::Session;
use crate::phase::exec::{resolve_hosts, HostError, Runtime};
use crate::phase::{self, PhasePlan};
use crate::playbook::{Playbook, Selector};
use crate::provider::ResourceChange;
use crate::render;
use crate::spec::LoadedCluster;
use serde::Serialize;
use std::fmt::Write as _;

/// What a run would do.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Preview {
    /// No machines yet: the whole playbook, as for fresh hosts.
    Fresh { plan: Plan },
    /// Machines exist: what would change on them.
    Online {
        plan: OnlinePlan,
        /// Cloud resources and what `provision` would do with them.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cloud_resources: Vec<ResourceChange>,
        /// Hosts that could not be asked.
        #[serde(skip)]
        failures: Vec<HostError>,
    },
    /// Only phases that run on the operator's machine (e.g. `--phases machines`).
    Operator {
        phases: Vec<PhasePlan>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cloud_resources: Vec<ResourceChange>,
    },
}

/// Build the preview of running `pb` in session `s` (read-only: nothing changes).
pub async fn build(s: &Session, pb: &Playbook) -> Result<Preview, Error> {
    let c = &s.cluster;
    let doc = s.state.get().await;
    let secrets = s
        .secrets()
        .await
        .unwrap_or_else(crate::render::Secrets::generate);
    let cloud_resources = match (&s.provider, pb.phases.iter().any(|p| p.name == "provision")) {
        (Some(p), true) if c.cluster.spec.provider.is_cloud() => {
            let wanted = p.planned(&crate::provider::factory::machine_specs(c));
            let existing = p.resources().await?;
            crate::provider::diff_resources(&wanted, &existing)
        }
        _ => Vec::new(),
    };
    if pb.phases.iter().all(|p| p.hosts == Selector::None) {
        let files = render::render_all(c, &secrets)?;
        let registry = phase::registry();
        let phases = pb
            .phases
            .iter()
            .filter_map(|r| {
                let ph = registry.iter().find(|p| p.name() == r.name)?;
                Some(phase::plan_phase(ph.as_ref(), r, c, &files, &secrets, None))
            })
            .collect();
        return Ok(Preview::Operator {
            phases,
            cloud_resources,
        });
    }
    if doc.machines.is_empty() {
        let mut plan = planmod::build_for(c, &secrets, pb)?;
        if !cloud_resources.is_empty() {
            plan.cloud_resources = cloud_resources;
        }
        return Ok(Preview::Fresh { plan });
    }
    let (plan, failures) = against_hosts(s, pb).await?;
    Ok(Preview::Online {
        plan,
        cloud_resources,
        failures,
    })
}

/// The preview as a person reads it.
pub fn text(p: &Preview, c: &LoadedCluster) -> String {
    match p {
        Preview::Fresh { plan } => planmod::text(plan, c, false),
        Preview::Online {
            plan,
            cloud_resources,
            failures,
        } => {
            let mut o = String::new();
            if !cloud_resources.is_empty() {
                o.push_str(&planmod::resources_text(
                    c.cluster.spec.provider.name(),
                    cloud_resources,
                ));
            }
            o.push_str(&online_text(plan));
            for e in failures {
                let _ = writeln!(o, "warning: not planned, {e} (apply will try again)");
            }
            o
        }
        Preview::Operator {
            phases,
            cloud_resources,
        } => {
            let mut o = String::new();
            if !cloud_resources.is_empty() {
                o.push_str(&planmod::resources_text(
                    c.cluster.spec.provider.name(),
                    cloud_resources,
                ));
            }
            for ph in phases {
                o.push_str(&planmod::phase_text(ph, false));
            }
            o
        }
    }
}

/// Hosts of the topology the provider has no running machine for: (missing, not running
/// with the provider's word for it). Static hosts: none.
async fn provider_absences(s: &Session) -> (Vec<String>, Vec<(String, String)>) {
    let Some(p) = &s.provider else {
        return (Vec::new(), Vec::new());
    };
    let Ok(machines) = p.list().await else {
        return (Vec::new(), Vec::new());
    };
    let mut missing = Vec::new();
    let mut down = Vec::new();
    for h in &s.cluster.topology.hosts {
        match machines.iter().find(|m| m.name == h.name) {
            None => missing.push(h.name.clone()),
            Some(m) if m.state != crate::provider::MachineState::Running => down.push((
                h.name.clone(),
                format!("the machine is {:?} at the provider", m.state).to_lowercase(),
            )),
            Some(_) => {}
        }
    }
    (missing, down)
}

/// Gather the facts of every host of the topology into the session's runtime.
pub async fn gather_facts(s: &Session) -> Result<std::sync::Arc<ClusterFacts>, Error> {
    gather_facts_for(s, None).await
}

/// [`gather_facts`], for a run of `pb` when given: each host is also asked, in the same
/// round trip, what the preview of `pb` would ask it (its files and checks) when the
/// control plane is where the file says, and the read-only commands the phases of `pb`
/// ask ahead ([`crate::phase::Phase::ask_ahead`]). The answers are kept by host and exact
/// command ([`crate::phase::exec::Runtime::asked_ahead`]): the preview uses one only for
/// the very script it would send, and asks again otherwise.
pub async fn gather_facts_for(
    s: &Session,
    pb: Option<&Playbook>,
) -> Result<std::sync::Arc<ClusterFacts>, Error> {
    let rt = s.rt()?;
    let known_secrets = s.secrets().await;
    // What the preview will ask is made ahead while the provider says which machines run.
    let ((missing, down), speculated) = tokio::join!(provider_absences(s), async {
        match (pb, &known_secrets) {
            (Some(pb), Some(secrets)) => expected_probes(&s.cluster, pb, secrets),
            _ => Default::default(),
        }
    });
    let secrets = known_secrets.unwrap_or_else(crate::render::Secrets::generate);
    let hosts: Vec<&crate::spec::Host> = s
        .cluster
        .topology
        .hosts
        .iter()
        .filter(|h| !down.iter().any(|(n, _)| *n == h.name))
        .collect();
    // Per host: the files-and-checks script (when there is one), then the commands the
    // phases ask ahead; each answer is kept under its exact command.
    let mut extra = speculated;
    if let Some(pb) = pb {
        let registry = phase::registry();
        for r in &pb.phases {
            if let Some(ph) = registry.iter().find(|p| p.name() == r.name) {
                for (host, command) in ph.ask_ahead(&s.cluster) {
                    extra.entry(host).or_default().push(command);
                }
            }
        }
    }
    let (mut facts, answers) = crate::facts::gather(
        &rt.pool,
        &s.cluster,
        &hosts,
        &missing,
        crate::facts::leaving(&s.cluster, &s.state.get().await),
        &secrets,
        rt.concurrency,
        &extra,
    )
    .await;
    let mut ahead = std::collections::HashMap::new();
    for (host, outs) in answers {
        let asked = extra.get(&host).map(Vec::as_slice).unwrap_or_default();
        for (command, out) in asked.iter().zip(outs) {
            if let Some(out) = out {
                ahead.insert((host.clone(), command.clone()), out);
            }
        }
    }
    if let Ok(mut m) = rt.ahead.lock() {
        *m = ahead;
    }
    for (name, why) in down {
        facts
            .absent
            .insert(name, crate::facts::Absence::Unreachable(why));
    }
    s.cluster.topology.pod_cidr_pins.pin(facts.pod_cidrs());
    rt.set_facts(facts);
    rt.facts()
        .ok_or_else(|| Error::Internal("facts were not recorded".into()))
}

/// Each host's part of every phase of `plans`, in the order of the phases.
fn host_parts<'a>(plans: &'a [PhasePlan], name: &str) -> Vec<(usize, &'a crate::phase::HostPlan)> {
    plans
        .iter()
        .enumerate()
        .flat_map(|(i, plan)| {
            plan.hosts
                .iter()
                .filter(move |hp| hp.host == name)
                .map(move |hp| (i, hp))
        })
        .collect()
}

/// What [`against_hosts`] would ask each host for `pb` when the facts change nothing
/// in the plans (the first control plane of the file inits the cluster): host → its
/// files-and-checks script (one).
fn expected_probes(
    c: &LoadedCluster,
    pb: &Playbook,
    secrets: &crate::render::Secrets,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let init = phase::init_node_name(c, None);
    let Ok(files) = render::render_all_with_init(c, secrets, init.as_deref()) else {
        return Default::default();
    };
    let registry = phase::registry();
    let plans: Vec<PhasePlan> = pb
        .phases
        .iter()
        .filter_map(|r| {
            let ph = registry.iter().find(|p| p.name() == r.name)?;
            Some(phase::plan_phase(ph.as_ref(), r, c, &files, secrets, None))
        })
        .collect();
    c.topology
        .hosts
        .iter()
        .filter_map(|h| {
            let hps: Vec<&crate::phase::HostPlan> = host_parts(&plans, &h.name)
                .into_iter()
                .map(|(_, hp)| hp)
                .collect();
            let script = crate::phase::exec::files_and_checks_script(&files, &hps)?;
            Some((h.name.clone(), vec![script]))
        })
        .collect()
}

/// The plan against the hosts as they are now (read-only), and the hosts that could not
/// be asked.
pub async fn against_hosts(
    s: &Session,
    pb: &Playbook,
) -> Result<(OnlinePlan, Vec<HostError>), Error> {
    let c = &s.cluster;
    let rt = s.rt()?;
    let doc = s.state.get().await;
    let secrets = s
        .secrets()
        .await
        .ok_or_else(|| Error::Usage("the state has no join secrets yet: run apply".into()))?;
    // Gathered moments ago by the command's own preflight (recover, apply), or now.
    let facts = match rt.facts() {
        Some(f) => f,
        None => gather_facts_for(s, Some(pb)).await?,
    };
    let registry = phase::registry();
    let init = phase::init_node_name(c, Some(&facts));
    let files = render::render_all_with_init(c, &secrets, init.as_deref())?;
    let mut phases = Vec::new();
    // Hosts that exist but do not answer cannot be planned: the plan says so and the
    // command fails after printing it (a missing machine is not a failure: `provision`
    // makes it).
    let mut failures: Vec<HostError> = facts
        .absent
        .iter()
        .filter_map(|(host, why)| match why {
            crate::facts::Absence::Unreachable(message) => Some(HostError::Other {
                host: host.clone(),
                message: message.clone(),
            }),
            crate::facts::Absence::MissingAtProvider => None,
        })
        .collect();
    let mut removals = Vec::new();
    let mut plans = Vec::new();
    for r in &pb.phases {
        let Some(ph) = registry.iter().find(|p| p.name() == r.name) else {
            continue;
        };
        let plan = phase::plan_phase(ph.as_ref(), r, c, &files, &secrets, Some(&facts));
        if plan.name == phase::remove::NAME {
            removals.extend(plan.operator.iter().map(|s| s.action.clone()));
        }
        plans.push(plan);
    }
    // Each host goes through its part of every phase in order (one command at a time
    // on its connection); the hosts at once. A host without facts (gone, not
    // answering) is reported once, as a finding; a host that fails is not asked again.
    let mut names: Vec<&str> = Vec::new();
    for plan in &plans {
        for hp in &plan.hosts {
            if !names.contains(&hp.host.as_str()) && !facts.absent.contains_key(&hp.host) {
                names.push(hp.host.as_str());
            }
        }
    }
    let per_host = futures::future::join_all(names.iter().map(|name| {
        let (plans, files, secrets) = (&plans, &files, &secrets);
        async move {
            // The host's part of every phase, asked in one round trip (none when the
            // facts' round trip answered it).
            let mine = host_parts(plans, name);
            let hps: Vec<&crate::phase::HostPlan> = mine.iter().map(|(_, hp)| *hp).collect();
            match resolve_hosts(rt, c, files, secrets, &hps).await {
                Ok(hs) => (
                    mine.iter()
                        .zip(hs)
                        .map(|((i, hp), h)| (*i, h, *hp))
                        .collect::<Vec<_>>(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e)),
            }
        }
    }))
    .await;
    let mut by_phase: Vec<Vec<crate::phase::exec::ResolvedHost>> = vec![Vec::new(); plans.len()];
    let mut done = std::collections::BTreeSet::new();
    for (resolved, error) in per_host {
        for (i, h, hp) in resolved {
            if h.is_empty() {
                done.insert((plans[i].name.clone(), h.host, phase::host_plan_digest(hp)));
            } else {
                by_phase[i].push(h);
            }
        }
        failures.extend(error);
    }
    for (plan, mut hosts) in plans.iter().zip(by_phase) {
        // In the plan's host order, as before.
        hosts.sort_by_key(|h| plan.hosts.iter().position(|hp| hp.host == h.host));
        if !hosts.is_empty() {
            phases.push(OnlinePhase {
                name: plan.name.clone(),
                hosts,
            });
        }
    }
    let (addons, addons_error) = match addon_changes(c, &doc, rt).await {
        Ok(a) => (a, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Ok((
        OnlinePlan {
            cluster: c.name().to_string(),
            state_generation: doc.generation,
            findings: facts.findings(c),
            facts: (*facts).clone(),
            removals,
            phases,
            addons,
            addons_error,
            done,
        },
        failures,
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlinePlan {
    pub cluster: String,
    pub state_generation: u64,
    /// What the facts show is missing or unhealthy (hosts gone or not answering, stale
    /// etcd members, nodes not Ready), with what a run does about it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// The facts the plan was made from.
    pub facts: crate::facts::ClusterFacts,
    /// What taking the machines no longer in the cluster file out of the cluster does,
    /// step by step (`remove-nodes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<String>,
    /// Phases that would change something, with what.
    pub phases: Vec<OnlinePhase>,
    /// Host parts found done: (phase, host, digest of the host plan).
    #[serde(skip)]
    pub done: std::collections::BTreeSet<(String, String, String)>,
    /// Addon objects to create, update (with diffs) or delete (server-side dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<crate::addons::engine::ObjectChange>,
    /// Why the addons could not be planned (API unreachable, manifests missing, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addons_error: Option<String>,
}

impl OnlinePlan {
    /// Whether a run would do anything: the opposite of the text's "No changes" (files,
    /// commands, addon objects; a finding such as a missing host; addons that could not
    /// be planned, since then no change can be ruled out).
    pub fn has_changes(&self) -> bool {
        !(self.phases.is_empty()
            && self.findings.is_empty()
            && self.removals.is_empty()
            && self.addons_error.is_none()
            && self.addons.iter().all(|a| a.action == "unchanged"))
    }
}

/// The addons part of an online plan: through the first control-plane node's SSH
/// connection to the API, with the admin kubeconfig from the state.
async fn addon_changes(
    c: &LoadedCluster,
    doc: &crate::state::StateDocument,
    rt: &Runtime,
) -> Result<Vec<crate::addons::engine::ObjectChange>, String> {
    let wanted = crate::addons::manifest::wanted(c).map_err(|e| e.to_string())?;
    if wanted.is_empty() && doc.addons.is_empty() {
        return Ok(Vec::new());
    }
    let Some(kc) = doc.secrets.admin_kubeconfig.as_deref() else {
        return Err("the cluster has no admin kubeconfig yet (apply installs the addons after the control plane)".into());
    };
    let facts = rt.facts();
    let Some(first) = crate::facts::init_node(&c.topology, facts.as_deref()) else {
        return Ok(Vec::new());
    };
    let session = rt
        .pool
        .session(&first.address.to_string())
        .await
        .map_err(|e| e.to_string())?;
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        crate::error::render_chain(e)
            .trim_start_matches("error: ")
            .to_string()
    }
    let engine = rt
        .api
        .engine(c, first, session, kc, Default::default())
        .await
        .map_err(|e| chain(&e))?;
    let mut bundles =
        crate::addons::manifest::load(c, &crate::artifacts::Cache::default_location())
            .await
            .map_err(|e| chain(&e))?;
    engine.adapt(&mut bundles);
    engine
        .plan(&bundles, &doc.addons)
        .await
        .map_err(|e| chain(&e))
}

#[derive(Debug, Serialize)]
pub struct OnlinePhase {
    pub name: String,
    pub hosts: Vec<crate::phase::exec::ResolvedHost>,
}

pub fn online_text(p: &OnlinePlan) -> String {
    use crate::phase::exec::FileChange;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan for cluster `{}` against its hosts (state generation {}):",
        p.cluster, p.state_generation
    );
    if !p.findings.is_empty() {
        let _ = writeln!(o, "\nFound:");
        for f in &p.findings {
            let _ = writeln!(o, "  ! {f}");
        }
    }
    let addons_change = p.addons.iter().any(|a| a.action != "unchanged");
    if !p.has_changes() {
        o.push_str("No changes: the hosts and addons match the cluster file.\n");
        return o;
    }
    if !p.removals.is_empty() {
        let _ = writeln!(
            o,
            "\nRemove from the cluster (phase {}, one machine at a time):",
            phase::remove::NAME
        );
        for r in &p.removals {
            let _ = writeln!(o, "  - {r}");
        }
    }
    if addons_change {
        let _ = writeln!(o, "\nAddons:");
        o.push_str(&crate::ops::addons::plan_text(&p.addons));
    }
    if let Some(e) = &p.addons_error {
        let _ = writeln!(o, "\nAddons not planned: {e}");
    }
    if p.phases.is_empty() && p.findings.is_empty() {
        o.push_str("\nNo host changes: the hosts match the cluster file.\n");
        return o;
    }
    if p.phases.is_empty() {
        o.push_str("\nNo file or command changes on the hosts that answered.\n");
        return o;
    }
    for ph in &p.phases {
        let _ = writeln!(o, "\nPhase {}:", ph.name);
        for h in &ph.hosts {
            let _ = writeln!(o, "  {}", h.host);
            for f in &h.files {
                match &f.change {
                    FileChange::Create => {
                        let _ = writeln!(o, "    create {}", f.path);
                    }
                    FileChange::Update { diff } if diff.is_empty() => {
                        let _ = writeln!(o, "    update {} (holds secrets: no diff shown)", f.path);
                    }
                    FileChange::Update { diff } => {
                        let _ = writeln!(o, "    update {}", f.path);
                        for line in diff.lines() {
                            let _ = writeln!(o, "      {line}");
                        }
                    }
                }
            }
            for cmd in &h.commands {
                let _ = writeln!(o, "    run    {cmd}");
            }
        }
    }
    o
}

#[cfg(test)]
mod detailed_exitcode_tests {
    use super::*;

    fn plan() -> OnlinePlan {
        OnlinePlan {
            cluster: "c".into(),
            state_generation: 3,
            findings: Vec::new(),
            facts: Default::default(),
            removals: Vec::new(),
            phases: Vec::new(),
            done: Default::default(),
            addons: vec![crate::addons::engine::ObjectChange {
                addon: "metallb".into(),
                object: "Deployment/controller".into(),
                action: "unchanged",
                detail: None,
            }],
            addons_error: None,
        }
    }

    #[test]
    fn no_changes_only_when_the_text_says_so() {
        let p = plan();
        assert!(!p.has_changes());
        assert!(online_text(&p).contains("No changes"));
        let mut addon = plan();
        addon.addons[0].action = "update";
        let mut finding = plan();
        finding.findings.push("host cp-2 is missing".into());
        let mut unplanned = plan();
        unplanned.addons_error = Some("API unreachable".into());
        let mut phase = plan();
        phase.phases.push(OnlinePhase {
            name: "prepare-hosts".into(),
            hosts: Vec::new(),
        });
        for p in [addon, finding, unplanned, phase] {
            assert!(p.has_changes(), "{p:?}");
            assert!(!online_text(&p).contains("No changes:"), "{p:?}");
        }
    }
}
