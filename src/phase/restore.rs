//! `etcd-restore`: etcd rebuilt from a stored snapshot after quorum is lost (the
//! restore playbook; the joins after it bring the other control planes back).
//!
//! On the surviving control-plane node that holds the init configuration: the snapshot
//! is read from the state store and checked (sha256) and verified on the node with
//! etcd's own code *before* anything is stopped; then the etcd and kube-apiserver
//! manifests of every surviving control plane are held aside (processes gone), the
//! snapshot is restored as a one-member cluster with the node's real name and peer URL
//! and a fresh cluster token, swapped in as the data directory (the old one kept next
//! to it), etcd and then the apiserver come back, the Nodes of the other control planes
//! are deleted (they join again), other survivors are reset for their join, and the
//! watchers that cannot follow a restored revision are restarted (controller-manager,
//! scheduler, every kubelet, kube-proxy). A marker on the node makes a killed run
//! resume after the swap instead of restoring twice.

use super::exec::{self, HostError};
use super::{new_plan, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext, Step};
use crate::kube::{self, etcdctl, kubeadm, Kubeadm, MANIFESTS};
use crate::spec::Host;
use crate::transport::{SshSession, Transport, UploadSource, UploadTarget};
use std::sync::Arc;

const PKI_DIR: &str = "/etc/kubernetes/pki";
use std::time::Duration;

/// What `kubeforge restore` is told: the snapshot (resolved before the run).
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub snapshot: Option<String>,
}

pub struct EtcdRestore;

/// The mark a restore of `snapshot` leaves on the node it restored on (a killed run
/// resumes after the swap; `restore` lets a begun restore finish).
pub fn marker(snapshot: &str) -> String {
    format!("{}/etcd-restore-{snapshot}", super::APPLIED_DIR)
}

fn peer_url(h: &Host) -> String {
    match h.internal_address {
        std::net::IpAddr::V6(a) => format!("https://[{a}]:2380"),
        a => format!("https://{a}:2380"),
    }
}

/// Hold the etcd and kube-apiserver manifests aside and wait until both are gone.
const HOLD: &str = "mkdir -p {H} && for f in etcd kube-apiserver; do \
if [ -f {M}/$f.yaml ]; then mv {M}/$f.yaml {H}/$f.yaml; fi; done; \
for i in $(seq 120); do pgrep -x etcd >/dev/null || pgrep -f '^kube-apiserver ' >/dev/null || exit 0; sleep 1; done; \
echo 'etcd or kube-apiserver still runs 120s after its manifest was moved away' >&2; exit 1";

fn hold_command() -> String {
    HOLD.replace("{H}", etcdctl::HELD_DIR)
        .replace("{M}", MANIFESTS)
}

