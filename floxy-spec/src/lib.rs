//! The YAML and JSON flow-file format of floxy.
