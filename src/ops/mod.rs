pub mod artifacts;
pub mod bench;
pub mod plan;
pub mod render;
pub mod validate;
