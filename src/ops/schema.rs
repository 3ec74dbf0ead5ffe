//! `kubeforge schema`: the JSON Schema of the cluster file, derived from the spec types
//! (`schemars`), for editors (yaml-language-server) and CI. docs/cluster.schema.json is
//! the checked-in copy, kept equal by tests/day2_cli.rs.

use crate::error::Error;

/// The schema as a JSON value (draft 2020-12). Every object is `additionalProperties:
/// false`, as the types are `deny_unknown_fields`.
pub fn cluster_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(crate::spec::Cluster).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            "https://kubeforge.dev/schemas/cluster.schema.json".into(),
        );
        obj.insert(
            "title".into(),
            "kubeforge cluster file (kubeforge.dev/v1alpha1 Cluster)".into(),
        );
    }
    schema
}

/// Print the schema (it is JSON whatever `-o` says).
pub fn run() -> Result<(), Error> {
    crate::output::print_json(&cluster_schema())?;
    Ok(())
}
