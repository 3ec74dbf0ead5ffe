//! What one Kubernetes version needs: the node binaries, the control-plane images kubeadm
//! of that release pulls, and the host packages the binaries expect.
//!
//! Image tags follow kubeadm's own constants (`cmd/kubeadm/app/constants`): pause, etcd and
//! CoreDNS are pinned per minor release and were bumped in some patch releases, so the
//! table below is keyed by minor with patch boundaries. 1.20 was checked against the
//! v1.20.2 tree (`DefaultEtcdVersion = "3.4.13-0"`, `CoreDNSVersion = "1.7.0"`, pause 3.2).

use super::ArtifactsError;
use serde::Serialize;

/// Oldest and newest minor release the catalogue knows.
pub const MIN_MINOR: u64 = 20;
pub const MAX_MINOR: u64 = 32;

/// CPU architecture of the hosts, as Kubernetes release paths spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A release binary installed on every Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BinaryArtifact {
    /// `kubeadm`, `kubelet`, `kubectl`.
    pub name: String,
    /// Path relative to a release root (upstream `https://dl.k8s.io/release` or a mirror):
    /// `v1.20.2/bin/linux/amd64/kubeadm`; the checksum is this path + `.sha256`.
    pub path: String,
    /// Where it lands on the host.
    pub remote_path: String,
    pub mode: u32,
    /// The release ships it inside a `.tar.gz` (at `path`) holding the file `name`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub archive: bool,
}

/// What a control-plane image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageRole {
    ControlPlane,
    Proxy,
    Sandbox,
    Etcd,
    Dns,
}

/// A container image kubeadm of this version uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageArtifact {
    /// Short name: `kube-apiserver`, `pause`, `etcd`, `coredns`.
    pub name: String,
    pub role: ImageRole,
    /// Repository below the registry: `kube-apiserver`, `coredns/coredns` (1.21+).
    pub repository: String,
    pub tag: String,
    /// The registry (kubeadm's `imageRepository`).
    pub registry: String,
    /// Path of the pre-loaded docker-archive tarball relative to a mirror root:
    /// `images/v1.20.2/kube-apiserver-v1.20.2.tar` (+ `.sha256`).
    pub tarball: String,
}

impl ImageArtifact {
    /// Full reference kubeadm expects: `k8s.gcr.io/kube-apiserver:v1.20.2`.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    /// The reference under another registry (what a tarball built for the default
    /// registry is re-tagged to when `imageRepository` is set).
    pub fn reference_in(&self, registry: &str) -> String {
        format!("{registry}/{}:{}", self.repository, self.tag)
    }
}

/// A package the host must provide (from its distribution) for these binaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRequirement {
    pub name: &'static str,
    /// Minimum version, when there is one.
    pub min_version: Option<&'static str>,
    /// The Debian/Ubuntu package that provides it.
    pub debian_package: &'static str,
    pub why: &'static str,
}

/// Everything one Kubernetes version needs on its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    /// `v1.20.2`.
    pub version: String,
    pub arch: Arch,
    pub binaries: Vec<BinaryArtifact>,
    pub images: Vec<ImageArtifact>,
    pub host_packages: Vec<HostRequirement>,
    /// kubeadm's default image repository for this version.
    pub default_registry: String,
}

/// pause, etcd and CoreDNS tags kubeadm of a release pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImages {
    pub pause: &'static str,
    pub etcd: &'static str,
    /// `(repository, tag)`: `coredns` `1.7.0` until 1.20, `coredns/coredns` `v1.8.0` after.
    pub coredns: (&'static str, &'static str),
}

