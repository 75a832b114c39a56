// The pages of the console. Each page is a function of the context giving
// {title, load(), wants(event)}: `load` (re)renders from the API, `wants` says whether a live
// event concerns the page (the app then reloads it, debounced).

import { api, qs, ApiError } from './api.js';
import {
  h, mount, badge, timeEl, fmtDuration, fmtAgo, shortId, jsonView, table, panel,
} from './dom.js';
import { renderGraph, sparkline } from './graph.js';

export const STATUSES = [
  'pending', 'running', 'rolling_back', 'completed', 'failed', 'cancelling', 'cancelled',
  'aborted', 'dlq',
];
const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'aborted']);
/** A running instance without a commit for this long counts as stuck. */
const STUCK_MS = 10 * 60 * 1000;
const TREND_MINUTES = 60;

const instLink = (id) => h('a', { href: `#/instances/${encodeURIComponent(id)}`, class: 'mono', title: id }, shortId(id));
const wfLink = (id) => h('a', { href: `#/workflows/${encodeURIComponent(id)}` }, id);
const errText = (e) => (e ? h('span', { class: 'error-text', title: e }, e) : h('span', { class: 'muted' }, '—'));

function pageHeader(title, ...extra) {
  return h('header', { class: 'page-header' }, h('h1', {}, title), h('div', { class: 'page-tools' }, extra));
}

/** Runs an action of the page, reporting its outcome; resolves to whether it succeeded. */
async function act(ctx, button, fn, done) {
  button.disabled = true;
  try {
    await fn();
    if (done) ctx.toast(done, 'ok');
    return true;
  } catch (e) {
    ctx.reportError(e);
    return false;
  } finally {
    button.disabled = false;
  }
}

// ----- overview ---------------------------------------------------------------------

function card(label, value, { cls = '', href, hint, id } = {}) {
  const body = [h('div', { class: 'card-value' }, String(value)), h('div', { class: 'card-label' }, label),
    hint ? h('div', { class: 'card-hint' }, hint) : null];
  return href
    ? h('a', { class: `card ${cls}`, href, id }, body)
    : h('div', { class: `card ${cls}`, id }, body);
}

function statusBar(byStatus) {
  const total = Object.values(byStatus).reduce((a, b) => a + b, 0);
  if (!total) return h('p', { class: 'empty' }, 'No instances yet.');
  const segs = STATUSES.filter((st) => byStatus[st]);
  const bar = h('div', { class: 'status-bar', role: 'img', 'aria-label': 'Instances by status' });
  for (const st of segs) {
    const seg = h('a', { class: `seg st-${st}`, href: `#/instances?status=${st}`, title: `${st}: ${byStatus[st]}` });
    seg.style.flexGrow = String(byStatus[st]);
    bar.append(seg);
  }
  return h('div', {},
    bar,
    h('ul', { class: 'legend' }, segs.map((st) => h('li', {},
      h('a', { href: `#/instances?status=${st}` }, h('span', { class: `dot st-${st}` }), `${st.replaceAll('_', ' ')} `,
        h('strong', { dataset: { status: st } }, String(byStatus[st])))))));
}

function trend(items, now) {
  const start = now - TREND_MINUTES * 60000;
  const done = new Array(TREND_MINUTES).fill(0);
  const failed = new Array(TREND_MINUTES).fill(0);
  for (const r of items) {
    if (!TERMINAL.has(r.status) || r.updated_at < start) continue;
    const b = Math.min(TREND_MINUTES - 1, Math.floor((r.updated_at - start) / 60000));
    if (r.status === 'completed') done[b] += 1;
    else failed[b] += 1;
  }
  return { done, failed };
}

