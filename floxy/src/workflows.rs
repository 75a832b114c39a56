//! The cache of compiled workflow definitions.

use crate::error::EngineError;
use floxy_core::graph::CompiledWorkflow;
use floxy_core::model::{WorkflowDefinition, WorkflowId};
use floxy_core::store::Store;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Compiled definitions by id. Definitions are immutable once stored, so an entry never
/// goes stale.
#[derive(Default)]
pub(crate) struct WorkflowCache {
    by_id: RwLock<HashMap<WorkflowId, Arc<CompiledWorkflow>>>,
}

impl WorkflowCache {
    /// Validates, stores and caches a definition.
    pub(crate) async fn register(
        &self,
        store: &dyn Store,
        def: WorkflowDefinition,
    ) -> Result<WorkflowId, EngineError> {
        let compiled = Arc::new(CompiledWorkflow::compile(def)?);
        store.put_definition(compiled.definition()).await?;
        let id = compiled.id().clone();
        self.by_id.write().insert(id.clone(), compiled);
        Ok(id)
    }

    /// The compiled definition `id`, loaded from the store and compiled on a cache miss.
    pub(crate) async fn get(
        &self,
        store: &dyn Store,
        id: &WorkflowId,
    ) -> Result<Arc<CompiledWorkflow>, EngineError> {
        if let Some(wf) = self.by_id.read().get(id) {
            return Ok(Arc::clone(wf));
        }
        let def = store
            .get_definition(id)
            .await?
            .ok_or_else(|| EngineError::UnknownWorkflow(id.clone()))?;
        let compiled = Arc::new(CompiledWorkflow::compile(def)?);
        let mut map = self.by_id.write();
        let entry = map.entry(id.clone()).or_insert(compiled);
        Ok(Arc::clone(entry))
    }
}
