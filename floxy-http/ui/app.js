// The console's shell: hash routing, the token prompt, the caller's role, error display,
// and live reloads from the event stream (polling only while the stream is down).

import { api, ApiError, bus, Live, setToken, token } from './api.js';
import { h, mount, panel } from './dom.js';
import * as pages from './pages.js';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const toasts = document.getElementById('toasts');
const liveEl = document.getElementById('live');
const whoEl = document.getElementById('whoami');
const tokenDialog = document.getElementById('token-dialog');
const tokenForm = document.getElementById('token-form');
const tokenInput = document.getElementById('token-input');
const tokenError = document.getElementById('token-error');
const confirmDialog = document.getElementById('confirm-dialog');

const POLL_MS = 10000;
const RELOAD_DEBOUNCE_MS = 400;

const live = new Live();
let me = null;
let current = null;
let loading = false;
let again = false;
let reloadTimer = null;

function toast(text, kind = 'info') {
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  toasts.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 4000);
}

function reportError(e) {
  if (!(e instanceof ApiError)) {
    toast(`Error: ${e && e.message ? e.message : e}`, 'error');
    return;
  }
  if (e.status === 401) return; // the token prompt opens
  if (e.status === 0) return; // the banner shows
  if (e.status === 403) toast(`Your role cannot do this. ${e.message}`, 'error');
  else toast(e.message, 'error');
}

function confirmAction(title, text, okLabel) {
  return new Promise((resolve) => {
    mount(confirmDialog,
      h('form', { method: 'dialog', class: 'dialog-body' },
        h('h2', {}, title),
        h('p', {}, text),
        h('div', { class: 'form-actions' },
          h('button', { value: 'cancel', type: 'submit', id: 'confirm-no' }, 'Keep it'),
          h('button', { value: 'ok', type: 'submit', class: 'danger', id: 'confirm-ok' }, okLabel))));
    confirmDialog.returnValue = '';
    confirmDialog.addEventListener('close', () => resolve(confirmDialog.returnValue === 'ok'), { once: true });
    confirmDialog.showModal();
  });
}

// ----- token and role ---------------------------------------------------------------

function askToken(message) {
  tokenError.textContent = message || '';
  tokenInput.value = '';
  if (!tokenDialog.open) tokenDialog.showModal();
  tokenInput.focus();
}

tokenForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const t = tokenInput.value.trim();
  if (!t) {
    tokenError.textContent = 'Enter a token.';
    return;
  }
  setToken(t);
  if (await identify()) {
    tokenDialog.close();
    live.connect();
    route();
  }
});

document.getElementById('change-token').addEventListener('click', () => {
  setToken('');
  me = null;
  renderWho();
  live.close();
  askToken('');
});

bus.addEventListener('unauthorized', (e) => {
  if (!tokenDialog.open) askToken(token() ? `The token was not accepted: ${e.detail}` : 'This server needs a bearer token.');
});

function renderWho() {
  if (!me) {
    mount(whoEl, h('span', { class: 'muted' }, 'Not signed in'));
    return;
  }
  mount(whoEl,
    h('span', { class: 'who-name' }, me.name),
    h('span', { class: `role role-${me.role}`, id: 'role' }, me.role),
    me.see_payloads ? null : h('span', { class: 'muted small' }, 'payloads redacted'));
}

/** Asks the API who the token is; false (and the prompt shown) when it is refused. */
async function identify() {
  try {
    me = await api('/api/whoami');
    renderWho();
    return true;
  } catch (e) {
    me = null;
    renderWho();
    if (e instanceof ApiError && e.status === 401) {
      askToken(token() ? `The token was not accepted: ${e.message}` : 'This server needs a bearer token.');
    } else {
      tokenError.textContent = e.message;
    }
    return false;
  }
}

// ----- routing ----------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/overview';
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

const ctx = {
  main,
  get me() { return me; },
  canOperate: () => Boolean(me && (me.role === 'operator' || me.role === 'admin')),
  toast,
  reportError,
  confirm: confirmAction,
  navigate: (hash) => { location.hash = hash; },
  reload: () => load(),
  query: new URLSearchParams(),
};

function pageFor({ parts, query }) {
  ctx.query = query;
  const [first, second] = parts;
  switch (first) {
    case 'overview': return ['overview', pages.overview(ctx)];
    case 'instances': return ['instances', second ? pages.instance(ctx, second) : pages.instances(ctx)];
    case 'dlq': return ['dlq', pages.dlqPage(ctx)];
    case 'decisions': return ['decisions', pages.decisions(ctx)];
    case 'workflows': return ['workflows', second ? pages.workflow(ctx, second) : pages.workflows(ctx)];
    default: return ['overview', pages.overview(ctx)];
  }
}

async function load() {
  if (!current) return;
  if (loading) {
    again = true;
    return;
  }
  loading = true;
  const page = current;
  try {
    await page.load();
    if (page === current) {
      document.title = `${page.title} · floxy`;
      main.setAttribute('aria-busy', 'false');
      main.dataset.loaded = String(Date.now());
    }
  } catch (e) {
    if (page === current) showLoadError(e);
  } finally {
    loading = false;
    if (again) {
      again = false;
      load();
    }
  }
}

function showLoadError(e) {
  if (e instanceof ApiError && e.status === 0 && main.dataset.loaded) return; // keep the last view; banner shows
  let text;
  if (e instanceof ApiError && e.status === 401) text = 'Sign in with a token to see this page.';
  else if (e instanceof ApiError && e.status === 403) text = `Your role cannot see this page. ${e.message}`;
  else if (e instanceof ApiError && e.status === 0) text = 'The floxy server cannot be reached.';
  else text = `This page could not be loaded: ${e.message}`;
  mount(main, panel(null, h('p', { class: 'callout bad', role: 'alert' }, text)));
}

function route() {
  const parsed = parseHash();
  const [nav, page] = pageFor(parsed);
  current = page;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.setAttribute('aria-busy', 'true');
  delete main.dataset.loaded;
  if (me) load();
}

window.addEventListener('hashchange', route);

// ----- live updates -----------------------------------------------------------------

function editing() {
  const el = document.activeElement;
  return Boolean(main.querySelector('[data-editing]'))
    || (el && main.contains(el) && el.matches('textarea, input, select'));
}

function scheduleReload() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => {
    // Do not rebuild a page under an open editor or a field being typed in; retry later.
    if (editing()) {
      scheduleReload();
      return;
    }
    load();
  }, RELOAD_DEBOUNCE_MS);
}

live.subscribe((e) => {
  if (current && current.wants(e)) scheduleReload();
});

bus.addEventListener('live', (e) => {
  const state = e.detail;
  liveEl.className = `live live-${state}`;
  liveEl.textContent = state === 'live' ? 'Live' : state === 'connecting' ? 'Connecting…' : 'Polling';
  liveEl.title = state === 'live' ? 'Pages update from the event stream'
    : 'The event stream is down: pages refresh every 10 s';
  if (state === 'live') scheduleReload();
});

setInterval(() => {
  if (live.state !== 'live' && me && !document.hidden && !editing()) load();
}, POLL_MS);

bus.addEventListener('network', (e) => {
  banner.hidden = e.detail;
  if (e.detail) scheduleReload();
});

// ----- start ------------------------------------------------------------------------

async function start() {
  renderWho();
  route();
  if (await identify()) {
    live.connect();
    load();
  }
}

start().catch((e) => {
  mount(main, panel(null, h('p', { class: 'callout bad', role: 'alert' }, `The console failed to start: ${e.message}`)));
});