export function overview(ctx) {
  return {
    title: 'Overview',
    wants: () => true,
    async load() {
      const now = Date.now();
      const [summary, stats, waiting, dlq, pending, running, recent] = await Promise.all([
        api('/api/stats/summary'),
        api('/api/stats'),
        api('/api/decisions/waiting'),
        api(`/api/dlq${qs({ page_size: 5 })}`),
        api(`/api/instances${qs({ status: 'pending', page_size: 1 })}`),
        api(`/api/instances${qs({ status: 'running', page_size: 200 })}`),
        api(`/api/instances${qs({ created_from: now - TREND_MINUTES * 60000, page_size: 1000 })}`),
      ]);
      const by = stats.instances_by_status || {};
      const oldestPending = pending.items[0];
      const stuck = running.items.filter((r) => now - r.updated_at > STUCK_MS);
      const t = trend(recent.items, now);
      const sum = (xs) => xs.reduce((a, b) => a + b, 0);

      const cards = h('div', { class: 'cards', id: 'overview-cards' },
        card('Instances', summary.total_instances, { href: '#/instances', id: 'card-total' }),
        card('Active', summary.active_instances, { cls: 'c-running', href: '#/instances?status=running', id: 'card-active' }),
        card('Completed', summary.completed_instances, { cls: 'c-completed', href: '#/instances?status=completed', id: 'card-completed' }),
        card('Failed', summary.failed_instances, { cls: 'c-failed', href: '#/instances?status=failed', id: 'card-failed' }),
        card('In DLQ', stats.dlq, { cls: 'c-dlq', href: '#/dlq', id: 'card-dlq' }),
        card('Waiting decisions', waiting.items.length, { cls: 'c-waiting', href: '#/decisions', id: 'card-waiting' }),
        card('Queue', stats.queue_ready + stats.queue_leased, {
          id: 'card-queue', hint: `${stats.queue_ready} waiting · ${stats.queue_leased} leased`,
        }),
        card('Oldest pending', oldestPending ? fmtDuration(now - oldestPending.created_at) : '—', {
          id: 'card-pending', hint: `${by.pending || 0} pending`,
        }));

      const attention = [];
      for (const r of dlq.items) {
        attention.push({ kind: 'DLQ', cls: 'st-dlq', id: r.instance_id, wf: r.workflow_id,
          what: `${r.step_name} (${r.step_type}): ${r.error || r.reason}`, since: r.created_at, href: '#/dlq' });
      }
      for (const w of waiting.items.slice(0, 5)) {
        attention.push({ kind: 'Decision', cls: 'st-waiting_decision', id: w.instance_id, wf: w.workflow_id,
          what: `${w.step_name} waits for a human decision`, since: w.waiting_since, href: '#/decisions' });
      }
      for (const r of stuck.slice(0, 5)) {
        attention.push({ kind: 'Stuck', cls: 'st-stuck', id: r.id, wf: r.workflow_id,
          what: `running, no progress for ${fmtDuration(now - r.updated_at)}`, since: r.updated_at });
      }

      mount(ctx.main,
        pageHeader('Overview', h('span', { class: 'muted' }, `Updated ${new Date(now).toLocaleTimeString()}`)),
        cards,
        h('div', { class: 'grid-2' },
          panel('Instances by status', statusBar(by)),
          panel(`Finished per minute, last ${TREND_MINUTES} min`,
            sparkline([
              { values: t.done, class: 'completed', label: 'completed per minute' },
              { values: t.failed, class: 'failed', label: 'failed, cancelled or aborted per minute' },
            ], { label: 'Completed and failed instances per minute' }),
            h('ul', { class: 'legend' },
              h('li', {}, h('span', { class: 'dot st-completed' }), `completed ${sum(t.done)}`),
              h('li', {}, h('span', { class: 'dot st-failed' }), `failed, cancelled or aborted ${sum(t.failed)}`),
              h('li', { class: 'muted' }, 'of instances started in the window')))),
        panel('Needs attention',
          table([
            { label: 'Kind', cell: (a) => h('span', { class: `badge ${a.cls}` }, a.kind) },
            { label: 'Instance', cell: (a) => instLink(a.id) },
            { label: 'Workflow', cell: (a) => wfLink(a.wf) },
            { label: 'What', cell: (a) => (a.href ? h('a', { href: a.href }, a.what) : a.what), class: 'wide' },
            { label: 'Since', cell: (a) => timeEl(a.since) },
          ], attention, { empty: 'Nothing needs attention: no DLQ records, no waiting decisions, nothing stuck.' }),
          waiting.truncated ? h('p', { class: 'muted' }, `Scanned the oldest ${waiting.scanned} running instances for decisions.`) : null));
    },
  };
}

