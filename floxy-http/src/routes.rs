//! The route handlers and the OpenAPI router that documents them.

use crate::auth::{Caller, Role};
use crate::body::Body;
use crate::dto::{
    CleanupRequest, CleanupResponse, DecisionRequest, DlqDto, DlqPageDto, EventDto,
    InstanceDetailDto, InstanceDto, InstancePageDto, ReasonRequest, RegisterResponse,
    RequeueRequest, StartRequest, StartResponse, StatsDto, StepDto, SummaryDto, View,
    WorkflowDetailDto, WorkflowDto,
};
use crate::error::{ApiError, ErrorBody};
use crate::graph::Graph;
use crate::{AppState, DEFAULT_PAGE_SIZE, MAX_PAGE_OFFSET};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use floxy::{
    Decision, DlqId, DlqQuery, InstanceId, InstanceQuery, InstanceRecord, InstanceStatus,
    MAX_PAGE_SIZE, Payload, StartOptions, StepStatus, WorkflowId,
};
use serde::Deserialize;
use std::time::Duration;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Bound on the store rows one listing request scans when it filters by creation time.
const MAX_SCAN_ROWS: usize = 10 * MAX_PAGE_SIZE;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "floxy",
        description = "REST API of the floxy saga workflow engine (Floxy-compatible routes)."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, documented.
pub(crate) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_workflows, register_workflows))
        .routes(routes!(get_workflow))
        .routes(routes!(workflow_instances))
        .routes(routes!(start_instance))
        .routes(routes!(list_instances))
        .routes(routes!(active_instances))
        .routes(routes!(get_instance))
        .routes(routes!(instance_steps))
        .routes(routes!(instance_events))
        .routes(routes!(cancel_instance))
        .routes(routes!(abort_instance))
        .routes(routes!(confirm))
        .routes(routes!(reject))
        .routes(routes!(confirm_step))
        .routes(routes!(reject_step))
        .routes(routes!(stats))
        .routes(routes!(stats_summary))
        .routes(routes!(list_dlq))
        .routes(routes!(get_dlq))
        .routes(routes!(requeue))
        .routes(routes!(cleanup))
        .routes(routes!(crate::sse::event_stream))
        .routes(routes!(crate::console::whoami))
        .routes(routes!(crate::console::waiting_decisions))
        .routes(routes!(openapi_json))
}

/// 404 for paths the API does not have.
pub(crate) async fn no_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

// ----- parsing ----------------------------------------------------------------------------

fn instance_id(s: &str) -> Result<InstanceId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid instance id {s:?}: {e}")))
}

fn workflow_id(s: &str) -> Result<WorkflowId, ApiError> {
    let valid = s.rsplit_once("-v").is_some_and(|(name, v)| {
        !name.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
    });
    if valid && s.len() <= 300 {
        Ok(WorkflowId::from(s))
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid workflow id {s:?}: expected \"<name>-v<version>\""
        )))
    }
}

fn dlq_id(s: &str) -> Result<DlqId, ApiError> {
    s.parse()
        .map(DlqId)
        .map_err(|e| ApiError::BadRequest(format!("invalid DLQ id {s:?}: {e}")))
}

fn status(s: &str) -> Result<InstanceStatus, ApiError> {
    InstanceStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::BadRequest(format!("invalid status {s:?}: one of {}", all.join(", ")))
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// Paging parameters: `cursor` (from `next_cursor`), or `page` (1-based); `page_size`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Paging {
    /// Cursor of the page (`next_cursor` of the previous one).
    cursor: Option<String>,
    /// Page number, from 1 (`page × page_size` at most 10 000; deeper: use `cursor`).
    page: Option<usize>,
    /// Page size, 1 to 1 000 (default 20).
    page_size: Option<usize>,
}

