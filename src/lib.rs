//! kubeforge: build and operate highly-available Kubernetes clusters.
//!
//! Layers (arrows point down only), see `docs/architecture.md`:
//! `cli` -> `ops` -> `playbook`/`phase` -> `provider`/`transport`/`state`/`render` -> `spec`.

pub mod addons;
pub mod artifacts;
pub mod aws_credentials;
pub mod backup;
pub mod cli;
pub mod error;
pub mod facts;
pub mod kube;
pub mod ops;
pub mod output;
pub mod phase;
pub mod playbook;
pub mod provider;
pub mod render;
pub mod spec;
pub mod state;
pub mod transport;