/// kubeadm's pinned images for `minor.patch`; `None` outside MIN_MINOR..=MAX_MINOR.
pub fn pinned_images(minor: u64, patch: u64) -> Option<PinnedImages> {
    let (pause, etcd, coredns) = match minor {
        20 => ("3.2", "3.4.13-0", ("coredns", "1.7.0")),
        21 => ("3.4.1", "3.4.13-0", ("coredns/coredns", "v1.8.0")),
        22 => (
            "3.5",
            if patch >= 17 { "3.5.6-0" } else { "3.5.0-0" },
            ("coredns/coredns", "v1.8.4"),
        ),
        23 => (
            "3.6",
            match patch {
                0..=13 => "3.5.1-0",
                14 => "3.5.5-0",
                _ => "3.5.6-0",
            },
            ("coredns/coredns", "v1.8.6"),
        ),
        24 => (
            "3.7",
            match patch {
                0..=7 => "3.5.3-0",
                8 => "3.5.5-0",
                _ => "3.5.6-0",
            },
            ("coredns/coredns", "v1.8.6"),
        ),
        25 => (
            "3.8",
            match patch {
                0..=3 => "3.5.4-0",
                4 => "3.5.5-0",
                5..=14 => "3.5.6-0",
                _ => "3.5.9-0",
            },
            ("coredns/coredns", "v1.9.3"),
        ),
        26 => (
            "3.9",
            match patch {
                0..=9 => "3.5.6-0",
                10..=12 => "3.5.9-0",
                _ => "3.5.10-0",
            },
            ("coredns/coredns", "v1.9.3"),
        ),
        27 => (
            "3.9",
            match patch {
                0..=6 => "3.5.7-0",
                7..=9 => "3.5.9-0",
                10..=11 => "3.5.10-0",
                _ => "3.5.12-0",
            },
            ("coredns/coredns", "v1.10.1"),
        ),
        28 => (
            "3.9",
            match patch {
                0..=5 => "3.5.9-0",
                6..=7 => "3.5.10-0",
                8..=13 => "3.5.12-0",
                _ => "3.5.15-0",
            },
            ("coredns/coredns", "v1.10.1"),
        ),
        29 => (
            "3.9",
            match patch {
                0..=2 => "3.5.10-0",
                3..=8 => "3.5.12-0",
                _ => "3.5.15-0",
            },
            ("coredns/coredns", "v1.11.1"),
        ),
        30 => (
            "3.9",
            if patch <= 4 { "3.5.12-0" } else { "3.5.15-0" },
            (
                "coredns/coredns",
                if patch <= 4 { "v1.11.1" } else { "v1.11.3" },
            ),
        ),
        31 => (
            "3.10",
            "3.5.15-0",
            (
                "coredns/coredns",
                if patch == 0 { "v1.11.1" } else { "v1.11.3" },
            ),
        ),
        32 => ("3.10", "3.5.16-0", ("coredns/coredns", "v1.11.3")),
        _ => return None,
    };
    Some(PinnedImages {
        pause,
        etcd,
        coredns,
    })
}

/// kubeadm's default `imageRepository`: k8s.gcr.io until 1.24, registry.k8s.io from 1.25.
pub fn default_registry(minor: u64) -> &'static str {
    if minor < 25 {
        "k8s.gcr.io"
    } else {
        "registry.k8s.io"
    }
}

/// The three binaries every node gets, in install order.
pub const NODE_BINARIES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// Where binaries land on hosts (the kubelet unit's `ExecStart` points here).
pub const BIN_DIR: &str = "/usr/local/bin";
/// The catalogue path prefix of cri-tools releases (upstream: their GitHub release page).
pub const CRI_TOOLS: &str = "cri-tools";

/// `v1.20.2` for a version (pre-release and build metadata kept).
pub fn version_tag(v: &semver::Version) -> String {
    format!("v{v}")
}

