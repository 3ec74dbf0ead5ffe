//! Pinned addon versions: the upstream release files each needs and their sha256.
//!
//! Nothing of upstream is embedded: the files are fetched from upstream (raw GitHub at
//! the release tag) or from `artifacts.mirror` (`<mirror>/addons/<addon>/<version>/<file>`)
//! and must match the digests below before anything is parsed.

use serde::Serialize;

/// The addons kubeforge installs, in installation order (MetalLB first: the ingress
/// Service takes its address from a MetalLB pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddonId {
    /// The pod network, when `networking.cni` names one (applied first, by the cni
    /// phase).
    Flannel,
    Calico,
    Metallb,
    Contour,
    IngressNginx,
    RookCeph,
}

impl AddonId {
    pub const ALL: [AddonId; 6] = [
        AddonId::Flannel,
        AddonId::Calico,
        AddonId::Metallb,
        AddonId::Contour,
        AddonId::IngressNginx,
        AddonId::RookCeph,
    ];

    /// Name used in labels, the state and the mirror layout.
    pub fn as_str(self) -> &'static str {
        match self {
            AddonId::Flannel => "flannel",
            AddonId::Calico => "calico",
            AddonId::Metallb => "metallb",
            AddonId::Contour => "contour",
            AddonId::IngressNginx => "ingress-nginx",
            AddonId::RookCeph => "rook-ceph",
        }
    }

    pub fn parse(s: &str) -> Option<AddonId> {
        AddonId::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn title(self) -> &'static str {
        match self {
            AddonId::Flannel => "Flannel",
            AddonId::Calico => "Calico",
            AddonId::Metallb => "MetalLB",
            AddonId::Contour => "Contour",
            AddonId::IngressNginx => "ingress-nginx",
            AddonId::RookCeph => "Rook-Ceph",
        }
    }

    /// The newest known release that supports Kubernetes `k8s` (None when none does).
    pub fn default_for(self, k8s: &semver::Version) -> Option<&'static Compat> {
        matrix(self).iter().rev().find(|c| c.supports(k8s))
    }
}

impl std::fmt::Display for AddonId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One upstream file of a pinned release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestFile {
    /// File name, also its name in the mirror.
    pub name: &'static str,
    /// Upstream URL at the release tag.
    pub url: String,
    pub sha256: &'static str,
}

impl ManifestFile {
    /// Path below a mirror root.
    pub fn mirror_path(&self, addon: AddonId, version: &str) -> String {
        format!("addons/{}/{version}/{}", addon.as_str(), self.name)
    }
}

/// A pinned release: its files in application order, and what kubeforge renders
/// alongside (the Ceph image a Rook release is tested with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub addon: AddonId,
    pub version: String,
    pub files: Vec<ManifestFile>,
    /// Rook-Ceph: the Ceph image of the release's example CephCluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceph_image: Option<&'static str>,
}

const RAW: &str = "https://raw.githubusercontent.com";

fn file(repo_path: &str, name: &'static str, sha256: &'static str) -> ManifestFile {
    ManifestFile {
        name,
        url: format!("{RAW}/{repo_path}/{name}"),
        sha256,
    }
}

/// A known release and the Kubernetes minors it supports, from the project's own
/// compatibility documentation (`source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compat {
    pub version: &'static str,
    /// Oldest supported Kubernetes minor (`1.x`).
    pub min_minor: u64,
    /// Newest supported minor; None: no upper bound documented.
    pub max_minor: Option<u64>,
    pub source: &'static str,
}

impl Compat {
    pub fn supports(&self, k8s: &semver::Version) -> bool {
        k8s.major == 1
            && k8s.minor >= self.min_minor
            && self.max_minor.is_none_or(|max| k8s.minor <= max)
    }

    /// `1.20-1.22`, `>= 1.21`.
    pub fn range(&self) -> String {
        match self.max_minor {
            Some(max) if max == self.min_minor => format!("1.{max}"),
            Some(max) => format!("1.{}-1.{max}", self.min_minor),
            None => format!(">= 1.{}", self.min_minor),
        }
    }
}

