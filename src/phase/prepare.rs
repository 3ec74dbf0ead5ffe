use super::exec::{HostError, SpecialSteps};
use super::{
    host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan, PlanContext,
    Special, Step,
};
use crate::render::views::{Profile, BIN_DIR, CGROUP_SCRIPT};
use crate::render::FileGroup;
use crate::spec::Host;
use crate::transport::shell::{quote, FILE_EQUALS};
use crate::transport::Transport;

pub struct PrepareHosts;

/// Marks the step that installs the Kubernetes binaries (carried out by the phase).
const INSTALL: &str = "install kubeadm, kubelet, kubectl";

/// Container machines: kubelet's cgroups go under the machine's own cgroup (PID 1's,
/// less systemd's init.scope), or every machine's kubelet would share (and fight over)
/// /kubepods on the docker host, and `docker rm` would leave pods behind.
/// (The first line of /proc/1/cgroup for the memory controller, or cgroup v2's `0::`;
/// read by the shell, no awk.)
const CGROUP_ROOT: &str =
    "cg=; while IFS=: read -r kfc_n kfc_c kfc_p; do if [ \"$kfc_c\" = memory ] || [ \"$kfc_n\" = 0 ]; then \
cg=$kfc_p; break; fi; done < /proc/1/cgroup; \
cg=${cg%/init.scope}; want=\"KUBELET_EXTRA_ARGS=--cgroup-root=${cg:-/}\"";

