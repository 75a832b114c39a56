//! REST API, event stream and web console of floxy, as an axum router.
