//! The data model: identifiers, statuses, definitions, records and transitions.

pub mod definition;
pub mod ids;
pub mod payload;
pub mod record;
pub mod status;
pub mod transition;

pub use definition::*;
pub use ids::*;
pub use payload::*;
pub use record::*;
pub use status::*;
pub use transition::*;