// ----- instances --------------------------------------------------------------------

export function instances(ctx) {
  const q = ctx.query;
  const page = Math.max(1, Number.parseInt(q.get('page') || '1', 10) || 1);
  const status = q.get('status') || '';
  const workflow = q.get('workflow') || '';
  const go = (params) => {
    const p = new URLSearchParams({ status, workflow, page: '1', ...params });
    for (const [k, v] of [...p.entries()]) if (!v || (k === 'page' && v === '1')) p.delete(k);
    const s = p.toString();
    ctx.navigate(`#/instances${s ? `?${s}` : ''}`);
  };
  return {
    title: 'Instances',
    wants: (e) => e.event_type.startsWith('workflow_') || e.event_type === 'dlq_requeued',
    async load() {
      const [list, wfs] = await Promise.all([
        api(`/api/instances${qs({ status, workflow, page, page_size: 25 })}`),
        api('/api/workflows'),
      ]);
      const statusSel = h('select', { id: 'filter-status', onchange: (e) => go({ status: e.target.value }) },
        h('option', { value: '' }, 'All statuses'),
        STATUSES.map((st) => h('option', { value: st, selected: st === status }, st.replaceAll('_', ' '))));
      const wfSel = h('select', { id: 'filter-workflow', onchange: (e) => go({ workflow: e.target.value }) },
        h('option', { value: '' }, 'All workflows'),
        wfs.map((w) => h('option', { value: w.id, selected: w.id === workflow }, w.id)));
      const now = Date.now();
      mount(ctx.main,
        pageHeader('Instances'),
        h('div', { class: 'filters', role: 'search' },
          h('label', { for: 'filter-status' }, 'Status'), statusSel,
          h('label', { for: 'filter-workflow' }, 'Workflow'), wfSel,
          h('span', { class: 'muted' }, 'Oldest first')),
        panel(null,
          table([
            { label: 'Instance', cell: (r) => instLink(r.id) },
            { label: 'Workflow', cell: (r) => wfLink(r.workflow_id) },
            { label: 'Status', cell: (r) => badge(r.status) },
            { label: 'Created', cell: (r) => timeEl(r.created_at) },
            { label: 'Duration', cell: (r) => fmtDuration((TERMINAL.has(r.status) ? r.updated_at : now) - r.created_at) },
            { label: 'Error', cell: (r) => errText(r.error), class: 'wide' },
          ], list.items, { empty: 'No instance matches.', rowAttrs: (r) => ({ dataset: { instance: r.id } }) }),
          h('nav', { class: 'pager', 'aria-label': 'Pages' },
            h('button', { type: 'button', disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, '← Previous'),
            h('span', {}, `Page ${page}`),
            h('button', { type: 'button', disabled: !list.next_cursor, onclick: () => go({ page: String(page + 1) }) }, 'Next →'))));
    },
  };
}

// ----- one instance -----------------------------------------------------------------

function stepRows(steps, now) {
  return table([
    { label: 'Step', cell: (s) => h('strong', {}, s.step_name) },
    { label: 'Status', cell: (s) => badge(s.status) },
    { label: 'Attempts', cell: (s) => (s.compensation_attempts ? `${s.attempts} + ${s.compensation_attempts} comp.` : String(s.attempts)) },
    { label: 'Started', cell: (s) => timeEl(s.started_at) },
    { label: 'Duration', cell: (s) => (s.started_at ? fmtDuration((s.ended_at || now) - s.started_at) : '—') },
    { label: 'Error', cell: (s) => errText(s.error), class: 'wide' },
    {
      label: 'Data',
      cell: (s) => h('details', { class: 'step-data' }, h('summary', {}, s.decision ? 'decision, input, output' : 'input, output'),
        s.decision ? h('p', { class: 'decision' },
          `${s.decision.decision} by ${s.decision.decided_by} at `, timeEl(s.decision.decided_at),
          s.decision.comment ? ` — “${s.decision.comment}”` : '') : null,
        h('div', { class: 'kv' }, h('span', {}, 'Input'), jsonView(s.input, `Input of ${s.step_name}`)),
        h('div', { class: 'kv' }, h('span', {}, 'Output'), jsonView(s.output, `Output of ${s.step_name}`))),
    },
  ], steps, { empty: 'No step has run yet.', rowAttrs: (s) => ({ id: `step-${s.step_name}`, dataset: { step: s.step_name } }) });
}

function timeline(events) {
  if (!events.length) return h('p', { class: 'empty' }, 'No events.');
  const t0 = events[0].created_at;
  return h('ol', { class: 'timeline', id: 'timeline' }, events.map((e) => {
    const kind = e.event_type;
    const tone = /failed|dlq|aborted|rejected|lease_expired/.test(kind) ? 'bad'
      : /completed|confirmed|rolled_back/.test(kind) ? 'good'
        : /retry|cancel|rollback|compensation|waiting|paused/.test(kind) ? 'warn' : 'info';
    const hasDetail = e.payload !== null && e.payload !== undefined;
    return h('li', { class: `tl tl-${tone}`, dataset: { event: kind } },
      h('span', { class: 'tl-dot', 'aria-hidden': 'true' }),
      h('div', { class: 'tl-main' },
        h('div', { class: 'tl-head' },
          h('span', { class: 'tl-kind' }, kind.replaceAll('_', ' ')),
          e.step_name ? h('span', { class: 'tl-step' }, e.step_name) : null,
          e.attempt ? h('span', { class: 'muted' }, `attempt ${e.attempt}`) : null,
          h('span', { class: 'tl-time' }, timeEl(e.created_at), h('span', { class: 'muted' }, ` +${fmtDuration(e.created_at - t0)}`))),
        hasDetail ? h('details', {}, h('summary', {}, 'details'), jsonView(e.payload, `Details of event ${e.seq}`)) : null));
  }));
}

/** The requeue editor of a DLQ record: a JSON textarea validated before it is sent. */
function requeueForm(ctx, rec, onDone) {
  const redacted = rec.input === '[redacted]';
  const area = h('textarea', {
    id: `requeue-input-${rec.id}`, class: 'code', rows: '8', spellcheck: 'false',
    'aria-describedby': `requeue-help-${rec.id}`,
  });
  area.value = redacted ? '' : JSON.stringify(rec.input, null, 2);
  const msg = h('p', { class: 'field-error', role: 'alert', id: `requeue-error-${rec.id}` });
  const validate = () => {
    if (!area.value.trim()) { msg.textContent = ''; return { ok: true, value: undefined }; }
    try {
      const value = JSON.parse(area.value);
      msg.textContent = '';
      area.removeAttribute('aria-invalid');
      return { ok: true, value };
    } catch (e) {
      msg.textContent = `Not valid JSON: ${e.message}`;
      area.setAttribute('aria-invalid', 'true');
      return { ok: false };
    }
  };
  area.addEventListener('input', validate);
  const btn = h('button', { type: 'submit', class: 'primary', id: `requeue-submit-${rec.id}` }, 'Requeue');
  const form = h('form', { class: 'requeue-form' },
    h('label', { for: area.id }, `New input of step ${rec.step_name}`),
    area,
    h('p', { class: 'help', id: `requeue-help-${rec.id}` },
      redacted ? 'The input is redacted for your token: leave empty to requeue with the stored input.'
        : 'Edit the step’s input (JSON). Leave empty to requeue with the stored input.'),
    msg,
    h('div', { class: 'form-actions' }, btn));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = validate();
    if (!v.ok) { area.focus(); return; }
    const body = v.value === undefined ? {} : { new_input: v.value };
    const ok = await act(ctx, btn, () => api(`/api/dlq/${rec.id}/requeue`, { method: 'POST', body }),
      `DLQ record ${rec.id} requeued`);
    if (ok) onDone();
  });
  return form;
}

