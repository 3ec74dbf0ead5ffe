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
    Metallb,
    Contour,
    IngressNginx,
    RookCeph,
}

impl AddonId {
    pub const ALL: [AddonId; 4] = [
        AddonId::Metallb,
        AddonId::Contour,
        AddonId::IngressNginx,
        AddonId::RookCeph,
    ];

    /// Name used in labels, the state and the mirror layout.
    pub fn as_str(self) -> &'static str {
        match self {
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
            AddonId::Metallb => "MetalLB",
            AddonId::Contour => "Contour",
            AddonId::IngressNginx => "ingress-nginx",
            AddonId::RookCeph => "Rook-Ceph",
        }
    }

    pub fn default_version(self) -> &'static str {
        match self {
            AddonId::Metallb => "v0.16.1",
            AddonId::Contour => "v1.33.6",
            AddonId::IngressNginx => "controller-v1.15.1",
            AddonId::RookCeph => "v1.20.6",
        }
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

/// The pinned releases of `addon`: `(version, variant)` pairs kubeforge knows.
pub fn known_versions(addon: AddonId) -> &'static [&'static str] {
    match addon {
        AddonId::Metallb => &["v0.16.1"],
        AddonId::Contour => &["v1.33.6"],
        AddonId::IngressNginx => &["controller-v1.15.1"],
        AddonId::RookCeph => &["v1.20.6"],
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
        ceph_image: (addon == AddonId::RookCeph).then_some("quay.io/ceph/ceph:v20.2.4"),
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
            assert!(known_versions(a).contains(&a.default_version()));
            assert_eq!(AddonId::parse(a.as_str()), Some(a));
        }
        assert!(release(AddonId::Metallb, "v0.1.0", MetallbFlavour::Native).is_none());
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