impl Paging {
    fn size(&self) -> Result<usize, ApiError> {
        match self.page_size {
            None => Ok(DEFAULT_PAGE_SIZE),
            Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!(
                "page_size {n} out of range 1..={MAX_PAGE_SIZE}"
            ))),
        }
    }

    /// Items to skip before the page (page-numbered requests).
    fn skip(&self, size: usize) -> Result<usize, ApiError> {
        match (self.page, &self.cursor) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "give either page or cursor, not both".into(),
            )),
            (Some(0), None) => Err(ApiError::BadRequest("page starts at 1".into())),
            (Some(p), None) => {
                let skip = (p - 1).saturating_mul(size);
                if skip.saturating_add(size) > MAX_PAGE_OFFSET {
                    Err(ApiError::BadRequest(format!(
                        "page × page_size above {MAX_PAGE_OFFSET}: use cursor"
                    )))
                } else {
                    Ok(skip)
                }
            }
            (None, _) => Ok(0),
        }
    }
}

macro_rules! paged {
    ($($t:ty),*) => {$(
        impl $t {
            fn paging(&self) -> Paging {
                Paging {
                    cursor: self.cursor.clone(),
                    page: self.page,
                    page_size: self.page_size,
                }
            }
        }
    )*};
}
paged!(WorkflowInstancesQuery, InstancesQuery, DlqListQuery);

// ----- workflows --------------------------------------------------------------------------

fn workflow_dto(def: &floxy::WorkflowDefinition) -> Result<WorkflowDto, ApiError> {
    Ok(WorkflowDto {
        id: def.id().to_string(),
        name: def.name.clone(),
        version: def.version,
        definition: serde_json::to_value(def)
            .map_err(|e| ApiError::Internal(format!("cannot encode definition: {e}")))?,
    })
}

/// The registered workflow definitions.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows",
    responses((status = 200, body = Vec<WorkflowDto>), (status = 401, body = ErrorBody)))]
async fn list_workflows(
    _caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<Vec<WorkflowDto>>, ApiError> {
    let defs = st
        .engine
        .store()
        .list_definitions()
        .await
        .map_err(floxy::EngineError::from)?;
    let mut out = defs
        .iter()
        .map(workflow_dto)
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(out))
}