function instanceActions(ctx, inst, steps, dlqRecs, reload) {
  const blocks = [];
  const terminal = TERMINAL.has(inst.status);
  if (!terminal && !['cancelling'].includes(inst.status)) {
    const reason = h('input', { id: 'action-reason', type: 'text', placeholder: 'optional', autocomplete: 'off' });
    const cancel = h('button', { type: 'button', class: 'action danger-outline', id: 'action-cancel' }, 'Cancel instance');
    const abort = h('button', { type: 'button', class: 'action danger', id: 'action-abort' }, 'Abort');
    cancel.addEventListener('click', async () => {
      if (!await ctx.confirm('Cancel this instance?', 'Its completed steps are compensated, then it ends cancelled.', 'Cancel instance')) return;
      await act(ctx, cancel, () => api(`/api/instances/${inst.id}/cancel`, { method: 'POST', body: { reason: reason.value || undefined } }), 'Cancellation requested');
      reload();
    });
    abort.addEventListener('click', async () => {
      if (!await ctx.confirm('Abort this instance?', 'It stops at once, without compensation. This cannot be undone.', 'Abort')) return;
      await act(ctx, abort, () => api(`/api/instances/${inst.id}/abort`, { method: 'POST', body: { reason: reason.value || undefined } }), 'Instance aborted');
      reload();
    });
    blocks.push(h('div', { class: 'action-block' },
      h('h3', {}, 'Stop'),
      h('label', { for: 'action-reason' }, 'Reason (recorded with your name)'), reason,
      h('div', { class: 'form-actions' }, cancel, abort)));
  }
  for (const s of steps.filter((x) => x.status === 'waiting_decision')) {
    const comment = h('textarea', { id: `decision-comment-${s.step_name}`, rows: '2', placeholder: 'optional' });
    const decide = (verb) => {
      const b = h('button', {
        type: 'button', class: `action ${verb === 'confirm' ? 'primary' : 'danger-outline'}`,
        id: `decision-${verb}`, dataset: { step: s.step_name },
      }, verb === 'confirm' ? 'Approve' : 'Reject');
      b.addEventListener('click', async () => {
        await act(ctx, b, () => api(`/api/instances/${inst.id}/steps/${encodeURIComponent(s.step_name)}/make-decision/${verb}`,
          { method: 'POST', body: { message: comment.value || undefined } }), verb === 'confirm' ? 'Approved' : 'Rejected');
        reload();
      });
      return b;
    };
    blocks.push(h('div', { class: 'action-block decision-block' },
      h('h3', {}, `Decision: ${s.step_name}`),
      h('label', { for: comment.id }, 'Comment'), comment,
      h('div', { class: 'form-actions' }, decide('confirm'), decide('reject'))));
  }
  for (const rec of dlqRecs) {
    blocks.push(h('div', { class: 'action-block' },
      h('h3', {}, `Requeue DLQ record ${rec.id}`),
      h('p', { class: 'muted' }, `${rec.step_name} (${rec.step_type}): ${rec.error || rec.reason}`),
      requeueForm(ctx, rec, reload)));
  }
  return blocks;
}