const fn compat(
    version: &'static str,
    min_minor: u64,
    max_minor: Option<u64>,
    source: &'static str,
) -> Compat {
    Compat {
        version,
        min_minor,
        max_minor,
        source,
    }
}

/// Every release kubeforge knows of `addon`, oldest first, with the Kubernetes range
/// each supports (figures and sources: ../shared/addons/README.md of the project).
pub fn matrix(addon: AddonId) -> &'static [Compat] {
    const METALLB: &[Compat] = &[
        compat(
            "v0.13.12",
            13,
            None,
            "metallb/metallb@v0.13.12 website/content/_index.md:43; v0.14.2 dropped < 1.21",
        ),
        compat(
            "v0.16.1",
            21,
            None,
            "metallb/metallb@v0.16.1 website/content/release-notes/_index.md:250 (v0.14.2 note)",
        ),
    ];
    const CONTOUR: &[Compat] = &[
        compat(
            "v1.19.1",
            20,
            Some(22),
            "projectcontour/contour@31c4bb3 site/content/resources/compatibility-matrix.md:96",
        ),
        compat(
            "v1.33.6",
            32,
            Some(34),
            "projectcontour/contour@31c4bb3 site/content/resources/compatibility-matrix.md:14",
        ),
    ];
    const INGRESS_NGINX: &[Compat] = &[
        compat(
            "controller-v1.3.1",
            20,
            Some(24),
            "kubernetes/ingress-nginx@controller-v1.3.1 README.md:38",
        ),
        compat(
            "controller-v1.15.1",
            31,
            Some(35),
            "kubernetes/ingress-nginx@controller-v1.15.1 README.md:52",
        ),
    ];
    const ROOK_CEPH: &[Compat] = &[
        compat(
            "v1.10.13",
            19,
            None,
            "rook/rook@v1.10.13 Documentation/Getting-Started/Prerequisites/prerequisites.md:10 (v1.11.0 requires 1.21)",
        ),
        compat(
            "v1.20.6",
            31,
            Some(36),
            "rook/rook@v1.20.6 Documentation/Getting-Started/Prerequisites/prerequisites.md:10",
        ),
    ];
    const FLANNEL: &[Compat] = &[compat(
        "v0.28.9",
        17,
        None,
        "flannel-io/flannel@v0.28.9 README.md:44",
    )];
    const CALICO: &[Compat] = &[compat(
        "v3.32.1",
        34,
        Some(36),
        "tigera/docs@f2a2762 calico_versioned_docs/version-3.32/_includes/partials/_system-requirements.mdx:179-186 (tested 1.34-1.36; \"will not work on v1.20 or below\")",
    )];
    match addon {
        AddonId::Flannel => FLANNEL,
        AddonId::Calico => CALICO,
        AddonId::Metallb => METALLB,
        AddonId::Contour => CONTOUR,
        AddonId::IngressNginx => INGRESS_NGINX,
        AddonId::RookCeph => ROOK_CEPH,
    }
}

/// The known releases of `addon`, oldest first.
pub fn known_versions(addon: AddonId) -> Vec<&'static str> {
    matrix(addon).iter().map(|c| c.version).collect()
}