#[async_trait::async_trait]
impl Phase for PrepareHosts {
    fn name(&self) -> &'static str {
        "prepare-hosts"
    }
    fn description(&self) -> &'static str {
        "swap off, kernel modules and sysctls, containerd, kubelet/kubeadm/kubectl"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let c = ctx.cluster;
        let version = format!("v{}", c.version());
        let source = match &c.cluster.spec.artifacts.mirror {
            Some(m) => format!("mirror {m}"),
            None => "the upstream release site".to_string(),
        };
        let container = Profile::of(c).container;
        // With a mirror, the control-plane images are pushed too: the step is done only
        // when containerd has every one of them.
        let provides_images = crate::artifacts::Source::from_spec(
            c.cluster.spec.artifacts.mirror.as_deref(),
            &c.base_dir,
        )
        .map(|s| s.provides_images())
        .unwrap_or(false);
        let images: Vec<String> = match crate::phase::binaries::catalogue(c) {
            Ok(cat) if provides_images => cat.images.iter().map(|i| i.reference()).collect(),
            _ => Vec::new(),
        };
        // kubeadm's version as the facts keep it (asked again only when the binary
        // changed: a Go process start saved).
        let mut installed_check = format!(
            "{} [ \"$(kfv kubeadm {BIN_DIR}/kubeadm)\" = {} ] && [ -x {BIN_DIR}/kubelet ] && [ -x {BIN_DIR}/kubectl ]",
            crate::facts::version_function(crate::facts::VERSION_CACHE),
            quote(&format!("kubeadm={version}"))
        );
        // One listing of containerd's images (a `ctr` per image cost a Go process
        // each), every reference looked up in it as a whole line.
        // The listing is kept with the identity of containerd's metadata database: a
        // `ctr` (a Go process start) only when an image may have changed.
        if !images.is_empty() {
            installed_check = format!(
                "{} {} {installed_check} && imgs=$(kfimgs)",
                crate::transport::shell::HAS_WORD,
                crate::facts::image_list_function(
                    crate::facts::CONTAINERD_META_DB,
                    crate::facts::IMAGE_LIST_CACHE
                )
            );
            for i in &images {
                installed_check.push_str(&format!(" && kfhas \"$imgs\" {}", quote(i)));
            }
        }
        for h in &ctx.hosts {
            let files = ctx.files_for(&h.name, FileGroup::NodeBase);
            let pick = |suffix: &str| {
                files
                    .iter()
                    .copied()
                    .filter(|f| f.path.contains(suffix))
                    .collect::<Vec<_>>()
            };
            let mut cmds = vec![Step::cmd("swapoff -a").unless_check(
                "no swap is active",
                // /proc/swaps (what `swapon --show` reads): a header, then a line per swap.
                "kfs_l=; { read -r kfs_h; read -r kfs_l; } 2>/dev/null < /proc/swaps; [ -z \"$kfs_l\" ]",
            )];
            if container {
                cmds.push(
                    Step::cmd(
                        "echo 'br_netfilter is not loaded on the docker host: modprobe br_netfilter there' >&2; exit 1",
                    )
                    .unless_check(
                        "br_netfilter is loaded (by the docker host)",
                        "test -e /proc/sys/net/bridge/bridge-nf-call-iptables",
                    ),
                );
                // The script kubelet's drop-in runs before each start makes the root
                // exist in every controller (PID 1 sits at `/` in some; systemd prunes
                // empty cgroups on daemon-reload), so only the setting is checked here.
                cmds.push(
                    Step::cmd(format!(
                        "{CGROUP_ROOT}; printf '%s\\n' \"$want\" > /etc/default/kubelet && {CGROUP_SCRIPT} && systemctl try-restart kubelet"
                    ))
                    .unless_check(
                        "kubelet's cgroup root is the machine's cgroup",
                        format!("{CGROUP_ROOT}; {FILE_EQUALS} kfeq /etc/default/kubelet \"$want\""),
                    ),
                );
            } else {
                cmds.push(
                    Step::cmd("modprobe overlay && modprobe br_netfilter").unless_check(
                        "both modules are loaded",
                        "grep -qw overlay /proc/filesystems && test -d /proc/sys/net/bridge",
                    ),
                );
            }
            cmds.push(restart_step(
                "sysctl",
                "sysctl -e -p /etc/sysctl.d/90-kubeforge.conf",
                &pick("sysctl.d"),
                None,
            ));
            cmds.push(restart_step(
                "containerd",
                "systemctl daemon-reload && systemctl enable containerd && systemctl restart containerd",
                &pick("containerd"),
                Some("containerd"),
            ));
            cmds.push(
                Step::special(Special::InstallArtifacts, format!(
                    "{INSTALL} {version} into {BIN_DIR} from {source}, sha256-verified"
                ))
                .unless_check(
                    if images.is_empty() {
                        format!("`kubeadm version` already reports {version}")
                    } else {
                        format!("`kubeadm version` already reports {version} and containerd has the {} images", images.len())
                    },
                    installed_check.clone(),
                ),
            );
            cmds.push(restart_step(
                "kubelet-unit",
                // A running kubelet is restarted with its new unit (running pods and
                // static pods keep running); a fresh node's kubelet is started by kubeadm.
                "systemctl daemon-reload && systemctl enable kubelet && systemctl try-restart kubelet",
                &pick("kubelet"),
                None,
            ));
            p.hosts
                .push(host_plan(ctx, h, &[FileGroup::NodeBase], cmds));
        }
        p
    }

    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        if plan.hosts.is_empty() {
            return Ok(());
        }
        if ctx.nothing_to_do(plan) {
            // Every host found done moments ago: nothing to fetch or verify.
            return ctx.hosts(plan, &super::exec::NoSpecial).await.map(|_| ());
        }
        // Fetched and verified once, before any host is touched.
        let fetched = crate::phase::binaries::fetch(ctx.cluster)
            .await
            .map_err(|source| PhaseError::Artifacts {
                phase: self.name().into(),
                source,
            })?;
        ctx.hosts(plan, &Installer { fetched }).await.map(|_| ())
    }
}

struct Installer {
    fetched: Vec<crate::artifacts::LocalArtifact>,
}

#[async_trait::async_trait]
impl SpecialSteps for Installer {
    async fn special(&self, t: &dyn Transport, host: &Host, step: &Step) -> Result<(), HostError> {
        if step.special == Some(Special::InstallArtifacts) {
            return crate::phase::binaries::install(t, host, &self.fetched).await;
        }
        Ok(())
    }
}