/// The image tag kubeadm gives the control-plane images of `v`: the version with every
/// character outside `[-a-zA-Z0-9_.]` made `_` (kubeadm's KubernetesVersionToImageTag:
/// `v1.20.2+kf.1` is tagged `v1.20.2_kf.1`).
pub fn image_tag(v: &semver::Version) -> String {
    version_tag(v)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Catalogue {
    /// The catalogue for `v` on amd64 hosts.
    pub fn for_version(v: &semver::Version) -> Result<Catalogue, ArtifactsError> {
        Catalogue::for_version_arch(v, Arch::Amd64)
    }

    pub fn for_version_arch(v: &semver::Version, arch: Arch) -> Result<Catalogue, ArtifactsError> {
        if v.major != 1 {
            return Err(ArtifactsError::UnsupportedVersion {
                version: version_tag(v),
            });
        }
        let pinned =
            pinned_images(v.minor, v.patch).ok_or_else(|| ArtifactsError::UnsupportedVersion {
                version: version_tag(v),
            })?;
        let tag = version_tag(v);
        let kube_tag = image_tag(v);
        let registry = default_registry(v.minor).to_string();
        let binaries = NODE_BINARIES
            .iter()
            .map(|name| BinaryArtifact {
                name: name.to_string(),
                path: format!("{tag}/bin/linux/{arch}/{name}"),
                remote_path: format!("{BIN_DIR}/{name}"),
                mode: 0o755,
                archive: false,
            })
            .collect();
        let image =
            |name: &str, role: ImageRole, repository: &str, image_tag: &str| ImageArtifact {
                name: name.to_string(),
                role,
                repository: repository.to_string(),
                tag: image_tag.to_string(),
                registry: registry.clone(),
                tarball: format!("images/{tag}/{name}-{image_tag}.tar"),
            };
        let mut images = Vec::new();
        for c in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            images.push(image(c, ImageRole::ControlPlane, c, &kube_tag));
        }
        images.push(image(
            "kube-proxy",
            ImageRole::Proxy,
            "kube-proxy",
            &kube_tag,
        ));
        images.push(image("pause", ImageRole::Sandbox, "pause", pinned.pause));
        images.push(image("etcd", ImageRole::Etcd, "etcd", pinned.etcd));
        images.push(image(
            "coredns",
            ImageRole::Dns,
            pinned.coredns.0,
            pinned.coredns.1,
        ));
        let containerd_min = if v.minor >= 26 { "1.6.0" } else { "1.4.0" };
        let host_packages = vec![
            HostRequirement {
                name: "containerd",
                min_version: Some(containerd_min),
                debian_package: "containerd",
                why: "the CRI runtime (1.26+ needs CRI v1: containerd 1.6 or newer)",
            },
            HostRequirement {
                name: "runc",
                min_version: Some("1.0.0"),
                debian_package: "runc",
                why: "the OCI runtime containerd starts containers with",
            },
            HostRequirement {
                name: "CNI plugins",
                min_version: Some("0.8.6"),
                debian_package: "containernetworking-plugins",
                why: "bridge, host-local, portmap, loopback for the pod network",
            },
            HostRequirement {
                name: "conntrack",
                min_version: None,
                debian_package: "conntrack",
                why: "kubeadm preflight and kube-proxy",
            },
            HostRequirement {
                name: "iptables",
                min_version: None,
                debian_package: "iptables",
                why: "kubelet and kube-proxy rules",
            },
            HostRequirement {
                name: "socat",
                min_version: None,
                debian_package: "socat",
                why: "kubectl port-forward",
            },
            HostRequirement {
                name: "ebtables",
                min_version: None,
                debian_package: "ebtables",
                why: "kubeadm preflight",
            },
            HostRequirement {
                name: "ethtool",
                min_version: None,
                debian_package: "ethtool",
                why: "kubeadm preflight",
            },
        ];
        Ok(Catalogue {
            version: tag,
            arch,
            binaries,
            images,
            host_packages,
            default_registry: registry,
        })
    }

    /// With crictl (cri-tools of the same minor release, a `.tar.gz` on its release
    /// page; a mirror holds it at the same relative path): kubeadm needs it to check and
    /// pull images, e.g. in `kubeadm upgrade apply`.
    pub fn with_crictl(mut self) -> Catalogue {
        let minor = self
            .version
            .trim_start_matches('v')
            .split('.')
            .nth(1)
            .unwrap_or("0")
            .to_string();
        let v = format!("v1.{minor}.0");
        self.binaries.push(BinaryArtifact {
            name: "crictl".into(),
            path: format!("{CRI_TOOLS}/{v}/crictl-{v}-linux-{}.tar.gz", self.arch),
            remote_path: format!("{BIN_DIR}/crictl"),
            mode: 0o755,
            archive: true,
        });
        self
    }

    /// Images are pulled from (and tagged for) `registry` instead of kubeadm's default:
    /// the value of `artifacts.imageRepository`.
    pub fn with_image_repository(mut self, registry: &str) -> Catalogue {
        let registry = registry.trim_end_matches('/');
        for i in &mut self.images {
            i.registry = registry.to_string();
        }
        self
    }

    /// Leave out images by short name (e.g. `coredns` when the addon/coredns phase is
    /// skipped); unknown names are an error so a typo cannot drop nothing silently.
    pub fn without_images(mut self, names: &[&str]) -> Result<Catalogue, ArtifactsError> {
        for n in names {
            if !self.images.iter().any(|i| i.name == *n) {
                return Err(ArtifactsError::UnknownImage {
                    name: n.to_string(),
                    known: self
                        .images
                        .iter()
                        .map(|i| i.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        self.images.retain(|i| !names.contains(&i.name.as_str()));
        Ok(self)
    }

    /// The image with this short name.
    pub fn image(&self, name: &str) -> Option<&ImageArtifact> {
        self.images.iter().find(|i| i.name == name)
    }

    /// The binary with this name.
    pub fn binary(&self, name: &str) -> Option<&BinaryArtifact> {
        self.binaries.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn v1_20_2_matches_kubeadm_1_20() {
        let c = Catalogue::for_version(&v("1.20.2")).unwrap();
        let refs: Vec<String> = c.images.iter().map(|i| i.reference()).collect();
        assert_eq!(
            refs,
            [
                "k8s.gcr.io/kube-apiserver:v1.20.2",
                "k8s.gcr.io/kube-controller-manager:v1.20.2",
                "k8s.gcr.io/kube-scheduler:v1.20.2",
                "k8s.gcr.io/kube-proxy:v1.20.2",
                "k8s.gcr.io/pause:3.2",
                "k8s.gcr.io/etcd:3.4.13-0",
                "k8s.gcr.io/coredns:1.7.0",
            ]
        );
        let paths: Vec<&str> = c.binaries.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "v1.20.2/bin/linux/amd64/kubeadm",
                "v1.20.2/bin/linux/amd64/kubelet",
                "v1.20.2/bin/linux/amd64/kubectl",
            ]
        );
        assert_eq!(c.binaries[1].remote_path, "/usr/local/bin/kubelet");
        assert_eq!(
            c.image("etcd").unwrap().tarball,
            "images/v1.20.2/etcd-3.4.13-0.tar"
        );
    }

    #[test]
    fn newer_minors_use_registry_k8s_io_and_coredns_path() {
        let c = Catalogue::for_version_arch(&v("1.28.4"), Arch::Arm64).unwrap();
        assert_eq!(c.binaries[0].path, "v1.28.4/bin/linux/arm64/kubeadm");
        assert_eq!(
            c.image("coredns").unwrap().reference(),
            "registry.k8s.io/coredns/coredns:v1.10.1"
        );
        assert_eq!(
            c.image("etcd").unwrap().reference(),
            "registry.k8s.io/etcd:3.5.9-0"
        );
        assert_eq!(c.image("pause").unwrap().tag, "3.9");
        assert_eq!(
            c.image("coredns").unwrap().tarball,
            "images/v1.28.4/coredns-v1.10.1.tar"
        );
        // Patch releases that bumped etcd.
        let later = Catalogue::for_version(&v("1.28.14")).unwrap();
        assert_eq!(later.image("etcd").unwrap().tag, "3.5.15-0");
        assert_eq!(
            Catalogue::for_version(&v("1.21.0"))
                .unwrap()
                .image("pause")
                .unwrap()
                .tag,
            "3.4.1"
        );
    }

    #[test]
    fn unsupported_versions_are_errors() {
        for bad in ["1.19.16", "1.33.0", "2.0.0"] {
            let e = Catalogue::for_version(&v(bad)).unwrap_err();
            assert!(
                e.to_string().contains(&format!("v{bad}")) && e.to_string().contains("1.20"),
                "{e}"
            );
        }
    }

    #[test]
    fn image_repository_and_without_images() {
        let c = Catalogue::for_version(&v("1.20.2"))
            .unwrap()
            .with_image_repository("registry.example.com/k8s/")
            .without_images(&["coredns"])
            .unwrap();
        assert_eq!(c.images.len(), 6);
        assert_eq!(
            c.image("pause").unwrap().reference(),
            "registry.example.com/k8s/pause:3.2"
        );
        assert_eq!(
            c.image("pause").unwrap().reference_in("k8s.gcr.io"),
            "k8s.gcr.io/pause:3.2"
        );
        let e = Catalogue::for_version(&v("1.20.2"))
            .unwrap()
            .without_images(&["cordns"])
            .unwrap_err();
        assert!(e.to_string().contains("cordns"), "{e}");
    }

    #[test]
    fn containerd_sandbox_image_is_the_pause_kubeadm_pins() {
        // The rendered containerd config (render::views::pause_version) and the images
        // delivered here must name the same pause image, or every sandbox pulls.
        for minor in MIN_MINOR..=MAX_MINOR {
            let v = semver::Version::new(1, minor, 0);
            assert_eq!(
                crate::render::views::pause_version(&v),
                pinned_images(minor, 0).unwrap().pause,
                "pause image for 1.{minor}"
            );
        }
        assert_eq!(
            crate::render::views::pause_version(&semver::Version::new(1, 40, 0)),
            "3.10"
        );
    }

    #[test]
    fn every_supported_minor_has_a_catalogue() {
        for minor in MIN_MINOR..=MAX_MINOR {
            for patch in [0, 5, 20] {
                let c = Catalogue::for_version(&semver::Version::new(1, minor, patch)).unwrap();
                assert_eq!(c.images.len(), 7);
                assert_eq!(c.binaries.len(), 3);
            }
        }
    }
}