/// A workflow definition with its graph (nodes and edges).
#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "Definition id, `<name>-v<version>`")),
    responses((status = 200, body = WorkflowDetailDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_workflow(
    _caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetailDto>, ApiError> {
    let id = workflow_id(&id)?;
    let wf = st.engine.workflow(&id).await?;
    Ok(Json(WorkflowDetailDto {
        workflow: workflow_dto(wf.definition())?,
        graph: Graph::of(&wf),
    }))
}

/// Filters of `GET /api/workflows/{id}/instances`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WorkflowInstancesQuery {
    /// Only this status.
    status: Option<String>,
    /// Cursor of the page (`next_cursor` of the previous one).
    cursor: Option<String>,
    /// Page number, from 1 (`page × page_size` at most 10 000; deeper: use `cursor`).
    page: Option<usize>,
    /// Page size, 1 to 1 000 (default 20).
    page_size: Option<usize>,
}

/// The instances of one workflow, oldest first.
#[utoipa::path(get, path = "/api/workflows/{id}/instances", tag = "workflows",
    params(("id" = String, Path, description = "Definition id"), WorkflowInstancesQuery),
    responses((status = 200, body = InstancePageDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn workflow_instances(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<WorkflowInstancesQuery>, QueryRejection>,
) -> Result<Json<InstancePageDto>, ApiError> {
    let id = workflow_id(&id)?;
    let q = query(q)?;
    st.engine.workflow(&id).await?;
    let filter = InstanceFilter {
        workflow: Some(id),
        status: q.status.as_deref().map(status).transpose()?,
        created_from: None,
        created_to: None,
    };
    instance_page(&st, &caller, &filter, &q.paging())
        .await
        .map(Json)
}

/// Registers the flows of a flow file at run time: YAML (`Content-Type: application/yaml`)
/// or JSON (the file itself, or `{"format", "text"}`). Every handler the flows name must be
/// registered in this process; the file's `exec` is never run. A flow already registered
/// with the same content is accepted again; with other content the whole file is refused
/// (409). Admin only.
#[utoipa::path(post, path = "/api/workflows", tag = "workflows",
    request_body(content = crate::register::RegisterRequest,
        description = "A flow file (floxy-spec format) as YAML or JSON, or wrapped"),
    responses((status = 201, body = RegisterResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn register_workflows(
    caller: Caller,
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body above the size limit".into())
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    caller.require(Role::Admin)?;
    let registered = crate::register::register(&st.engine, &headers, &body).await?;
    tracing::info!(by = %caller.name, ?registered, "flows registered over HTTP");
    Ok((StatusCode::CREATED, Json(RegisterResponse { registered })))
}

/// Starts an instance. Operator.
#[utoipa::path(post, path = "/api/workflows/{id}/start", tag = "workflows",
    params(("id" = String, Path, description = "Definition id")),
    request_body = StartRequest,
    responses((status = 201, body = StartResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn start_instance(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<StartRequest>,
) -> Result<(StatusCode, Json<StartResponse>), ApiError> {
    caller.require(Role::Operator)?;
    let id = workflow_id(&id)?;
    let mut opts = StartOptions::new();
    if let Some(k) = req.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::BadRequest(
                "idempotency_key must have 1 to 256 bytes".into(),
            ));
        }
        opts = opts.idempotency_key(k);
    }
    let instance = st
        .engine
        .start_with(&id, Payload::new(req.input), opts)
        .await?;
    tracing::info!(by = %caller.name, workflow = %id, instance = %instance, "instance started over HTTP");
    Ok((
        StatusCode::CREATED,
        Json(StartResponse {
            instance_id: instance.to_string(),
        }),
    ))
}

// ----- instances --------------------------------------------------------------------------

struct InstanceFilter {
    workflow: Option<WorkflowId>,
    status: Option<InstanceStatus>,
    created_from: Option<i64>,
    created_to: Option<i64>,
}

/// The creation time encoded in a `UUIDv7` id (ms), when it is one.
fn id_millis(id: InstanceId) -> Option<i64> {
    (id.0.get_version_num() == 7).then(|| i64::try_from(id.0.as_u128() >> 80).unwrap_or(i64::MAX))
}

/// Up to `want` instances after `after` matching `f`, and the cursor after the last row
/// scanned when more may follow. Scans at most [`MAX_SCAN_ROWS`] rows.
async fn fetch_instances(
    st: &AppState,
    f: &InstanceFilter,
    mut after: Option<InstanceId>,
    want: usize,
) -> Result<(Vec<InstanceRecord>, Option<InstanceId>), ApiError> {
    let mut out = Vec::new();
    let mut scanned = 0usize;
    if after.is_none()
        && let Some(from) = f.created_from
    {
        // Ids carry their start time (at most the creation time): begin a second
        // earlier than `from` to be safe, and filter by `created_at` below.
        let ms = u128::try_from(from.saturating_sub(1_000).max(0)).unwrap_or(0);
        after = Some(InstanceId(uuid::Uuid::from_u128(ms << 80)));
    }
    let ranged = f.created_from.is_some() || f.created_to.is_some();
    loop {
        let need = want - out.len();
        let limit = if ranged { MAX_PAGE_SIZE } else { need.max(1) };
        let page = st
            .engine
            .instances(&InstanceQuery {
                workflow_id: f.workflow.clone(),
                status: f.status,
                after,
                limit,
            })
            .await?;
        let next = page.next;
        let rows = page.items.len();
        for (i, r) in page.items.into_iter().enumerate() {
            scanned += 1;
            if let Some(to) = f.created_to
                && id_millis(r.id).is_some_and(|ms| ms > to)
            {
                // Later ids were started later still.
                return Ok((out, None));
            }
            let in_range = f
                .created_from
                .is_none_or(|from| r.created_at.as_millis() >= from)
                && f.created_to.is_none_or(|to| r.created_at.as_millis() <= to);
            let id = r.id;
            if in_range {
                out.push(r);
            }
            after = Some(id);
            if out.len() == want {
                let last = i + 1 == rows;
                return Ok((out, if last && next.is_none() { None } else { after }));
            }
        }
        if next.is_none() {
            return Ok((out, None));
        }
        if scanned >= MAX_SCAN_ROWS {
            return Ok((out, after));
        }
        after = next;
    }
}

async fn instance_page(
    st: &AppState,
    caller: &Caller,
    f: &InstanceFilter,
    paging: &Paging,
) -> Result<InstancePageDto, ApiError> {
    let size = paging.size()?;
    let skip = paging.skip(size)?;
    let mut after = paging.cursor.as_deref().map(instance_id).transpose()?;
    let mut skipped = 0;
    while skipped < skip {
        let (rows, next) =
            fetch_instances(st, f, after, (skip - skipped).min(MAX_PAGE_SIZE)).await?;
        skipped += rows.len();
        match next {
            Some(n) => after = Some(n),
            None if skipped < skip => {
                return Ok(InstancePageDto {
                    items: Vec::new(),
                    page: paging.page,
                    page_size: size,
                    next_cursor: None,
                });
            }
            None => after = rows.last().map(|r| r.id),
        }
    }
    let (rows, next) = fetch_instances(st, f, after, size).await?;
    let view = View::of(caller);
    Ok(InstancePageDto {
        items: rows.iter().map(|r| InstanceDto::new(r, view)).collect(),
        page: paging.page,
        page_size: size,
        next_cursor: next.map(|n| n.to_string()),
    })
}

/// Filters of `GET /api/instances`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InstancesQuery {
    /// Only this status.
    status: Option<String>,
    /// Only this workflow (definition id).
    workflow: Option<String>,
    /// Created at or after (ms since the epoch).
    created_from: Option<i64>,
    /// Created at or before (ms since the epoch).
    created_to: Option<i64>,
    /// Cursor of the page (`next_cursor` of the previous one).
    cursor: Option<String>,
    /// Page number, from 1 (`page × page_size` at most 10 000; deeper: use `cursor`).
    page: Option<usize>,
    /// Page size, 1 to 1 000 (default 20).
    page_size: Option<usize>,
}

/// Instances, oldest first, filtered by status, workflow and creation time. A page filtered
/// by creation time may hold fewer items than `page_size` and still have a `next_cursor`.
#[utoipa::path(get, path = "/api/instances", tag = "instances",
    params(InstancesQuery),
    responses((status = 200, body = InstancePageDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn list_instances(
    caller: Caller,
    State(st): State<AppState>,
    q: Result<Query<InstancesQuery>, QueryRejection>,
) -> Result<Json<InstancePageDto>, ApiError> {
    let q = query(q)?;
    if let (Some(a), Some(b)) = (q.created_from, q.created_to)
        && a > b
    {
        return Err(ApiError::BadRequest(
            "created_from is after created_to".into(),
        ));
    }
    let filter = InstanceFilter {
        workflow: q.workflow.as_deref().map(workflow_id).transpose()?,
        status: q.status.as_deref().map(status).transpose()?,
        created_from: q.created_from,
        created_to: q.created_to,
    };
    instance_page(&st, &caller, &filter, &q.paging())
        .await
        .map(Json)
}

/// Instances not yet ended (pending, running, rolling back, cancelling, in the DLQ), oldest
/// first.
#[utoipa::path(get, path = "/api/instances/active", tag = "instances",
    params(Paging),
    responses((status = 200, body = InstancePageDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn active_instances(
    caller: Caller,
    State(st): State<AppState>,
    q: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<InstancePageDto>, ApiError> {
    let paging = query(q)?;
    let size = paging.size()?;
    if paging.page.is_some_and(|p| p > 1) {
        return Err(ApiError::BadRequest(
            "active instances page with cursor only".into(),
        ));
    }
    let after = paging.cursor.as_deref().map(instance_id).transpose()?;
    let mut rows: Vec<InstanceRecord> = Vec::new();
    let mut more = false;
    for s in InstanceStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
        let page = st
            .engine
            .instances(&InstanceQuery {
                workflow_id: None,
                status: Some(s),
                after,
                limit: size,
            })
            .await?;
        more |= page.next.is_some();
        rows.extend(page.items);
    }
    rows.sort_by_key(|r| r.id);
    if rows.len() > size {
        rows.truncate(size);
        more = true;
    }
    let view = View::of(&caller);
    Ok(Json(InstancePageDto {
        next_cursor: if more {
            rows.last().map(|r| r.id.to_string())
        } else {
            None
        },
        items: rows.iter().map(|r| InstanceDto::new(r, view)).collect(),
        page: paging.page,
        page_size: size,
    }))
}

async fn instance_record(st: &AppState, id: &str) -> Result<InstanceRecord, ApiError> {
    let id = instance_id(id)?;
    st.engine
        .instance(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown instance {id}")))
}

/// An instance with its steps (status, attempts, error, start and end) and its workflow's
/// graph.
#[utoipa::path(get, path = "/api/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    responses((status = 200, body = InstanceDetailDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_instance(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InstanceDetailDto>, ApiError> {
    let r = instance_record(&st, &id).await?;
    let view = View::of(&caller);
    let steps = st.engine.steps(r.id).await?;
    let graph = st
        .engine
        .workflow(&r.workflow_id)
        .await
        .ok()
        .map(|wf| Graph::of(&wf));
    Ok(Json(InstanceDetailDto {
        instance: InstanceDto::new(&r, view),
        steps: steps.iter().map(|s| StepDto::new(s, view)).collect(),
        graph,
    }))
}

/// The step runs of an instance.
#[utoipa::path(get, path = "/api/instances/{id}/steps", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    responses((status = 200, body = Vec<StepDto>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn instance_steps(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<StepDto>>, ApiError> {
    let r = instance_record(&st, &id).await?;
    let view = View::of(&caller);
    let steps = st.engine.steps(r.id).await?;
    Ok(Json(steps.iter().map(|s| StepDto::new(s, view)).collect()))
}

/// Paging of an instance's events.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events after this sequence number (the last `seq` seen).
    after: Option<u64>,
    /// At most this many, 1 to 1 000 (default 1 000).
    limit: Option<usize>,
}

/// The timeline of an instance: its events in commit order.
#[utoipa::path(get, path = "/api/instances/{id}/events", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)"), EventsQuery),
    responses((status = 200, body = Vec<EventDto>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn instance_events(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<EventDto>>, ApiError> {
    let q = query(q)?;
    let limit = match q.limit {
        None => MAX_PAGE_SIZE,
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit {n} out of range 1..={MAX_PAGE_SIZE}"
            )));
        }
    };
    let r = instance_record(&st, &id).await?;
    let events = st
        .engine
        .store()
        .list_events(r.id, q.after, limit)
        .await
        .map_err(floxy::EngineError::from)?;
    let view = View::of(&caller);
    Ok(Json(
        events.iter().map(|e| EventDto::new(e, view)).collect(),
    ))
}

/// Cancels an instance: compensates its completed steps, ends `cancelled`. Operator; the
/// token's name and the reason are recorded in its events.
#[utoipa::path(post, path = "/api/instances/{id}/cancel", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    request_body = ReasonRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_instance(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<ReasonRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    caller.require(Role::Operator)?;
    let id = instance_id(&id)?;
    let r = st
        .engine
        .cancel_by(id, req.reason.as_deref(), Some(&caller.name))
        .await?;
    Ok(Json(InstanceDto::new(&r, View::of(&caller))))
}

/// Aborts an instance: stops it at once, without compensation. Operator; the token's name
/// and the reason are recorded in its events.
#[utoipa::path(post, path = "/api/instances/{id}/abort", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    request_body = ReasonRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn abort_instance(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<ReasonRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    caller.require(Role::Operator)?;
    let id = instance_id(&id)?;
    let r = st
        .engine
        .abort_by(id, req.reason.as_deref(), Some(&caller.name))
        .await?;
    Ok(Json(InstanceDto::new(&r, View::of(&caller))))
}

async fn decide(
    st: &AppState,
    caller: &Caller,
    id: &str,
    step: Option<String>,
    decision: Decision,
    comment: Option<String>,
) -> Result<Json<InstanceDto>, ApiError> {
    caller.require(Role::Operator)?;
    let id = instance_id(id)?;
    let step = if let Some(s) = step {
        s
    } else {
        let steps = st.engine.steps(id).await?;
        if steps.is_empty() && st.engine.instance(id).await?.is_none() {
            return Err(ApiError::NotFound(format!("unknown instance {id}")));
        }
        let mut waiting = steps
            .iter()
            .filter(|s| s.status == StepStatus::WaitingDecision)
            .map(|s| s.step.to_string());
        match (waiting.next(), waiting.next()) {
            (Some(s), None) => s,
            (None, _) => {
                return Err(ApiError::Conflict(format!(
                    "no step of instance {id} waits for a decision"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "several steps wait for a decision: name the step".into(),
                ));
            }
        }
    };
    let r = st
        .engine
        .decide(id, &step, &caller.name, decision, comment.as_deref())
        .await?;
    Ok(Json(InstanceDto::new(&r, View::of(caller))))
}

/// Confirms the human step the instance waits on (or the step named in the body). Operator;
/// recorded with the token's name as `decided_by`.
#[utoipa::path(post, path = "/api/instances/{id}/make-decision/confirm", tag = "decisions",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    request_body = DecisionRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn confirm(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<DecisionRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    decide(&st, &caller, &id, req.step, Decision::Confirm, req.message).await
}

/// Rejects the human step the instance waits on (or the step named in the body). Operator.
#[utoipa::path(post, path = "/api/instances/{id}/make-decision/reject", tag = "decisions",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    request_body = DecisionRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reject(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<DecisionRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    decide(&st, &caller, &id, req.step, Decision::Reject, req.message).await
}

/// Confirms the named human step. Operator.
#[utoipa::path(post, path = "/api/instances/{id}/steps/{step}/make-decision/confirm",
    tag = "decisions",
    params(("id" = String, Path, description = "Instance id (UUID)"),
        ("step" = String, Path, description = "The human step")),
    request_body = DecisionRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn confirm_step(
    caller: Caller,
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Body(req): Body<DecisionRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    decide(
        &st,
        &caller,
        &id,
        Some(step),
        Decision::Confirm,
        req.message,
    )
    .await
}

/// Rejects the named human step. Operator.
#[utoipa::path(post, path = "/api/instances/{id}/steps/{step}/make-decision/reject",
    tag = "decisions",
    params(("id" = String, Path, description = "Instance id (UUID)"),
        ("step" = String, Path, description = "The human step")),
    request_body = DecisionRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reject_step(
    caller: Caller,
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Body(req): Body<DecisionRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    decide(&st, &caller, &id, Some(step), Decision::Reject, req.message).await
}

// ----- stats ------------------------------------------------------------------------------

/// Store counts: instances per status, queue, DLQ.
#[utoipa::path(get, path = "/api/stats", tag = "stats",
    responses((status = 200, body = StatsDto), (status = 401, body = ErrorBody)))]
