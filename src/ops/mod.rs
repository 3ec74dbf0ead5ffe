pub mod addons;
pub mod apply;
pub mod artifacts;
pub mod bench;
pub mod kubeconfig;
pub mod plan;
pub mod render;
pub mod validate;