export function instance(ctx, id) {
  let actionsKey = null;
  let actionsEl = null;
  let selected = null;
  const view = {
    title: `Instance ${shortId(id)}`,
    wants: (e) => e.event_type === 'lagged' || e.instance_id === id,
    async load() {
      let detail;
      try {
        detail = await api(`/api/instances/${encodeURIComponent(id)}`);
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
          mount(ctx.main, pageHeader('Instance'), panel(null, h('p', { class: 'empty' }, `No instance ${id}.`)));
          return;
        }
        throw e;
      }
      const [events, dlq] = await Promise.all([
        api(`/api/instances/${encodeURIComponent(id)}/events`),
        api(`/api/dlq${qs({ instance: id, page_size: 50 })}`),
      ]);
      const now = Date.now();
      const steps = detail.steps;
      const byStep = new Map(steps.map((s) => [s.step_name, s.status]));
      const select = (name) => {
        selected = name;
        const row = ctx.main.querySelector(`tr[data-step="${CSS.escape(name)}"]`);
        ctx.main.querySelectorAll('tr.selected, g.node.selected').forEach((el) => el.classList.remove('selected'));
        const node = ctx.main.querySelector(`g.node[data-step="${CSS.escape(name)}"]`);
        if (node) node.classList.add('selected');
        if (row) { row.classList.add('selected'); row.scrollIntoView({ block: 'center', behavior: 'smooth' }); }
      };
      const graph = detail.graph
        ? renderGraph(detail.graph, { statusOf: (n) => byStep.get(n), onSelect: select, label: `Graph of ${detail.workflow_id}` })
        : h('p', { class: 'empty' }, 'The workflow definition is not registered in this process.');
      const operate = ctx.canOperate();
      const key = JSON.stringify([detail.status, steps.filter((s) => s.status === 'waiting_decision').map((s) => s.step_name),
        dlq.items.map((r) => r.id), operate]);
      if (key !== actionsKey || !actionsEl) {
        actionsKey = key;
        const blocks = operate ? instanceActions(ctx, detail, steps, dlq.items, () => ctx.reload()) : [];
        actionsEl = blocks.length ? panel('Actions', h('div', { class: 'actions' }, blocks)) : null;
        if (!operate && (!TERMINAL.has(detail.status))) {
          actionsEl = panel('Actions', h('p', { class: 'muted', id: 'no-actions' },
            `Your role (${ctx.me.role}) can view this instance but not act on it.`));
        }
      }
      const end = TERMINAL.has(detail.status) ? detail.updated_at : now;
      mount(ctx.main,
        pageHeader(h('span', {}, 'Instance ', h('span', { class: 'mono' }, detail.id)), badge(detail.status)),
        h('dl', { class: 'facts' },
          h('div', {}, h('dt', {}, 'Workflow'), h('dd', {}, wfLink(detail.workflow_id))),
          h('div', {}, h('dt', {}, 'Created'), h('dd', {}, timeEl(detail.created_at))),
          h('div', {}, h('dt', {}, 'Updated'), h('dd', {}, timeEl(detail.updated_at))),
          h('div', {}, h('dt', {}, TERMINAL.has(detail.status) ? 'Took' : 'Running for'), h('dd', {}, fmtDuration(end - detail.created_at))),
          detail.failed_step ? h('div', {}, h('dt', {}, 'Failed step'), h('dd', {}, detail.failed_step)) : null,
          detail.idempotency_key ? h('div', {}, h('dt', {}, 'Idempotency key'), h('dd', { class: 'mono' }, detail.idempotency_key)) : null),
        detail.error ? h('div', { class: 'callout bad', role: 'note' }, h('strong', {}, 'Error: '), detail.error) : null,
        actionsEl,
        panel('Graph', h('div', { class: 'graph-wrap', id: 'instance-graph' }, graph),
          h('p', { class: 'muted small' }, 'Click a step to see its run below. ↺: has a compensation.')),
        panel('Steps', stepRows(steps, now)),
        h('div', { class: 'grid-2' },
          panel('Input', jsonView(detail.input, 'Instance input')),
          panel('Output', jsonView(detail.output, 'Instance output'))),
        dlq.items.length && !operate ? panel('DLQ records', dlqTable(ctx, dlq.items, false)) : null,
        panel(`Timeline (${events.length} events)`, timeline(events)));
      if (selected) select(selected);
    },
  };
  return view;
}

