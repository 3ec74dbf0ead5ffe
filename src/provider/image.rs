//! The node image for the docker provider (`kubeforge image build|tag`).
//!
//! The recipe is `scripts/node-image/build.sh`, embedded in the binary so the command
//! works from any directory; the image tag is the recipe's hash, so the script and this
//! command always agree on it.

use crate::provider::ProviderError;
use std::process::Stdio;

/// The node image recipe (its sha256 names the image).
pub const NODE_IMAGE_RECIPE: &str = include_str!("../../scripts/node-image/build.sh");

/// `kubeforge/node:<first 12 hex of sha256(recipe)>`, as `build.sh --print-tag` prints.
pub fn node_image_tag() -> String {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(NODE_IMAGE_RECIPE.as_bytes()));
    format!("kubeforge/node:{}", &hash[..12])
}

/// Run the embedded recipe; returns the tag it built (or found).
pub async fn build_node_image(force: bool) -> Result<String, ProviderError> {
    let dir = std::env::temp_dir().join(format!("kubeforge-node-image-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(ProviderError::ImageBuild)?;
    let script = dir.join("build.sh");
    tokio::fs::write(&script, NODE_IMAGE_RECIPE)
        .await
        .map_err(ProviderError::ImageBuild)?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().await.map_err(ProviderError::ImageBuild);
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let out = out?;
    if !out.status.success() {
        return Err(ProviderError::ImageBuildFailed { status: out.status });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_tag_matches_the_script() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/node-image/build.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg("--print-tag")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            super::node_image_tag()
        );
    }
}
