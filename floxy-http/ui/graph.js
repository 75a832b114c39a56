// A workflow graph drawn as SVG: a layered layout (longest-path layers, barycentre
// ordering), left to right, each step coloured by its status.

import { s } from './dom.js';

const NODE_W = 164;
const NODE_H = 52;
const GAP_X = 64;
const GAP_Y = 22;
const PAD = 16;

/**
 * Layout of `graph` ({nodes: [{id, kind, ...}], edges: [{from, to, kind}]}):
 * {pos: Map(id -> {x, y, layer}), width, height}.
 */
export function layout(graph) {
  const ids = graph.nodes.map((n) => n.id);
  const known = new Set(ids);
  const edges = graph.edges.filter((e) => known.has(e.from) && known.has(e.to) && e.from !== e.to);
  const out = new Map(ids.map((id) => [id, []]));
  const inc = new Map(ids.map((id) => [id, []]));
  for (const e of edges) {
    out.get(e.from).push(e.to);
    inc.get(e.to).push(e.from);
  }

  // Layers: longest path from the sources, over a topological order (Kahn). Nodes left
  // over (a cycle, which definitions do not have) go after the deepest layer.
  const indeg = new Map(ids.map((id) => [id, inc.get(id).length]));
  const layer = new Map();
  const queue = ids.filter((id) => indeg.get(id) === 0);
  for (const id of queue) layer.set(id, 0);
  for (let i = 0; i < queue.length; i += 1) {
    const u = queue[i];
    for (const v of out.get(u)) {
      layer.set(v, Math.max(layer.get(v) ?? 0, layer.get(u) + 1));
      indeg.set(v, indeg.get(v) - 1);
      if (indeg.get(v) === 0) queue.push(v);
    }
  }
  let deepest = Math.max(0, ...layer.values());
  for (const id of ids) {
    if (!layer.has(id)) {
      deepest += 1;
      layer.set(id, deepest);
    }
  }

  // Order within layers: definition order first, then barycentre sweeps.
  const layers = [];
  for (const id of ids) {
    const l = layer.get(id);
    (layers[l] ||= []).push(id);
  }
  for (let l = 0; l < layers.length; l += 1) layers[l] ||= [];
  const index = new Map();
  const reindex = () => layers.forEach((ls) => ls.forEach((id, i) => index.set(id, i)));
  reindex();
  const bary = (id, nbrs) => {
    const ns = nbrs.get(id);
    if (!ns.length) return index.get(id);
    return ns.reduce((a, n) => a + index.get(n), 0) / ns.length;
  };
  for (let sweep = 0; sweep < 4; sweep += 1) {
    const down = sweep % 2 === 0;
    const order = down ? layers.keys() : [...layers.keys()].reverse();
    for (const l of order) {
      const nbrs = down ? inc : out;
      const b = new Map(layers[l].map((id) => [id, bary(id, nbrs)]));
      layers[l].sort((a, c) => b.get(a) - b.get(c));
      layers[l].forEach((id, i) => index.set(id, i));
    }
  }

  const tallest = Math.max(1, ...layers.map((ls) => ls.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const width = PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X;
  const pos = new Map();
  layers.forEach((ls, l) => {
    const colH = ls.length * NODE_H + (ls.length - 1) * GAP_Y;
    const top = (height - colH) / 2;
    ls.forEach((id, i) => {
      pos.set(id, { x: PAD + l * (NODE_W + GAP_X), y: top + i * (NODE_H + GAP_Y), layer: l });
    });
  });
  return { pos, width, height, edges };
}

const KIND_LABEL = {
  task: 'task',
  save_point: 'save point',
  fork: 'fork',
  join: 'join',
  condition: 'condition',
  human: 'human decision',
};

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

let serial = 0;

/**
 * The SVG of `graph`; `statusOf(id)` gives a step's status (or undefined), `onSelect(id)`
 * is called when a step is clicked.
 */
export function renderGraph(graph, { statusOf = () => undefined, onSelect, label = 'Workflow graph' } = {}) {
  const { pos, width, height, edges } = layout(graph);
  serial += 1;
  const arrow = `arrow-${serial}`;
  const svg = s('svg', {
    class: 'graph',
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    'aria-label': label,
  });
  svg.append(s('defs', {},
    s('marker', {
      id: arrow, viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '7', markerHeight: '7',
      orient: 'auto-start-reverse',
    }, s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow-head' }))));

  const edgeLayer = s('g', { class: 'edges' });
  for (const e of edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x - 2;
    const y2 = b.y + NODE_H / 2;
    let d;
    if (b.layer > a.layer) {
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
    } else {
      // A back or same-layer edge: loop below the nodes.
      const low = Math.max(a.y, b.y) + NODE_H + GAP_Y / 2;
      d = `M${x1},${y1} C${x1 + 40},${low} ${x2 - 40},${low} ${x2},${y2}`;
    }
    const path = s('path', { d, class: `edge edge-${e.kind}`, 'marker-end': `url(#${arrow})` });
    edgeLayer.append(path);
    if (e.kind === 'else') {
      edgeLayer.append(s('text', {
        x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, class: 'edge-label', 'text-anchor': 'middle',
      }, 'else'));
    }
  }
  svg.append(edgeLayer);

  const nodeLayer = s('g', { class: 'nodes' });
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const status = statusOf(n.id);
    const sub = n.kind === 'task' ? (n.handler || 'task') : KIND_LABEL[n.kind] || n.kind;
    const g = s('g', {
      class: `node kind-${n.kind} ${status ? `st-${status}` : 'st-none'}`,
      transform: `translate(${p.x},${p.y})`,
      'data-step': n.id,
      tabindex: onSelect ? '0' : null,
      role: onSelect ? 'button' : null,
      'aria-label': `${n.id}: ${status ? status.replaceAll('_', ' ') : KIND_LABEL[n.kind] || n.kind}`,
    },
    s('title', {}, `${n.id} (${KIND_LABEL[n.kind] || n.kind})${n.handler ? `\nhandler: ${n.handler}` : ''}` +
      `${n.compensation ? `\ncompensation: ${n.compensation}` : ''}${n.strategy ? `\njoin: ${n.strategy}` : ''}` +
      `${status ? `\nstatus: ${status}` : ''}`),
    s('rect', { class: 'node-box', width: NODE_W, height: NODE_H, rx: n.kind === 'human' ? 16 : 7 }),
    s('rect', { class: 'node-stripe', width: 5, height: NODE_H - 2, x: 1, y: 1, rx: 3 }),
    s('text', { class: 'node-name', x: 14, y: 21 }, truncate(n.id, 19)),
    s('text', { class: 'node-sub', x: 14, y: 39 },
      truncate(status ? `${status.replaceAll('_', ' ')} · ${sub}` : sub, 24)));
    if (n.compensation) {
      g.append(s('text', { class: 'node-comp', x: NODE_W - 10, y: 18, 'text-anchor': 'end' }, '↺'));
    }
    if (onSelect) {
      g.addEventListener('click', () => onSelect(n.id));
      g.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          onSelect(n.id);
        }
      });
    }
    nodeLayer.append(g);
  }
  svg.append(nodeLayer);
  return svg;
}

/** A sparkline of one or more series [{values, class, label}] over the same x buckets. */
export function sparkline(series, { width = 560, height = 90, label = 'Trend' } = {}) {
  const n = Math.max(1, ...series.map((x) => x.values.length));
  const max = Math.max(1, ...series.flatMap((x) => x.values));
  const step = n > 1 ? (width - 8) / (n - 1) : 0;
  const y = (v) => height - 6 - (v / max) * (height - 16);
  const svg = s('svg', {
    class: 'sparkline', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label,
    preserveAspectRatio: 'none',
  });
  svg.append(s('line', { x1: 0, x2: width, y1: height - 6, y2: height - 6, class: 'axis' }));
  for (const ser of series) {
    const pts = ser.values.map((v, i) => `${(4 + i * step).toFixed(1)},${y(v).toFixed(1)}`);
    if (!pts.length) continue;
    svg.append(s('polygon', {
      class: `area ${ser.class}`,
      points: `4,${height - 6} ${pts.join(' ')} ${(4 + (n - 1) * step).toFixed(1)},${height - 6}`,
    }));
    svg.append(s('polyline', { class: `line ${ser.class}`, points: pts.join(' ') },
      s('title', {}, ser.label)));
  }
  svg.append(s('text', { x: width - 4, y: 12, class: 'spark-max', 'text-anchor': 'end' }, `max ${max}/min`));
  return svg;
}
