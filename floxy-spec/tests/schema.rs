//! The committed JSON Schema equals the generated one.
//! Regenerate with `FLOXY_BLESS=1 cargo test -p floxy-spec --test schema`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn committed_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/flow.schema.json");
    let generated = serde_json::to_string_pretty(&floxy_spec::json_schema()).unwrap() + "\n";
    if std::env::var_os("FLOXY_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).expect("flow.schema.json is committed");
    assert!(
        committed == generated,
        "flow.schema.json is stale: run FLOXY_BLESS=1 cargo test -p floxy-spec --test schema"
    );
}
