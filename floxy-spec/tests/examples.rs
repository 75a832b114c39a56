//! Every file under examples/flows/ parses and converts to definitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flows")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/flows exists")
        .map(|e| e.unwrap().path())
        .filter(|p| floxy_spec::Format::from_path(p).is_some())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads_and_converts() {
    let files = example_files();
    assert!(
        files.len() >= 10,
        "expected the example flows, found {files:?}"
    );
    for path in files {
        let file = floxy_spec::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let defs = file
            .definitions()
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        assert_eq!(defs.len(), file.flows.len(), "{}", path.display());
        for d in &defs {
            floxy_core::graph::CompiledWorkflow::compile(d.clone()).unwrap();
        }
    }
}