// ----- DLQ --------------------------------------------------------------------------

function dlqTable(ctx, items, operate) {
  const cols = [
    { label: 'Id', cell: (r) => h('span', { class: 'mono' }, String(r.id)) },
    { label: 'Instance', cell: (r) => instLink(r.instance_id) },
    { label: 'Workflow', cell: (r) => wfLink(r.workflow_id) },
    { label: 'Step', cell: (r) => h('span', {}, r.step_name, ' ', h('span', { class: 'muted' }, r.step_type)) },
    { label: 'Error', cell: (r) => errText(r.error || r.reason), class: 'wide' },
    { label: 'Parked', cell: (r) => timeEl(r.created_at) },
  ];
  if (operate) {
    cols.push({
      label: h('span', { class: 'sr-only' }, 'Actions'),
      cell: (r) => h('button', {
        type: 'button', class: 'action small', id: `requeue-open-${r.id}`, 'aria-expanded': 'false',
        onclick: (ev) => {
          const tr = ev.target.closest('tr');
          const next = tr.nextElementSibling;
          if (next && next.classList.contains('editor-row')) {
            next.remove();
            ev.target.setAttribute('aria-expanded', 'false');
            return;
          }
          ev.target.setAttribute('aria-expanded', 'true');
          const cell = h('td', { colspan: String(cols.length) },
            requeueForm(ctx, r, () => ctx.reload()));
          tr.after(h('tr', { class: 'editor-row', dataset: { editing: 'true' } }, cell));
          cell.querySelector('textarea').focus();
        },
      }, 'Requeue…'),
    });
  }
  return table(cols, items, { empty: 'The DLQ is empty.', rowAttrs: (r) => ({ dataset: { dlq: String(r.id) } }) });
}

