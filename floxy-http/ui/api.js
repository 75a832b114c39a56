// The REST API client, the token, and the live event stream.

const TOKEN_KEY = 'floxy.token';

/**
 * Where the router is mounted: the page is `<prefix>/ui/`, so a service that nests the
 * router under `/floxy` gets its API at `/floxy/api`.
 */
const PREFIX = location.pathname.replace(/\/ui(\/.*)?$/, '');

/** Events of the client: 'unauthorized', 'network' ({detail: up}), 'live' ({detail: state}). */
export const bus = new EventTarget();

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer (status 0: the server could not be reached). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let networkUp = true;
function network(up) {
  if (up !== networkUp) {
    networkUp = up;
    bus.dispatchEvent(new CustomEvent('network', { detail: up }));
  }
}

/** Calls the API; resolves to the parsed JSON, rejects with an ApiError. */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(`${PREFIX}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    network(false);
    throw new ApiError(0, 'The floxy server cannot be reached.');
  }
  network(true);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const msg = (data && data.message) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) bus.dispatchEvent(new CustomEvent('unauthorized', { detail: msg }));
    throw new ApiError(resp.status, msg);
  }
  return data;
}

/** Builds a query string from the defined values of `params`. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

// ----- live events ------------------------------------------------------------------

/** Every event name the stream sends (one per engine event kind, plus 'lagged'). */
export const EVENT_KINDS = [
  'workflow_started', 'workflow_completed', 'workflow_failed', 'workflow_cancelled',
  'workflow_aborted', 'workflow_dlq', 'rollback_started', 'step_started', 'step_completed',
  'step_failed', 'step_retry', 'step_skipped', 'step_paused', 'fork_started', 'join_ready',
  'join_completed', 'branch_failed', 'condition_check', 'save_point_reached',
  'cancellation_started', 'abort_started', 'dlq_requeued', 'compensation_started',
  'compensation_completed', 'compensation_retry', 'compensation_failed', 'step_rolled_back',
  'human_decision_waiting', 'human_decision_confirmed', 'human_decision_rejected',
  'lease_expired', 'lagged',
];

/**
 * The live stream: one EventSource (the token as `?access_token=`, since EventSource cannot
 * send headers), reconnected with backoff. `state` is 'connecting', 'live' or 'down'.
 */
export class Live {
  constructor() {
    this.listeners = new Set();
    this.state = 'connecting';
    this.source = null;
    this.retry = 1000;
    this.timer = null;
  }

  /** Calls `fn(event)` for every event; returns the unsubscribe function. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  setState(state) {
    if (state !== this.state) {
      this.state = state;
      bus.dispatchEvent(new CustomEvent('live', { detail: state }));
    }
  }

  connect() {
    this.close();
    const t = token();
    const url = `${PREFIX}/api/events/stream${t ? qs({ access_token: t }) : ''}`;
    const src = new EventSource(url);
    this.source = src;
    src.onopen = () => {
      this.retry = 1000;
      this.setState('live');
    };
    src.onerror = () => {
      if (src.readyState === EventSource.CLOSED) {
        this.setState('down');
        this.timer = setTimeout(() => this.connect(), this.retry);
        this.retry = Math.min(this.retry * 2, 30000);
      } else {
        this.setState('connecting');
      }
    };
    const deliver = (e) => {
      let data = null;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      if (e.type === 'lagged') data = { event_type: 'lagged', ...data };
      for (const fn of this.listeners) fn(data);
    };
    for (const kind of EVENT_KINDS) src.addEventListener(kind, deliver);
  }

  close() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}
