//! The etcd snapshot timer on the control-plane nodes (`spec.backup`): its script and
//! units, enabled (or, with `intervalMinutes: 0`, disabled). The snapshots it takes are
//! collected into the state store by `kubeforge backup`.

use super::{
    exec, host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan,
    PlanContext, Step,
};
use crate::render::views::{SNAPSHOT_TIMER_DIR, SNAPSHOT_UNIT};
use crate::render::FileGroup;

pub struct EtcdBackupTimer;

#[async_trait::async_trait]
impl Phase for EtcdBackupTimer {
    fn name(&self) -> &'static str {
        "etcd-backup"
    }
    fn description(&self) -> &'static str {
        "the etcd snapshot timer on the control-plane nodes (the leader takes one per interval)"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let b = &ctx.cluster.cluster.spec.backup;
        for h in &ctx.hosts {
            let files = ctx.files_for(&h.name, FileGroup::Backup);
            let step = if b.interval_minutes == 0 {
                Step::cmd(format!(
                    "systemctl disable --now {SNAPSHOT_UNIT}.timer 2>/dev/null; true  # spec.backup.intervalMinutes: 0"
                ))
                .unless_check(
                    "the timer is off",
                    format!("! systemctl is-enabled --quiet {SNAPSHOT_UNIT}.timer 2>/dev/null"),
                )
            } else {
                let mut s = restart_step(
                    "etcd-snapshot-timer",
                    &format!(
                        "systemctl daemon-reload && systemctl enable {SNAPSHOT_UNIT}.timer && systemctl restart {SNAPSHOT_UNIT}.timer"
                    ),
                    &files,
                    Some(&format!("{SNAPSHOT_UNIT}.timer")),
                );
                s.action = format!(
                    "{}  # every {} min, leader only, {} kept in {SNAPSHOT_TIMER_DIR}",
                    s.action, b.interval_minutes, b.keep
                );
                s
            };
            p.hosts
                .push(host_plan(ctx, h, &[FileGroup::Backup], vec![step]));
        }
        p
    }

    /// The timer on every control plane, then what it took so far into the state store
    /// (verified, encrypted) and retention applied. Collecting is best effort: a
    /// snapshot that cannot be collected now stays on its node for the next run.
    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        ctx.hosts(plan, &exec::NoSpecial).await?;
        let store = &ctx.state.store;
        match crate::backup::collect(self.name(), ctx.rt, ctx.cluster, store, ctx.secrets).await {
            Ok((got, problems)) => {
                for m in &got {
                    ctx.note(format!(
                        "collected etcd snapshot {} from {} (revision {}, {} bytes)",
                        m.name, m.source, m.revision, m.db_bytes
                    ));
                }
                for p in problems {
                    ctx.note(format!("etcd snapshot not collected: {p}"));
                }
            }
            Err(e) => ctx.note(format!("etcd snapshots not collected: {e}")),
        }
        let keep = ctx.cluster.cluster.spec.backup.keep as usize;
        match crate::backup::prune(store, keep).await {
            Ok(gone) if !gone.is_empty() => ctx.note(format!(
                "retention (keep {keep}): removed {}",
                gone.join(", ")
            )),
            Ok(_) => {}
            Err(e) => ctx.note(format!("etcd snapshot retention not applied: {e}")),
        }
        Ok(())
    }
}
