//! `floxyd`: the daemon that runs YAML flows with bash and HTTP handlers.

fn main() {}