async fn stats(_caller: Caller, State(st): State<AppState>) -> Result<Json<StatsDto>, ApiError> {
    let s = st.engine.stats().await?;
    Ok(Json(StatsDto {
        instances_by_status: s.instances_by_status.into_iter().collect(),
        queue_ready: s.queue_ready,
        queue_leased: s.queue_leased,
        dlq: s.dlq,
    }))
}

/// Summary counts.
#[utoipa::path(get, path = "/api/stats/summary", tag = "stats",
    responses((status = 200, body = SummaryDto), (status = 401, body = ErrorBody)))]
async fn stats_summary(
    _caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<SummaryDto>, ApiError> {
    let s = st.engine.stats().await?;
    let defs = st
        .engine
        .store()
        .list_definitions()
        .await
        .map_err(floxy::EngineError::from)?;
    let count = |status: InstanceStatus| {
        s.instances_by_status
            .iter()
            .filter(|(k, _)| k == status.as_str())
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let total: u64 = s.instances_by_status.iter().map(|(_, n)| n).sum();
    let active = InstanceStatus::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(count)
        .sum();
    Ok(Json(SummaryDto {
        total_workflows: defs.len() as u64,
        total_instances: total,
        active_instances: active,
        completed_instances: count(InstanceStatus::Completed),
        failed_instances: count(InstanceStatus::Failed),
        cancelled_instances: count(InstanceStatus::Cancelled),
        aborted_instances: count(InstanceStatus::Aborted),
        dlq_instances: count(InstanceStatus::Dlq),
    }))
}

// ----- DLQ --------------------------------------------------------------------------------

/// Filters of `GET /api/dlq`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqListQuery {
    /// Only this instance.
    instance: Option<String>,
    /// Only this workflow.
    workflow: Option<String>,
    /// Cursor of the page (`next_cursor` of the previous one).
    cursor: Option<String>,
    /// Page number, from 1 (`page × page_size` at most 10 000; deeper: use `cursor`).
    page: Option<usize>,
    /// Page size, 1 to 1 000 (default 20).
    page_size: Option<usize>,
}

/// DLQ records, by id.
#[utoipa::path(get, path = "/api/dlq", tag = "dlq",
    params(DlqListQuery),
    responses((status = 200, body = DlqPageDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn list_dlq(
    caller: Caller,
    State(st): State<AppState>,
    q: Result<Query<DlqListQuery>, QueryRejection>,
) -> Result<Json<DlqPageDto>, ApiError> {
    let q = query(q)?;
    let paging = q.paging();
    let size = paging.size()?;
    let mut skip = paging.skip(size)?;
    let mut query = DlqQuery {
        instance_id: q.instance.as_deref().map(instance_id).transpose()?,
        workflow_id: q.workflow.as_deref().map(workflow_id).transpose()?,
        after: paging.cursor.as_deref().map(dlq_id).transpose()?,
        limit: 0,
    };
    while skip > 0 {
        query.limit = skip.min(MAX_PAGE_SIZE);
        let page = st.engine.dlq(&query).await?;
        skip -= page.items.len().min(skip);
        match page.items.last() {
            Some(last) if page.next.is_some() => query.after = Some(last.id),
            _ => {
                return Ok(Json(DlqPageDto {
                    items: Vec::new(),
                    page: paging.page,
                    page_size: size,
                    next_cursor: None,
                }));
            }
        }
    }
    query.limit = size;
    let page = st.engine.dlq(&query).await?;
    let view = View::of(&caller);
    Ok(Json(DlqPageDto {
        items: page.items.iter().map(|r| DlqDto::new(r, view)).collect(),
        page: paging.page,
        page_size: size,
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

/// One DLQ record.
#[utoipa::path(get, path = "/api/dlq/{id}", tag = "dlq",
    params(("id" = u64, Path, description = "DLQ record id")),
    responses((status = 200, body = DlqDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_dlq(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DlqDto>, ApiError> {
    let id = dlq_id(&id)?;
    let r = st
        .engine
        .store()
        .get_dlq(id)
        .await
        .map_err(floxy::EngineError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("unknown DLQ record {id}")))?;
    Ok(Json(DlqDto::new(&r, View::of(&caller))))
}

/// Requeues a DLQ record (optionally with a new input); the instance resumes. Operator; the
/// token's name is recorded in the `dlq_requeued` event. An unknown id is 404.
#[utoipa::path(post, path = "/api/dlq/{id}/requeue", tag = "dlq",
    params(("id" = u64, Path, description = "DLQ record id")),
    request_body = RequeueRequest,
    responses((status = 200, body = InstanceDto), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn requeue(
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<RequeueRequest>,
) -> Result<Json<InstanceDto>, ApiError> {
    caller.require(Role::Operator)?;
    let id = dlq_id(&id)?;
    let r = st
        .engine
        .requeue_by(id, req.new_input.map(Payload::new), Some(&caller.name))
        .await?;
    Ok(Json(InstanceDto::new(&r, View::of(&caller))))
}

/// Retention: removes terminal instances last updated more than `days_to_keep` days (or
/// `older_than_ms`) ago. Admin.
#[utoipa::path(post, path = "/api/cleanup", tag = "maintenance",
    request_body = CleanupRequest,
    responses((status = 200, body = CleanupResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn cleanup(
    caller: Caller,
    State(st): State<AppState>,
    Body(req): Body<CleanupRequest>,
) -> Result<Json<CleanupResponse>, ApiError> {
    caller.require(Role::Admin)?;
    let ms = match (req.days_to_keep, req.older_than_ms) {
        (Some(d), None) => u64::from(d) * 86_400_000,
        (None, Some(ms)) => ms,
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of days_to_keep and older_than_ms".into(),
            ));
        }
    };
    let deleted = st.engine.cleanup(Duration::from_millis(ms)).await?;
    tracing::info!(by = %caller.name, deleted, older_than_ms = ms, "cleanup over HTTP");
    Ok(Json(CleanupResponse {
        deleted_count: deleted,
        days_to_keep: req.days_to_keep,
        older_than_ms: ms,
    }))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi())
}