/// `v1.19.1 (1.20-1.22), v1.33.6 (1.32-1.34)`.
pub fn describe_matrix(addon: AddonId) -> String {
    matrix(addon)
        .iter()
        .map(|c| format!("{} ({})", c.version, c.range()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The release a cluster file's `version` (or its absence) means for Kubernetes `k8s`:
/// the pinned one when it is known and supports `k8s`, else the newest that supports
/// `k8s`. The error says why not, with the ranges.
pub fn select(
    addon: AddonId,
    pinned: Option<&str>,
    k8s: &semver::Version,
) -> Result<&'static Compat, String> {
    let k = format!("{}.{}", k8s.major, k8s.minor);
    match pinned {
        Some(v) => {
            let want = normalise(addon, v);
            let c = matrix(addon)
                .iter()
                .find(|c| c.version == want)
                .ok_or_else(|| {
                    format!(
                        "{} {v} is not a release kubeforge knows (known: {})",
                        addon.title(),
                        describe_matrix(addon)
                    )
                })?;
            if c.supports(k8s) {
                Ok(c)
            } else {
                let instead = addon
                    .default_for(k8s)
                    .map(|d| format!("; {} supports it", d.version))
                    .unwrap_or_default();
                Err(format!(
                    "{} {} supports Kubernetes {}, not {k}{instead}",
                    addon.title(),
                    c.version,
                    c.range()
                ))
            }
        }
        None => addon.default_for(k8s).ok_or_else(|| {
            format!(
                "no release of {} that kubeforge knows supports Kubernetes {k} (known: {})",
                addon.title(),
                describe_matrix(addon)
            )
        }),
    }
}

/// ingress-nginx tags its releases `controller-vX.Y.Z`; `vX.Y.Z` means the same.
fn normalise(addon: AddonId, v: &str) -> String {
    if addon == AddonId::IngressNginx && !v.starts_with("controller-") {
        format!("controller-{v}")
    } else {
        v.to_string()
    }
}

/// MetalLB ships one manifest per speaker flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetallbFlavour {
    /// Native speaker: L2 (and simple BGP).
    Native,
    /// FRR speaker: BGP with BFD, communities, ...
    Frr,
}

/// The release of `addon` at `version`, or None when kubeforge has no pinned digests
/// for it.
pub fn release(addon: AddonId, version: &str, metallb: MetallbFlavour) -> Option<Release> {
    let files = match (addon, version) {
        (AddonId::Metallb, "v0.16.1") => vec![match metallb {
            MetallbFlavour::Native => file(
                "metallb/metallb/v0.16.1/config/manifests",
                "metallb-native.yaml",
                "bf25feebb7582ca7df845efd52ffbc2960d6cbf4cfc972f47fded9f788b67f0b",
            ),
            MetallbFlavour::Frr => file(
                "metallb/metallb/v0.16.1/config/manifests",
                "metallb-frr.yaml",
                "2b3574f8a257270117f1ab58c4268c99c56cf3e92f2525e6b88aff0b2208f131",
            ),
        }],
        (AddonId::Metallb, "v0.13.12") => vec![match metallb {
            MetallbFlavour::Native => file(
                "metallb/metallb/v0.13.12/config/manifests",
                "metallb-native.yaml",
                "a5e3b65e073ba8236cc36c283fb33260e764977c7e460d6a462347ccaa91683d",
            ),
            MetallbFlavour::Frr => file(
                "metallb/metallb/v0.13.12/config/manifests",
                "metallb-frr.yaml",
                "2ca860276d2902b1e9ec53a9a70bb90432d3f4a00a6b57dde03bb6c1a8941fc9",
            ),
        }],
        (AddonId::Flannel, "v0.28.9") => vec![file(
            "flannel-io/flannel/v0.28.9/Documentation",
            "kube-flannel.yml",
            "e875824be2f552b45711dbda91af81b17eb961d00025d914d9fef18fad8f09c0",
        )],
        (AddonId::Calico, "v3.32.1") => vec![file(
            "projectcalico/calico/v3.32.1/manifests",
            "calico.yaml",
            "a1df919d9721cf667accdc3e72848911b0cb25cfab7d2478ad0c996302c95744",
        )],
        (AddonId::Contour, "v1.19.1") => vec![file(
            "projectcontour/contour/v1.19.1/examples/render",
            "contour.yaml",
            "5c00fa5c37ff2732cfe1e0b0438a7c03c88f5e130731fe1284914cc55ce0a7f6",
        )],
        (AddonId::IngressNginx, "controller-v1.3.1") => vec![file(
            "kubernetes/ingress-nginx/controller-v1.3.1/deploy/static/provider/baremetal",
            "deploy.yaml",
            "bc9bb771a36890358434677552d01331bd534e878fd450144d26ef0d47872d3f",
        )],
        (AddonId::RookCeph, "v1.10.13") => vec![
            file(
                "rook/rook/v1.10.13/deploy/examples",
                "crds.yaml",
                "cbfaeceb65f4267452d459e01ae73dbaf5d37ac257905e8520be2268bb96af7a",
            ),
            file(
                "rook/rook/v1.10.13/deploy/examples",
                "common.yaml",
                "a5d0ab0e7eec12cb2ca98217f6fb198eed9c33f57501b6f805962563e152cf68",
            ),
            file(
                "rook/rook/v1.10.13/deploy/examples",
                "operator.yaml",
                "8a3277645f3b12ddd74a2b57014b15f04861c4e8b038da0894c19099a924ed1e",
            ),
        ],
        (AddonId::Contour, "v1.33.6") => vec![file(
            "projectcontour/contour/v1.33.6/examples/render",
            "contour.yaml",
            "1d2e45c4bb31bea93085231d9b50e2c95ad92432253872b683e672eb7cecbbd8",
        )],
        (AddonId::IngressNginx, "controller-v1.15.1") => vec![file(
            "kubernetes/ingress-nginx/controller-v1.15.1/deploy/static/provider/baremetal",
            "deploy.yaml",
            "16b9b62df45b8ed8f1ecaed0341d583b3360e4b63c41fe00413f6a1fa2f95bec",
        )],
        (AddonId::RookCeph, "v1.20.6") => vec![
            file(
                "rook/rook/v1.20.6/deploy/examples",
                "crds.yaml",
                "7fa7462d44b35d636703a03a88120030692a06a05ac91ec253200cb4ae8c37cf",
            ),
            file(
                "rook/rook/v1.20.6/deploy/examples",
                "common.yaml",
                "2d59b3093446dcf7dd69c73ebaef2d41e8cdfd14af564c2e885d49ab8d190457",
            ),
            // The ceph-csi-operator (csi.ceph.io CRDs and its deployment): Rook v1.20's
            // operator.yaml needs its CRDs, so it goes before operator.yaml.
            file(
                "rook/rook/v1.20.6/deploy/examples",
                "csi-operator.yaml",
                "de0bf9160c8370220353d7140a4b60ee6d4b8eda5e260f395fd00cbdc1059ffb",
            ),
            file(
                "rook/rook/v1.20.6/deploy/examples",
                "operator.yaml",
                "c69bb7309b6dfc34a1eeab658a1f9c825c7d156fb26dc1a6a824f6a9735761a4",
            ),
        ],
        _ => return None,
    };
    Some(Release {
        addon,
        version: version.to_string(),
        files,
        // The Ceph image of each Rook release's example cluster.yaml.
        ceph_image: match (addon, version) {
            (AddonId::RookCeph, "v1.10.13") => Some("quay.io/ceph/ceph:v17.2.5"),
            (AddonId::RookCeph, _) => Some("quay.io/ceph/ceph:v20.2.4"),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_has_a_release_with_pinned_digests() {
        for a in AddonId::ALL {
            for v in known_versions(a) {
                for flavour in [MetallbFlavour::Native, MetallbFlavour::Frr] {
                    let r = release(a, v, flavour).expect("pinned");
                    assert!(!r.files.is_empty());
                    for f in &r.files {
                        assert_eq!(f.sha256.len(), 64, "{}", f.name);
                        assert!(f.url.starts_with("https://raw.githubusercontent.com/"));
                        assert!(f.url.ends_with(f.name));
                    }
                }
            }
            assert_eq!(AddonId::parse(a.as_str()), Some(a));
        }
        assert!(release(AddonId::Metallb, "v0.1.0", MetallbFlavour::Native).is_none());
    }

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn the_default_is_the_newest_release_that_supports_the_cluster() {
        let on = |a: AddonId, k: &str| a.default_for(&v(k)).map(|c| c.version);
        assert_eq!(on(AddonId::Metallb, "1.20.2"), Some("v0.13.12"));
        assert_eq!(on(AddonId::Metallb, "1.21.0"), Some("v0.16.1"));
        assert_eq!(on(AddonId::Contour, "1.20.2"), Some("v1.19.1"));
        assert_eq!(on(AddonId::Contour, "1.33.1"), Some("v1.33.6"));
        assert_eq!(on(AddonId::Contour, "1.27.0"), None);
        assert_eq!(
            on(AddonId::IngressNginx, "1.24.17"),
            Some("controller-v1.3.1")
        );
        assert_eq!(on(AddonId::RookCeph, "1.20.2"), Some("v1.10.13"));
        assert_eq!(on(AddonId::RookCeph, "1.33.2"), Some("v1.20.6"));
        assert_eq!(on(AddonId::RookCeph, "1.18.0"), None);
    }

    #[test]
    fn a_pinned_release_outside_its_range_is_refused_with_the_range() {
        let k = v("1.20.2");
        assert_eq!(
            select(AddonId::Contour, Some("v1.33.6"), &k).unwrap_err(),
            "Contour v1.33.6 supports Kubernetes 1.32-1.34, not 1.20; v1.19.1 supports it"
        );
        assert_eq!(
            select(AddonId::Metallb, Some("v0.16.1"), &k).unwrap_err(),
            "MetalLB v0.16.1 supports Kubernetes >= 1.21, not 1.20; v0.13.12 supports it"
        );
        assert_eq!(
            select(AddonId::Metallb, Some("v0.9.0"), &k).unwrap_err(),
            "MetalLB v0.9.0 is not a release kubeforge knows (known: v0.13.12 (>= 1.13), v0.16.1 (>= 1.21))"
        );
        assert_eq!(
            select(AddonId::Contour, None, &v("1.27.3")).unwrap_err(),
            "no release of Contour that kubeforge knows supports Kubernetes 1.27 (known: v1.19.1 (1.20-1.22), v1.33.6 (1.32-1.34))"
        );
        assert_eq!(
            select(AddonId::IngressNginx, Some("v1.3.1"), &k)
                .unwrap()
                .version,
            "controller-v1.3.1"
        );
        assert_eq!(
            select(AddonId::RookCeph, Some("v1.10.13"), &k)
                .unwrap()
                .version,
            "v1.10.13"
        );
    }

    #[test]
    fn rook_v1_20_applies_the_csi_operator_before_its_operator() {
        let r = release(AddonId::RookCeph, "v1.20.6", MetallbFlavour::Native).unwrap();
        let names: Vec<_> = r.files.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "crds.yaml",
                "common.yaml",
                "csi-operator.yaml",
                "operator.yaml"
            ]
        );
        let old = release(AddonId::RookCeph, "v1.10.13", MetallbFlavour::Native).unwrap();
        assert!(old.files.iter().all(|f| f.name != "csi-operator.yaml"));
        assert_eq!(old.ceph_image, Some("quay.io/ceph/ceph:v17.2.5"));
    }

    #[test]
    fn metallb_flavour_picks_the_manifest() {
        let n = release(AddonId::Metallb, "v0.16.1", MetallbFlavour::Native).unwrap();
        let f = release(AddonId::Metallb, "v0.16.1", MetallbFlavour::Frr).unwrap();
        assert_eq!(n.files[0].name, "metallb-native.yaml");
        assert_eq!(f.files[0].name, "metallb-frr.yaml");
        assert_eq!(
            n.files[0].mirror_path(AddonId::Metallb, "v0.16.1"),
            "addons/metallb/v0.16.1/metallb-native.yaml"
        );
    }
}
