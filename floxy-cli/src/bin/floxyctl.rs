//! `floxyctl`: run a YAML flow on an embedded store, operate instances in a database.

fn main() {}
