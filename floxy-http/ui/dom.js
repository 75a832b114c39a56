// Small DOM helpers: elements are built with createElement and text nodes only (never
// innerHTML), so data from the API cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

/** An HTML element: h('a', {href: '#/x', class: 'y'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ----- formatting -------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

/** "2025-01-31 14:05:09" in local time. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "1.2 s", "3 min 04 s", "2 h 05 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${pad(Math.floor(sec % 60))} s`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${pad(min % 60)} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** "5 s ago", "3 min ago". */
export function fmtAgo(ms) {
  if (ms === null || ms === undefined) return '—';
  return `${fmtDuration(Date.now() - ms)} ago`;
}

/** A `<time>` with the local time and the relative age as its title. */
export function timeEl(ms) {
  if (ms === null || ms === undefined) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: new Date(ms).toISOString(), title: fmtAgo(ms) }, fmtTime(ms));
}

/** The last 8 characters of a UUID. */
// Instance ids are UUIDv7: the head is the creation time, shared by instances started in
// the same minute, so the random tail is what tells them apart.
export const shortId = (id) => `…${String(id).slice(-8)}`;

/** A status pill. */
export function badge(status) {
  const st = status || 'unknown';
  return h('span', { class: `badge st-${st}` }, st.replaceAll('_', ' '));
}

const REDACTED = '[redacted]';

/** A pretty JSON viewer; redacted values are marked. */
export function jsonView(value, label) {
  if (value === REDACTED) {
    return h('div', { class: 'json redacted', 'aria-label': label },
      'Redacted: your token does not see payloads.');
  }
  if (value === undefined || value === null) {
    return h('pre', { class: 'json muted', 'aria-label': label }, 'null');
  }
  return h('pre', { class: 'json', 'aria-label': label, tabindex: '0' },
    JSON.stringify(value, null, 2));
}

/** A table: columns [{label, cell(row) -> node|string, class?}], rows. */
export function table(columns, rows, { empty = 'Nothing here.', rowAttrs } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h('tbody', {}, rows.map((r) =>
        h('tr', rowAttrs ? rowAttrs(r) : {}, columns.map((c) => h('td', { class: c.class }, c.cell(r))))))));
}

/** A titled panel. */
export function panel(title, ...children) {
  return h('section', { class: 'panel' },
    title ? h('h2', { class: 'panel-title' }, title) : null,
    children);
}