#[async_trait::async_trait]
impl Phase for EtcdRestore {
    fn name(&self) -> &'static str {
        "etcd-restore"
    }
    fn description(&self) -> &'static str {
        "rebuild etcd from a stored snapshot on the surviving control plane, then its apiserver"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let target = ctx
            .facts
            .and_then(|f| f.init_node(&ctx.cluster.topology))
            .map(|h| h.name.clone())
            .unwrap_or_else(|| "the surviving control plane".into());
        let rebuild = ctx.facts.is_some_and(|f| {
            !ctx.cluster
                .topology
                .control_planes()
                .iter()
                .any(|h| f.host(&h.name).is_some_and(|hf| hf.control_plane_manifests))
        });
        let mut lines = vec![
            "read the snapshot from the state store, check its sha256, verify it on the node with etcdctl (restore into a scratch directory) — before anything is stopped".to_string(),
        ];
        if rebuild {
            lines.push(format!("every control plane is lost: on the new {target}, write the cluster's CAs and service-account key from the state (the same CA: workers, kubeconfigs and tokens stay valid)"));
            lines.push(format!("on {target}: restore the snapshot as a one-member cluster (its own name and peer URL, a new cluster token) into etcd's data directory; `kubeadm init` (next phase) runs over it"));
        } else {
            lines.push(format!("on every surviving control plane: hold etcd.yaml and kube-apiserver.yaml aside in {}", etcdctl::HELD_DIR));
            lines.push(format!("on {target}: restore the snapshot as a one-member cluster (its own name and peer URL, a new cluster token), swap it in as the data directory (the old one kept as <dir>.before-restore-<time>)"));
            lines.push("reset the other surviving control planes (their etcd members belong to the lost cluster); they join again".into());
            lines.push(format!(
                "on {target}: etcd back (health), then kube-apiserver (/readyz)"
            ));
        }
        for line in lines {
            p.operator.push(Step::new(line));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let gate = |message: String| PhaseError::Gate {
            phase: phase.to_string(),
            message,
        };
        let err = |e: HostError| PhaseError::host(phase, e);
        let name = snapshot_name(ctx).map_err(gate)?;
        let topo = &ctx.cluster.topology;
        let target = target_node(ctx).map_err(gate)?;
        // Survivors: control planes that answer and run (or ran, held) a control plane.
        let mut survivors: Vec<(&Host, Arc<SshSession>)> = Vec::new();
        for h in topo.control_planes() {
            let Ok(s) = exec::session(ctx.rt, h).await else {
                continue;
            };
            let check = format!(
                "test -f {MANIFESTS}/etcd.yaml -o -f {held}/etcd.yaml -o -f {m}",
                held = etcdctl::HELD_DIR,
                m = marker(&name)
            );
            if s.exec(&check).await.is_ok_and(|o| o.success()) {
                survivors.push((h, s));
            }
        }
        let rebuild = survivors.is_empty();
        let ts = if rebuild {
            // Every control plane lost: the target is a new machine.
            exec::session(ctx.rt, target).await.map_err(|e| {
                gate(format!(
                    "every control plane is lost and {} (where the cluster is rebuilt) does not answer: {e}",
                    target.name
                ))
            })?
        } else {
            match survivors.iter().find(|(h, _)| h.name == target.name) {
                Some((_, s)) => s.clone(),
                None => {
                    return Err(gate(format!(
                        "{} (the control plane to restore on) does not answer or runs no control plane while {} survive: bring it back first",
                        target.name,
                        survivors
                            .iter()
                            .map(|(h, _)| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        };
        let t = ts.as_ref();
        let done = t
            .exec(&format!("test -f {}", marker(&name)))
            .await
            .is_ok_and(|o| o.success());
        let pki = if rebuild && !done {
            Some(shared_pki(ctx, phase).await?)
        } else {
            None
        };
        if done {
            ctx.note(format!(
                "{}: etcd was restored from {name} by an earlier run; finishing",
                target.name
            ));
        } else {
            // 1. The snapshot, checked and verified before anything stops.
            let file = ctx
                .state
                .store
                .get_snapshot(&name)
                .await
                .map_err(|source| PhaseError::State {
                    phase: phase.into(),
                    source,
                })?;
            let snap = etcdctl::check_snapshot_file(&file)
                .map_err(|m| gate(format!("snapshot {name} refused, nothing was stopped: {m}")))?;
            crate::backup::check_stored(&ctx.state.store, &name, &snap.sha256)
                .await
                .map_err(|m| gate(format!("snapshot {name} refused, nothing was stopped: {m}")))?;
            let path = etcdctl::upload_snapshot(t, &target.name, &name, file)
                .await
                .map_err(err)?;
            let status = etcdctl::verify(t, &target.name, &path, ctx.secrets)
                .await
                .map_err(|e| {
                    gate(format!(
                        "snapshot {name} failed verification on {}, nothing was stopped: {e}",
                        target.name
                    ))
                })?;
            ctx.note(format!(
                "snapshot {name}: {} bytes, revision {}, {} keys, verified on {}",
                snap.db.len(),
                status.revision,
                status.total_key,
                target.name
            ));
            // 2. Every surviving etcd and apiserver stopped; on a new machine, the
            //    cluster's own CAs and service-account key from the state.
            for (h, s) in &survivors {
                exec::run(
                    s.as_ref(),
                    &h.name,
                    &hold_command(),
                    ctx.secrets,
                    ctx.rt.verbose,
                )
                .await
                .map_err(err)?;
            }
            if let Some(pki) = &pki {
                for (file, content) in pki {
                    let mode = if file.ends_with(".key") { 0o600 } else { 0o644 };
                    t.upload(
                        UploadSource::Bytes(bytes::Bytes::from(content.clone().into_bytes())),
                        &UploadTarget::new(format!("{PKI_DIR}/{file}"), mode),
                    )
                    .await
                    .map_err(|source| {
                        err(HostError::Transport {
                            host: target.name.clone(),
                            source,
                        })
                    })?;
                }
                ctx.note(format!(
                    "{}: the cluster's CAs and service-account key written from the state ({} files)",
                    target.name,
                    pki.len()
                ));
            }
            // 3. Restored as a one-member cluster and swapped in.
            let held = format!("{}/etcd.yaml", etcdctl::HELD_DIR);
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            let out_dir = format!("{}/restored", etcdctl::WORK_DIR);
            let token = format!("kubeforge-restore-{stamp}");
            let restore =
                etcdctl::restore_command(&path, &out_dir, &target.name, &peer_url(target), &token);
            let swap = format!(
                "d=$(sed -n 's/^ *- --data-dir=//p' {held} 2>/dev/null | head -n1); d=${{d:-/var/lib/etcd}}; \
{restore} && if [ -d \"$d\" ]; then mv \"$d\" \"$d.before-restore-{stamp}\"; fi && mv {out_dir} \"$d\" && \
chmod 700 \"$d\" && mkdir -p {applied} && touch {m} && rm -f {path}",
                applied = super::APPLIED_DIR,
                m = marker(&name)
            );
            exec::run(t, &target.name, &swap, ctx.secrets, ctx.rt.verbose)
                .await
                .map_err(err)?;
            ctx.note(format!(
                "{}: etcd data restored from {name} (cluster token {token}; an old data directory is kept as <dir>.before-restore-{stamp})",
                target.name
            ));
            // Other survivors: their members belong to the lost cluster; they join anew.
            let reset = format!(
                "{} || true; rm -rf {held_dir} /var/lib/etcd {MANIFESTS}/*.yaml && rm -f {init} {join}",
                Kubeadm::of(ctx.cluster).reset(),
                held_dir = etcdctl::HELD_DIR,
                init = kubeadm::INIT_DONE,
                join = kubeadm::JOIN_DONE,
            );
            for (h, s) in &survivors {
                if h.name == target.name {
                    continue;
                }
                exec::run(s.as_ref(), &h.name, &reset, ctx.secrets, ctx.rt.verbose)
                    .await
                    .map_err(err)?;
                ctx.note(format!(
                    "{}: reset (its etcd member belongs to the lost cluster); it joins again",
                    h.name
                ));
            }
        }
        if rebuild {
            // kubeadm init (the next phase) runs over the restored data.
            return Ok(());
        }
        // 4. etcd back (its manifest names only itself now), then the apiserver.
        let member = format!("{}={}", target.name, peer_url(target));
        let back = format!(
            "h={held}; if [ -f $h/etcd.yaml ]; then \
sed -i -e 's|--initial-cluster=.*|--initial-cluster={member}|' -e '/--initial-cluster-state=/d' $h/etcd.yaml && \
mv $h/etcd.yaml {MANIFESTS}/etcd.yaml; fi",
            held = etcdctl::HELD_DIR
        );
        exec::run(t, &target.name, &back, ctx.secrets, ctx.rt.verbose)
            .await
            .map_err(err)?;
        kube::etcd::wait_healthy(t, "https://127.0.0.1:2379", Duration::from_secs(120))
            .await
            .map_err(|e| {
                gate(format!(
                    "etcd on {} did not become healthy within 120s of its restore: {e}",
                    target.name
                ))
            })?;
        exec::run(
            t,
            &target.name,
            &format!(
                "h={held}; if [ -f $h/kube-apiserver.yaml ]; then mv $h/kube-apiserver.yaml {MANIFESTS}/; fi",
                held = etcdctl::HELD_DIR
            ),
            ctx.secrets,
            ctx.rt.verbose,
        )
        .await
        .map_err(err)?;
        let port = ctx.cluster.cluster.spec.networking.api_server_port;
        let api = std::net::SocketAddr::new(target.internal_address, port).to_string();
        kube::wait_readyz(t, &api, Duration::from_secs(180))
            .await
            .map_err(|m| {
                gate(format!(
                    "kube-apiserver on {} after the restore: {m}",
                    target.name
                ))
            })?;
        Ok(())
    }
}

/// The snapshot the run restores.
fn snapshot_name(ctx: &ApplyContext<'_>) -> Result<String, String> {
    ctx.restore
        .snapshot
        .clone()
        .ok_or_else(|| "no snapshot was chosen for the restore".to_string())
}

/// The control plane the restore happens on: the one that holds the init configuration.
fn target_node<'a>(ctx: &ApplyContext<'a>) -> Result<&'a Host, String> {
    let topo = &ctx.cluster.topology;
    let facts = ctx.rt.facts();
    let name = facts
        .as_ref()
        .and_then(|f| f.init_node(topo))
        .or_else(|| topo.first_control_plane())
        .map(|h| h.name.clone());
    name.and_then(|n| topo.host(&n))
        .ok_or_else(|| "the inventory has no control-plane host".to_string())
}

/// The shared PKI from the state, every file of it (a rebuild needs them all).
async fn shared_pki(
    ctx: &ApplyContext<'_>,
    phase: &str,
) -> Result<Vec<(String, String)>, PhaseError> {
    let doc = ctx.state.get().await;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for f in super::init::SHARED_PKI {
        match doc.secrets.pki.get(f) {
            Some(c) if !c.is_empty() => out.push((f.to_string(), c.clone())),
            _ => missing.push(f),
        }
    }
    if !missing.is_empty() {
        return Err(PhaseError::Gate {
            phase: phase.to_string(),
            message: format!(
                "every control plane is lost and the state lacks {} of the cluster's PKI: a rebuild with the same CAs is not possible \
(kubeforge stores them at `kubeadm init` and on every apply since this version)",
                missing.join(", ")
            ),
        });
    }
    Ok(out)
}

/// `restore-finish`: after the restored control plane runs (and, on a rebuild, after
/// `kubeadm init` over the restored data): Nodes of machines that are to join again
/// deleted, kubeadm's ClusterStatus pruned, and the watchers that cannot follow a
/// restored revision restarted.
pub struct RestoreFinish;

#[async_trait::async_trait]
impl Phase for RestoreFinish {
    fn name(&self) -> &'static str {
        "restore-finish"
    }
    fn description(&self) -> &'static str {
        "after a restore: stale Nodes deleted, controllers, kubelets and kube-proxy restarted"
    }
    fn plan(&self, _ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        for line in [
            "delete the Node objects of machines that join again (new or reset: no kubelet.conf)",
            "drop kubeadm ClusterStatus entries of the control planes that join again",
            "restart kube-controller-manager and kube-scheduler, every kubelet, and kube-proxy (etcd 3.4 cannot move revisions forward after a restore)",
        ] {
            p.operator.push(Step::new(line));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, _plan: &PhasePlan) -> Result<(), PhaseError> {
        let phase = self.name();
        let err = |e: HostError| PhaseError::host(phase, e);
        let target = target_node(ctx).map_err(|message| PhaseError::Gate {
            phase: phase.to_string(),
            message,
        })?;
        let ts = exec::session(ctx.rt, target).await.map_err(err)?;
        let t = ts.as_ref();
        let topo = &ctx.cluster.topology;
        // Through the load balancers: they must have seen the apiserver back.
        super::wait_readyz(ctx, t, phase).await?;
        let mut deleted = Vec::new();
        let mut restart = Vec::new();
        for h in topo.kubernetes_nodes() {
            if h.name == target.name {
                continue;
            }
            let joined = match exec::session(ctx.rt, h).await {
                Ok(s) => s
                    .exec(&format!("test -f {}", kube::KUBELET_CONF))
                    .await
                    .is_ok_and(|o| o.success()),
                // Does not answer: its Node stays (it may come back as it was).
                Err(_) => continue,
            };
            if joined {
                restart.push(h);
            } else {
                kube::delete_node(t, &target.name, &h.name, ctx.secrets)
                    .await
                    .map_err(err)?;
                deleted.push(h.name.clone());
            }
        }
        if !deleted.is_empty() {
            ctx.note(format!(
                "deleted the Nodes of {} (they join again)",
                deleted.join(", ")
            ));
        }
        if ctx.cluster.version().minor < 22 {
            let keep: Vec<String> = topo
                .control_planes()
                .iter()
                .filter(|h| !deleted.contains(&h.name))
                .map(|h| h.name.clone())
                .collect();
            let removed = kube::remove_stale_api_endpoints(t, &target.name, &keep, ctx.secrets)
                .await
                .map_err(err)?;
            if !removed.is_empty() {
                ctx.note(format!(
                    "kubeadm ClusterStatus entries removed (they join again): {}",
                    removed.join(", ")
                ));
            }
        }
        exec::run(
            t,
            &target.name,
            "pkill -f '^kube-controller-manager ' || true; pkill -f '^kube-scheduler ' || true; systemctl restart kubelet",
            ctx.secrets,
            ctx.rt.verbose,
        )
        .await
        .map_err(err)?;
        for h in restart {
            if let Ok(s) = exec::session(ctx.rt, h).await {
                let _ = s.exec("systemctl restart kubelet").await;
            }
        }
        super::wait_readyz(ctx, t, phase).await?;
        kube::replace_kube_proxies(t, &target.name, None, ctx.secrets, ctx.rt.verbose)
            .await
            .map_err(err)?;
        ctx.note(
            "kube-controller-manager and kube-scheduler restarted, kubelets restarted, kube-proxy Pods replaced"
                .into(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hold_moves_both_manifests_and_waits_for_the_processes() {
        let c = super::hold_command();
        assert!(c.contains(
            "mv /etc/kubernetes/manifests/$f.yaml /etc/kubernetes/kubeforge-held/$f.yaml"
        ));
        assert!(c.contains("pgrep -x etcd"));
    }
}