export function dlqPage(ctx) {
  const page = Math.max(1, Number.parseInt(ctx.query.get('page') || '1', 10) || 1);
  return {
    title: 'Dead-letter queue',
    wants: (e) => ['workflow_dlq', 'dlq_requeued', 'lagged'].includes(e.event_type) || e.event_type.startsWith('workflow_'),
    async load() {
      const list = await api(`/api/dlq${qs({ page, page_size: 25 })}`);
      mount(ctx.main,
        pageHeader('Dead-letter queue', h('span', { class: 'muted' }, 'Steps parked after their last retry')),
        panel(null, dlqTable(ctx, list.items, ctx.canOperate()),
          h('nav', { class: 'pager', 'aria-label': 'Pages' },
            h('button', { type: 'button', disabled: page <= 1, onclick: () => ctx.navigate(`#/dlq?page=${page - 1}`) }, '← Previous'),
            h('span', {}, `Page ${page}`),
            h('button', { type: 'button', disabled: !list.next_cursor, onclick: () => ctx.navigate(`#/dlq?page=${page + 1}`) }, 'Next →'))));
    },
  };
}

// ----- decisions --------------------------------------------------------------------

export function decisions(ctx) {
  return {
    title: 'Waiting decisions',
    wants: (e) => e.event_type.startsWith('human_') || e.event_type.startsWith('workflow_') || e.event_type === 'lagged',
    async load() {
      const list = await api('/api/decisions/waiting');
      const operate = ctx.canOperate();
      const cols = [
        { label: 'Instance', cell: (w) => instLink(w.instance_id) },
        { label: 'Workflow', cell: (w) => wfLink(w.workflow_id) },
        { label: 'Step', cell: (w) => h('strong', {}, w.step_name) },
        { label: 'Waiting', cell: (w) => h('span', { title: fmtAgo(w.waiting_since) }, fmtDuration(Date.now() - w.waiting_since)) },
      ];
      if (operate) {
        cols.push({
          label: 'Decide',
          class: 'wide',
          cell: (w) => {
            const cid = `comment-${w.instance_id}-${w.step_name}`;
            const comment = h('input', { type: 'text', id: cid, placeholder: 'comment (optional)', autocomplete: 'off' });
            const btn = (verb, label, cls) => {
              const b = h('button', { type: 'button', class: `action small ${cls}`, dataset: { verb } }, label);
              b.addEventListener('click', async () => {
                await act(ctx, b, () => api(`/api/instances/${w.instance_id}/steps/${encodeURIComponent(w.step_name)}/make-decision/${verb}`,
                  { method: 'POST', body: { message: comment.value || undefined } }), `${label}d ${w.step_name}`);
                ctx.reload();
              });
              return b;
            };
            return h('div', { class: 'inline-form' },
              h('label', { for: cid, class: 'sr-only' }, `Comment on ${w.step_name}`), comment,
              btn('confirm', 'Approve', 'primary'), btn('reject', 'Reject', 'danger-outline'));
          },
        });
      }
      mount(ctx.main,
        pageHeader('Waiting decisions'),
        panel(null, table(cols, list.items, { empty: 'No human step waits for a decision.' }),
          list.truncated ? h('p', { class: 'muted' }, `Only the oldest ${list.scanned} running instances were scanned.`) : null));
    },
  };
}

// ----- workflows --------------------------------------------------------------------

export function workflows(ctx) {
  return {
    title: 'Workflows',
    wants: () => false,
    async load() {
      const list = await api('/api/workflows');
      const details = await Promise.all(list.map((w) => api(`/api/workflows/${encodeURIComponent(w.id)}`)));
      mount(ctx.main,
        pageHeader('Workflows', h('span', { class: 'muted' }, `${list.length} definitions`)),
        h('div', { class: 'wf-grid' }, details.map((d) => h('a', { class: 'wf-card', href: `#/workflows/${encodeURIComponent(d.id)}` },
          h('div', { class: 'wf-card-head' }, h('strong', {}, d.name), h('span', { class: 'badge' }, `v${d.version}`)),
          h('div', { class: 'wf-thumb' }, renderGraph(d.graph, { label: `Graph of ${d.id}` })),
          h('div', { class: 'muted small' }, `${d.graph.nodes.length} steps · ${d.id}`)))));
    },
  };
}

export function workflow(ctx, id) {
  return {
    title: id,
    wants: (e) => e.workflow_id === id && e.event_type.startsWith('workflow_'),
    async load() {
      const [d, inst] = await Promise.all([
        api(`/api/workflows/${encodeURIComponent(id)}`),
        api(`/api/workflows/${encodeURIComponent(id)}/instances${qs({ page_size: 10 })}`),
      ]);
      let start = null;
      if (ctx.canOperate()) {
        const area = h('textarea', { id: 'start-input', class: 'code', rows: '4', spellcheck: 'false' });
        area.value = '{}';
        const msg = h('p', { class: 'field-error', role: 'alert' });
        const btn = h('button', { type: 'submit', class: 'primary', id: 'start-submit' }, 'Start instance');
        const form = h('form', { class: 'start-form' },
          h('label', { for: 'start-input' }, 'Input (JSON)'), area, msg, h('div', { class: 'form-actions' }, btn));
        form.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          let input;
          try { input = JSON.parse(area.value || 'null'); msg.textContent = ''; } catch (e) { msg.textContent = `Not valid JSON: ${e.message}`; return; }
          let started = null;
          await act(ctx, btn, async () => { started = await api(`/api/workflows/${encodeURIComponent(id)}/start`, { method: 'POST', body: { input } }); }, 'Instance started');
          if (started) ctx.navigate(`#/instances/${started.instance_id}`);
        });
        start = panel('Start', form);
      }
      const kinds = [...new Set(d.graph.nodes.map((n) => n.kind))];
      mount(ctx.main,
        pageHeader(h('span', {}, d.name, ' ', h('span', { class: 'muted' }, `v${d.version}`))),
        panel('Graph', h('div', { class: 'graph-wrap' }, renderGraph(d.graph, { label: `Graph of ${d.id}` })),
          h('ul', { class: 'legend' }, kinds.map((k) => h('li', {}, h('span', { class: `dot kind-${k}` }), k.replaceAll('_', ' '))))),
        h('div', { class: 'grid-2' },
          panel('Steps', table([
            { label: 'Step', cell: (n) => h('strong', {}, n.id) },
            { label: 'Kind', cell: (n) => n.kind.replaceAll('_', ' ') },
            { label: 'Handler', cell: (n) => n.handler || (n.strategy ? `join: ${n.strategy}` : '—') },
            { label: 'Compensation', cell: (n) => n.compensation || '—' },
          ], d.graph.nodes)),
          h('div', {},
            start,
            panel('Instances (oldest first)', table([
              { label: 'Instance', cell: (r) => instLink(r.id) },
              { label: 'Status', cell: (r) => badge(r.status) },
              { label: 'Created', cell: (r) => timeEl(r.created_at) },
            ], inst.items, { empty: 'No instances yet.' }),
            h('a', { href: `#/instances?workflow=${encodeURIComponent(id)}` }, 'All instances of this workflow →')))),
        panel('Definition', h('details', {}, h('summary', {}, 'JSON'), jsonView(d.definition, 'Definition'))));
    },
  };
}
