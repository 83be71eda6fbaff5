/* corral web console: one hand-written file, no libraries, no build step.
 *
 * Structure, top to bottom:
 *  1. Helpers: h() builds DOM; API strings only ever become text nodes or attribute
 *     values (never HTML). Formatting of times, bytes and percentages.
 *  2. api(): same-origin JSON fetch; every POST carries the CSRF token; a 401 from
 *     anything ends the session and shows /login.
 *  3. store: the live picture of the cluster (node summaries by name, recent events),
 *     plus the set of changes not yet rendered.
 *  4. Live feed: ONE EventSource for the session. A snapshot replaces the store, a
 *     delta merges into it; either schedules one render per animation frame, which
 *     hands the current page what changed.
 *  5. Router: path -> page; same-origin link clicks become pushState navigations.
 *     Every navigation gets a fresh page context (ctx) whose timers, observers and
 *     pending fetches die with it.
 *  6. Pages: `function (ctx, params) -> { update(changes) }`, each rendering into
 *     <main id="page"> and calling ready(ctx) once it shows real data.
 *  7. Session: whoami, login, logout, boot.
 */
(function () {
'use strict';

// ---------------------------------------------------------------- 1. helpers

const COLOURS = { ok: '#2e7d32', warn: '#f57c00', fail: '#d32f2f', unknown: '#9e9e9e' };
const HEALTH_RANK = { healthy: 0, degraded: 1, unhealthy: 2 };
const LIVENESS_RANK = { ready: 0, disconnected: 1, down: 2 };
const GPU_RANK = { ok: 0, warn: 1, fail: 2 };
const FINISHED = new Set(['succeeded', 'failed', 'cancelled', 'timed-out', 'rejected', 'orphaned']);
const EVENT_KINDS = ['liveness', 'health', 'gpu', 'audit', 'remediation'];
const MAX_STORE_EVENTS = 500;
const DASH = '\u2014';
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

/** Builds an element. attrs: `class`, `on<event>` (a listener), anything else an
 * attribute (null/false left out). Children: nodes, strings (as text), arrays. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const key of Object.keys(attrs)) {
    const value = attrs[key];
    if (value == null || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) appendAll(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const key of Object.keys(attrs)) el.setAttribute(key, attrs[key]);
  return el;
}

const pad2 = (n) => String(n).padStart(2, '0');

/** `HH:MM:SS` for today, else `YYYY-MM-DD HH:MM`, local time. */
function fmtTime(ms) {
  const d = new Date(ms);
  const hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  if (d.toDateString() === new Date().toDateString()) return hm + ':' + pad2(d.getSeconds());
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hm}`;
}

/** A <time> with the short form as text and the full ISO time as its title. */
function timeEl(ms) {
  // An agent's clock can say anything: a time no Date holds is shown as missing.
  if (ms == null || !Number.isFinite(new Date(ms).getTime())) return DASH;
  const iso = new Date(ms).toISOString();
  return h('time', { datetime: iso, title: iso }, fmtTime(ms));
}

function fmtBytes(n) {
  if (n == null) return DASH;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = n;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return (i === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + ' ' + units[i];
}

const fmtPct = (v) => (v == null ? DASH : Math.round(v) + '%');
const fmtUnit = (v, unit) => (v == null ? DASH : Math.round(v) + unit);

function fmtDuration(secs) {
  if (secs == null) return DASH;
  const d = Math.floor(secs / 86400);
  const hr = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  return `${m}m`;
}

const badge = (text, cls) => h('span', { class: 'badge ' + cls }, text);
const statusBadge = (status) => badge(status, 'st-' + status);
const nodeHref = (name) => '/nodes/' + encodeURIComponent(name);
const jobHref = (id) => '/jobs/' + encodeURIComponent(id);
const nodeLink = (name) => (name ? h('a', { href: nodeHref(name) }, name) : DASH);
const jobLink = (id) => h('a', { href: jobHref(id) }, id);

/** A table with a header row; `rows` go into its tbody. */
function table(attrs, headings, rows) {
  return h('table', attrs,
    h('thead', null, h('tr', null, headings.map((t) => h('th', null, t)))),
    h('tbody', null, rows));
}

/** A definition list of [label, value] pairs; null values show as a dash. */
function fields(pairs) {
  return h('dl', { class: 'fields' }, pairs.map(([label, value]) =>
    [h('dt', null, label), h('dd', null, value == null || value === '' ? DASH : value)]));
}

/** Replaces an element's children (null entries left out, unlike replaceChildren). */
function setChildren(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
}

/** Fills a section with a heading and content. */
function fill(section, title, ...content) {
  setChildren(section, h('h2', null, title), content);
}

/** A <select>; options are [value, label] pairs. */
function select(id, options, value) {
  const el = h('select', { id });
  setOptions(el, options, value);
  return el;
}

const optionKeys = new WeakMap();

/** Replaces a select's options only when they differ (an open select stays open). */
function setOptions(el, options, value = el.value) {
  if (value && !options.some((o) => o[0] === value)) options = options.concat([[value, value]]);
  const key = options.map((o) => o[0] + '\u0001' + o[1]).join('\u0000');
  if (optionKeys.get(el) !== key) {
    optionKeys.set(el, key);
    el.replaceChildren(...options.map(([v, label]) => h('option', { value: v }, label)));
  }
  el.value = value;
}

const optionsOf = (values, allLabel) => [['', allLabel]].concat(values.map((v) => [v, v]));

/** Name order: digit runs compare as numbers (gpu-2 before gpu-10). */
const nameKey = (name) => name.replace(/\d+/g, (d) => d.padStart(20, '0'));

function sortedUnique(values) {
  return [...new Set(values)].filter((v) => v !== '' && v != null).sort();
}

/** Coalesces calls to one per animation frame. */
function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

// ---------------------------------------------------------------- flash messages

let flashTimer = 0;

function flash(kind, text) {
  const el = $('flash');
  clearTimeout(flashTimer);
  el.className = kind;
  el.textContent = text;
  el.hidden = false;
  if (kind === 'ok') flashTimer = setTimeout(clearFlash, 6000);
}

function clearFlash() {
  const el = $('flash');
  clearTimeout(flashTimer);
  el.hidden = true;
  el.className = '';
  el.textContent = '';
}

const flashError = (e) => flash('error', e.message);

// ---------------------------------------------------------------- 2. api

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** JSON request. Resolves to the parsed body; rejects with ApiError carrying the
 * server's `error` text. A 401 ends the session unless opts.quiet401. */
async function api(method, path, body, opts = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (method !== 'GET') {
    init.headers['Content-Type'] = 'application/json';
    if (session.me && session.me.csrf) init.headers['X-CSRF-Token'] = session.me.csrf;
    init.body = JSON.stringify(body || {});
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'cannot reach the coordinator (' + e.message + ')');
  }
  const data = await readJson(res);
  if (res.status === 401 && !opts.quiet401) sessionExpired();
  if (!res.ok) {
    const text = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status} ${res.statusText}`;
    throw new ApiError(res.status, text);
  }
  return data;
}

async function readJson(res) {
  try {
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  } catch (_) {
    return null;
  }
}

// ---------------------------------------------------------------- 3. store

const store = {
  ready: false,
  seq: 0,
  /** name -> NodeSummary; a changed node's summary is replaced, never mutated. */
  nodes: new Map(),
  /** Recent events, oldest first. */
  events: [],
  order: null,
  rank: null,

  reset() {
    this.ready = false;
    this.seq = 0;
    this.nodes = new Map();
    this.events = [];
    this.order = null;
  },

  /** Node names in name order (recomputed only when the set of names changed). */
  names() {
    if (!this.order) {
      const keyed = [...this.nodes.keys()].map((n) => [nameKey(n), n]);
      keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1));
      this.order = keyed.map((k) => k[1]);
      this.rank = new Map(this.order.map((n, i) => [n, i]));
    }
    return this.order;
  },

  rankMap() {
    this.names();
    return this.rank;
  },

  sortedNodes() {
    return this.names().map((n) => this.nodes.get(n));
  },

  addEvents(events) {
    if (!events.length) return;
    this.events.push(...events);
    if (this.events.length > MAX_STORE_EVENTS) this.events.splice(0, this.events.length - MAX_STORE_EVENTS);
  },
};

/** What changed since the current page last rendered. */
let changes = { full: false, nodes: new Set(), events: [] };

function takeChanges() {
  const taken = changes;
  changes = { full: false, nodes: new Set(), events: [] };
  return taken;
}

const scheduleRender = perFrame(() => {
  const taken = takeChanges();
  if (current && current.page.update) current.page.update(taken);
});

function applySnapshot(s) {
  store.nodes = new Map(s.nodes.map((n) => [n.name, n]));
  store.order = null;
  store.events = [];
  store.addEvents(s.events);
  store.seq = s.seq;
  store.ready = true;
  changes = { full: true, nodes: new Set(), events: [] };
  scheduleRender();
}

function applyDelta(d) {
  if (!store.ready || d.seq <= store.seq) return;
  store.seq = d.seq;
  for (const n of d.nodes) {
    if (!store.nodes.has(n.name)) store.order = null;
    store.nodes.set(n.name, n);
    changes.nodes.add(n.name);
  }
  store.addEvents(d.events);
  changes.events.push(...d.events);
  if (changes.events.length > MAX_STORE_EVENTS) changes.events.splice(0, changes.events.length - MAX_STORE_EVENTS);
  scheduleRender();
}

// ---------------------------------------------------------------- 4. live feed

const feed = { source: null, retry: 0 };

function openFeed() {
  closeFeed();
  const source = new EventSource('/api/v1/console/stream');
  feed.source = source;
  setFeedState('connecting', 'connecting\u2026');
  source.addEventListener('snapshot', (e) => onFeedMessage(e, (s) => {
    applySnapshot(s);
    setFeedState('live', 'live');
  }));
  source.addEventListener('delta', (e) => onFeedMessage(e, applyDelta));
  source.addEventListener('resync', () => setFeedState('connecting', 'catching up\u2026'));
  source.addEventListener('error', () => onFeedError(source));
}

function onFeedMessage(e, apply) {
  let data;
  try {
    data = JSON.parse(e.data);
  } catch (err) {
    console.error('corral: bad feed message', err);
    return;
  }
  apply(data);
}

/** The browser retries a dropped stream by itself. A refused one (CLOSED: a 401, a
 * 503) is retried after 5 s, once whoami says the session still stands (a 401 there
 * ends the session). */
function onFeedError(source) {
  if (source !== feed.source) return;
  if (source.readyState !== EventSource.CLOSED) {
    setFeedState('lost', 'reconnecting\u2026');
    return;
  }
  setFeedState('lost', 'disconnected');
  api('GET', '/api/v1/whoami').then((who) => {
    session.me = { ...session.me, ...who };
  }, () => {}).then(() => {
    if (feed.source !== source) return;
    clearTimeout(feed.retry);
    feed.retry = setTimeout(openFeed, 5000);
  });
}

function closeFeed() {
  clearTimeout(feed.retry);
  if (feed.source) feed.source.close();
  feed.source = null;
}

function setFeedState(state, text) {
  const el = $('feed');
  if (!el) return;
  el.className = 'feed ' + state;
  el.textContent = text;
  el.title = 'live updates: ' + text;
}

// ---------------------------------------------------------------- 5. router

const ROUTES = [
  { re: /^\/$/, page: 'overview', nav: 'overview', title: '', render: overviewPage },
  { re: /^\/nodes$/, page: 'nodes', nav: 'nodes', title: 'Nodes', render: nodesPage },
  { re: /^\/nodes\/([^/]+)$/, page: 'node', nav: 'nodes', title: 'Node', render: nodePage },
  { re: /^\/gpus$/, page: 'gpus', nav: 'gpus', title: 'GPUs', render: gpusPage },
  { re: /^\/jobs$/, page: 'jobs', nav: 'jobs', title: 'Jobs', render: jobsPage },
  { re: /^\/jobs\/([^/]+)$/, page: 'job', nav: 'jobs', title: 'Job', render: jobPage },
  { re: /^\/events$/, page: 'events', nav: 'events', title: 'Events', render: eventsPage },
  { re: /^\/login$/, page: 'login', title: 'Log in', render: loginPage, public: true },
];
const NOT_FOUND = { page: 'notfound', title: 'Not found', render: notFoundPage };

/** The page now shown: { ctx, page }. */
let current = null;

function matchRoute(path) {
  for (const route of ROUTES) {
    const m = route.re.exec(path);
    if (m) return { route, params: m.slice(1).map(safeDecode) };
  }
  return null;
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch (_) {
    return s;
  }
}

function navigate(url, replace) {
  if (replace) history.replaceState(null, '', url);
  else if (url !== location.pathname + location.search) history.pushState(null, '', url);
  showPage();
}

/** Same-origin links to console pages navigate in place; modified clicks, other
 * targets and non-console paths (/api, /metrics) are the browser's. */
function onDocumentClick(e) {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target instanceof Element ? e.target.closest('a[href]') : null;
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !matchRoute(url.pathname)) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
}

function makeCtx() {
  const cleanups = [];
  const ctx = {
    alive: true,
    marked: false,
    after(ms, fn) {
      const t = setTimeout(() => ctx.alive && fn(), ms);
      cleanups.push(() => clearTimeout(t));
    },
    every(ms, fn) {
      const t = setInterval(() => ctx.alive && fn(), ms);
      cleanups.push(() => clearInterval(t));
    },
    onClose(fn) {
      cleanups.push(fn);
    },
    /** GET; `ok`/`fail` run only while this page is shown. Never rejects. */
    load(path, ok, fail) {
      return api('GET', path).then(
        (data) => ctx.alive && ok(data),
        (e) => ctx.alive && e.status !== 401 && (fail || flashError)(e));
    },
    close() {
      ctx.alive = false;
      cleanups.forEach((fn) => fn());
    },
  };
  return ctx;
}

function showPage() {
  if (current) current.ctx.close();
  current = null;
  clearFlash();
  const found = matchRoute(location.pathname);
  const route = found ? found.route : NOT_FOUND;
  if (!route.public && !session.me) {
    toLogin();
    return;
  }
  const main = $('page');
  main.removeAttribute('data-ready');
  main.dataset.page = route.page;
  main.replaceChildren();
  main.scrollTop = 0;
  $('top').hidden = route.page === 'login' || !session.me;
  markNav(route.nav);
  document.title = route.title ? route.title + ' \u00b7 corral' : 'corral';
  const ctx = makeCtx();
  current = { ctx, page: {} };
  current.page = route.render(ctx, found ? found.params : [], main) || {};
}

/** Marks the page as showing real data (tests and the perf mark key off this). */
function ready(ctx) {
  if (!ctx.alive) return;
  $('page').dataset.ready = '1';
  if (!ctx.marked) {
    ctx.marked = true;
    performance.mark('corral-rendered');
  }
}

// ---------------------------------------------------------------- 6. pages

// ----- shared pieces: status text, events

function firstReason(n) {
  return n.reasons.length ? n.reasons[0].message : '';
}

function gpuWorst(n) {
  let worst = -1;
  for (const g of n.gpus) worst = Math.max(worst, GPU_RANK[g.status]);
  return worst < 0 ? null : ['ok', 'warn', 'fail'][worst];
}

const rayText = (n) => (n.ray ? n.ray + (n.ray_state ? ' \u00b7 ' + n.ray_state : '') : '');

function eventHead(withNode) {
  return h('thead', null, h('tr', null,
    h('th', { class: 'c-time' }, 'Time'), withNode ? h('th', { class: 'c-node' }, 'Node') : null,
    h('th', { class: 'c-kind' }, 'Kind'), h('th', { class: 'c-change' }, 'Change'), h('th', null, 'Message')));
}

function eventRow(e, withNode) {
  return h('tr', { 'data-event': e.id, class: 'ev-' + e.kind },
    h('td', null, timeEl(e.at_ms)),
    withNode ? h('td', null, nodeLink(e.node)) : null,
    h('td', null, badge(e.kind, 'kind')),
    h('td', null, e.from ? e.from + ' \u2192 ' + e.to : e.to),
    h('td', { class: 'msg' }, e.message));
}

/** Inserts events into a tbody kept newest first, skipping ones already shown
 * (`seen`: ids) and dropping the oldest past `limit`. Returns how many were new. */
function insertEvents(tbody, seen, events, limit, withNode) {
  const fresh = new Map();
  for (const e of events) if (!seen.has(e.id)) fresh.set(e.id, e);
  const oldestFirst = [...fresh.values()].sort((a, b) => a.id - b.id).slice(-limit);
  for (const e of oldestFirst) {
    seen.add(e.id);
    let before = tbody.firstElementChild;
    while (before && Number(before.dataset.event) > e.id) before = before.nextElementSibling;
    tbody.insertBefore(eventRow(e, withNode), before);
  }
  while (tbody.children.length > limit) {
    seen.delete(Number(tbody.lastElementChild.dataset.event));
    tbody.lastElementChild.remove();
  }
  return oldestFirst.length;
}

function waiting(text) {
  return h('p', { class: 'muted waiting' }, text || 'Waiting for the live feed\u2026');
}

// ----- overview

function overviewPage(ctx, _params, main) {
  const numbers = {};
  const card = (id, label, href, cls) => {
    numbers[id] = h('span', { id, class: 'num' }, DASH);
    return h('a', { class: 'card ' + cls, href }, numbers[id], h('span', { class: 'label' }, label));
  };
  const group = (title, ...cards) => h('div', { class: 'card-group' }, h('h2', null, title), h('div', { class: 'cards' }, cards));
  const banner = h('div', { id: 'remediation', class: 'banner', hidden: true });
  const problems = h('ul', { id: 'problems', class: 'problems' });
  const problemsNote = h('p', { class: 'muted' });
  const recent = h('tbody');
  main.append(
    h('h1', null, 'Overview'),
    banner,
    h('div', { class: 'card-row' },
      group('Nodes',
        card('count-ready', 'ready', '/nodes?liveness=ready', 'c-ok'),
        card('count-disconnected', 'disconnected', '/nodes?liveness=disconnected', 'c-grey'),
        card('count-down', 'down', '/nodes?liveness=down', 'c-grey'),
        card('count-cordoned', 'cordoned', '/nodes', 'c-plain')),
      group('Health',
        card('count-healthy', 'healthy', '/nodes?health=healthy', 'c-ok'),
        card('count-degraded', 'degraded', '/nodes?health=degraded', 'c-warn'),
        card('count-unhealthy', 'unhealthy', '/nodes?health=unhealthy', 'c-fail')),
      group('GPUs',
        card('gpus-ok', 'ok', '/gpus', 'c-ok'),
        card('gpus-warn', 'warn', '/gpus', 'c-warn'),
        card('gpus-fail', 'fail', '/gpus', 'c-fail'))),
    h('div', { class: 'columns' },
      h('section', { class: 'panel' }, h('h2', null, 'Problems'), problems, problemsNote),
      h('section', { class: 'panel' }, h('h2', null, 'Recent events'),
        h('table', { id: 'recent-events', class: 'events' }, eventHead(true), recent))));

  // Lists are rebuilt only when what they show changed, so a delta a second does not
  // replace a link under the pointer.
  let shown = { problems: null, recent: null };

  function render() {
    if (!store.ready) return;
    const nodes = store.sortedNodes();
    renderCounts(numbers, countCluster(nodes));
    const troubled = problemNodes(nodes);
    const problemsKey = troubled.map((n) => [n.name, n.liveness, n.health, n.cordoned, firstReason(n)].join('\u0001')).join('\u0000');
    if (problemsKey !== shown.problems) renderProblems(problems, problemsNote, troubled);
    const latest = store.events.slice(-20).reverse();
    const recentKey = latest.map((e) => e.id).join(',');
    if (recentKey !== shown.recent) recent.replaceChildren(...latest.map((e) => eventRow(e, true)));
    shown = { problems: problemsKey, recent: recentKey };
    ready(ctx);
  }

  const loadRemediation = () => api('GET', '/api/v1/remediation').then(
    (r) => ctx.alive && renderRemediation(banner, r), () => {});
  let remediationDue = false;

  render();
  loadRemediation();
  return {
    update(ch) {
      render();
      if (!remediationDue && ch.events.some((e) => e.kind === 'remediation')) {
        remediationDue = true;
        ctx.after(2000, () => {
          remediationDue = false;
          loadRemediation();
        });
      }
    },
  };
}

function countCluster(nodes) {
  const c = { ready: 0, disconnected: 0, down: 0, healthy: 0, degraded: 0, unhealthy: 0, cordoned: 0, ok: 0, warn: 0, fail: 0 };
  for (const n of nodes) {
    c[n.liveness]++;
    c[n.health]++;
    if (n.cordoned) c.cordoned++;
    for (const g of n.gpus) c[g.status]++;
  }
  return c;
}

function renderCounts(numbers, c) {
  for (const key of ['ready', 'disconnected', 'down', 'healthy', 'degraded', 'unhealthy', 'cordoned']) {
    numbers['count-' + key].textContent = String(c[key]);
  }
  for (const key of ['ok', 'warn', 'fail']) numbers['gpus-' + key].textContent = String(c[key]);
}

/** Unhealthy, then degraded, then not-ready nodes, each group in name order. */
function problemNodes(nodes) {
  const groups = [[], [], []];
  for (const n of nodes) {
    if (n.health === 'unhealthy') groups[0].push(n);
    else if (n.health === 'degraded') groups[1].push(n);
    else if (n.liveness !== 'ready') groups[2].push(n);
  }
  return groups[0].concat(groups[1], groups[2]);
}

const MAX_PROBLEMS = 200;

function renderProblems(list, note, nodes) {
  list.replaceChildren(...nodes.slice(0, MAX_PROBLEMS).map((n) => h('li', { 'data-node': n.name },
    nodeLink(n.name), ' ',
    n.liveness !== 'ready' ? badge(n.liveness, 'lv-' + n.liveness) : null,
    n.health !== 'healthy' ? statusBadge(n.health) : null,
    n.cordoned ? badge('cordoned', 'cordoned') : null,
    h('span', { class: 'msg' }, firstReason(n)))));
  if (!nodes.length) note.textContent = 'No problems: every node is ready and healthy.';
  else if (nodes.length > MAX_PROBLEMS) note.textContent = `\u2026 and ${nodes.length - MAX_PROBLEMS} more (see Nodes).`;
  else note.textContent = '';
}

function renderRemediation(banner, r) {
  const lines = [];
  if (r.paused) lines.push(h('div', null, 'Remediation paused by ', h('b', null, r.paused.by), ' since ', timeEl(r.paused.since_ms), '.'));
  if (r.blocked) lines.push(h('div', null, 'Drains held back: ', r.blocked));
  if (r.enabled && r.dry_run) lines.push(h('div', null, 'Remediation is in dry-run mode: it records what it would drain.'));
  if (r.waiting && r.waiting.length) {
    lines.push(h('div', null, `${r.waiting.length} unhealthy node(s) waiting to be drained: `,
      r.waiting.slice(0, 10).map((w, i) => [i ? ', ' : '', nodeLink(w.node)])));
  }
  if (lines.length) lines.push(h('div', { class: 'muted' }, `${r.cordoned} of ${r.nodes} nodes cordoned (limit ${r.limit}).`));
  banner.replaceChildren(...lines);
  banner.hidden = !lines.length;
}

// ----- nodes (virtualized table)

const NODE_COLUMNS = [
  { key: 'name', label: 'Node', sortKey: (n, rank) => rank.get(n.name) },
  { key: 'liveness', label: 'Liveness', sortKey: (n) => LIVENESS_RANK[n.liveness] * 2 + (n.cordoned ? 1 : 0) },
  { key: 'health', label: 'Health', sortKey: (n) => HEALTH_RANK[n.health] },
  { key: 'cpu', label: 'CPU', sortKey: (n) => (n.cpu == null ? -1 : n.cpu) },
  { key: 'mem', label: 'Mem', sortKey: (n) => (n.mem == null ? -1 : n.mem) },
  { key: 'gpus', label: 'GPUs', sortKey: (n) => (n.gpus.length ? GPU_RANK[gpuWorst(n)] * 10000 + n.gpus.length : -1) },
  { key: 'ray', label: 'Ray', sortKey: rayText },
  { key: 'schedulers', label: 'Schedulers', sortKey: (n) => n.schedulers.join(', ') },
];
const NODE_FILTERS = ['liveness', 'health', 'gpu', 'scheduler', 'ray', 'q'];
const ROW_HEIGHT = 28;

function nodesPage(ctx, _params, main) {
  const query = new URLSearchParams(location.search);
  const filters = {};
  for (const key of NODE_FILTERS) filters[key] = query.get(key) || '';
  const sort = { key: query.get('sort') || 'name', desc: query.get('desc') === '1' };
  const controls = nodeFilterControls(filters);
  const count = h('span', { id: 'count', class: 'muted' });
  const headers = NODE_COLUMNS.map((c) => h('th', { 'data-sort': c.key, scope: 'col' }, h('button', { type: 'button', class: 'sort' }, c.label)));
  const tbody = h('tbody');
  const scroller = h('div', { class: 'vscroll' },
    h('table', { id: 'nodes', class: 'nodes' },
      h('colgroup', null, NODE_COLUMNS.map((c) => h('col', { class: 'c-' + c.key }))),
      h('thead', null, h('tr', null, headers)), tbody));
  main.append(h('div', { class: 'toolbar' }, h('h1', null, 'Nodes'), Object.values(controls), count), scroller);
  const rows = virtualRows(ctx, scroller, tbody, NODE_COLUMNS.length, nodeRow);

  function refresh(resetScroll) {
    if (!store.ready) {
      tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: NODE_COLUMNS.length }, 'Waiting for the live feed\u2026')));
      return;
    }
    const all = store.sortedNodes();
    updateNodeFilterOptions(controls, all, filters);
    const shown = sortNodes(all.filter(nodeFilter(filters)), sort);
    count.textContent = `${shown.length} of ${all.length} nodes`;
    if (resetScroll) scroller.scrollTop = 0;
    rows.setItems(shown);
    ready(ctx);
  }

  function changed() {
    syncNodesUrl(filters, sort);
    refresh(true);
  }

  const refilter = perFrame(changed);
  for (const key of NODE_FILTERS) {
    const el = controls[key];
    el.addEventListener(key === 'q' ? 'input' : 'change', () => {
      filters[key] = el.value;
      refilter();
    });
  }
  headers.forEach((th) => th.addEventListener('click', () => {
    if (sort.key === th.dataset.sort) sort.desc = !sort.desc;
    else Object.assign(sort, { key: th.dataset.sort, desc: false });
    markSorted(headers, sort);
    changed();
  }));
  markSorted(headers, sort);
  refresh(false);
  return { update: () => refresh(false) };
}

function nodeFilterControls(filters) {
  return {
    liveness: select('f-liveness', optionsOf(['ready', 'disconnected', 'down'], 'any liveness'), filters.liveness),
    health: select('f-health', optionsOf(['healthy', 'degraded', 'unhealthy'], 'any health'), filters.health),
    gpu: select('f-gpu', [['', 'any GPU']], filters.gpu),
    scheduler: select('f-scheduler', [['', 'any scheduler']], filters.scheduler),
    ray: select('f-ray', optionsOf(['head', 'worker', 'none'], 'any Ray role'), filters.ray),
    q: h('input', { id: 'search', type: 'search', placeholder: 'name or reason', value: filters.q, spellcheck: 'false', 'aria-label': 'Search nodes' }),
  };
}

function updateNodeFilterOptions(controls, nodes, filters) {
  const models = new Set();
  const schedulers = new Set();
  for (const n of nodes) {
    for (const g of n.gpus) models.add(g.model);
    for (const s of n.schedulers) schedulers.add(s);
  }
  setOptions(controls.gpu, optionsOf(sortedUnique(models), 'any GPU').concat([['none', 'none (no GPUs)']]), filters.gpu);
  setOptions(controls.scheduler, optionsOf(sortedUnique(schedulers), 'any scheduler'), filters.scheduler);
}

const searchTexts = new WeakMap();

/** Lower-cased name and reason messages, cached per summary object. */
function searchText(n) {
  let text = searchTexts.get(n);
  if (text === undefined) {
    text = (n.name + '\n' + n.reasons.map((r) => r.message).join('\n')).toLowerCase();
    searchTexts.set(n, text);
  }
  return text;
}

function nodeFilter(f) {
  const q = f.q.trim().toLowerCase();
  const gpuOk = (n) => !f.gpu || (f.gpu === 'none' ? n.gpus.length === 0 : n.gpus.some((g) => g.model === f.gpu));
  const rayOk = (n) => !f.ray || (f.ray === 'none' ? !n.ray : n.ray === f.ray);
  return (n) => (!f.liveness || n.liveness === f.liveness) &&
    (!f.health || n.health === f.health) &&
    (!f.scheduler || n.schedulers.includes(f.scheduler)) &&
    gpuOk(n) && rayOk(n) && (!q || searchText(n).includes(q));
}

/** Sorts by the column's key, ties by name order. */
function sortNodes(nodes, sort) {
  const column = NODE_COLUMNS.find((c) => c.key === sort.key) || NODE_COLUMNS[0];
  const rank = store.rankMap();
  const dir = sort.desc ? -1 : 1;
  const keyed = nodes.map((n) => ({ n, k: column.sortKey(n, rank), r: rank.get(n.name) }));
  keyed.sort((a, b) => (a.k < b.k ? -dir : a.k > b.k ? dir : a.r - b.r));
  return keyed.map((x) => x.n);
}

function markSorted(headers, sort) {
  for (const th of headers) {
    if (th.dataset.sort === sort.key) th.setAttribute('aria-sort', sort.desc ? 'descending' : 'ascending');
    else th.removeAttribute('aria-sort');
  }
}

function syncNodesUrl(filters, sort) {
  const q = new URLSearchParams();
  for (const key of NODE_FILTERS) if (filters[key]) q.set(key, filters[key]);
  if (sort.key !== 'name') q.set('sort', sort.key);
  if (sort.desc) q.set('desc', '1');
  const qs = q.toString();
  history.replaceState(null, '', '/nodes' + (qs ? '?' + qs : ''));
}

function nodeRow(n) {
  const gpuStatus = gpuWorst(n);
  const models = sortedUnique(n.gpus.map((g) => g.model)).join(', ');
  return h('tr', { 'data-node': n.name, 'data-liveness': n.liveness, 'data-health': n.health, class: n.liveness === 'ready' ? null : 'stale' },
    h('td', null, nodeLink(n.name)),
    h('td', null, badge(n.liveness, 'lv-' + n.liveness), n.cordoned ? badge('cordoned', 'cordoned') : null),
    h('td', { title: n.reasons.map((r) => r.message).join('\n') || null }, statusBadge(n.health), ' ', firstReason(n)),
    h('td', { class: 'num' }, fmtPct(n.cpu)),
    h('td', { class: 'num' }, fmtPct(n.mem)),
    h('td', { title: models || null }, n.gpus.length ? [String(n.gpus.length), ' ', statusBadge(gpuStatus)] : DASH),
    h('td', null, rayText(n) || DASH),
    h('td', null, n.schedulers.join(', ') || DASH));
}

/** Renders only the rows in view (plus a margin) between two spacer rows. Rows
 * whose summary object did not change are reused, so a delta that leaves the
 * visible nodes alone touches no row. */
function virtualRows(ctx, scroller, tbody, columns, buildRow) {
  const MARGIN = 15;
  const spacer = () => h('tr', { class: 'spacer', 'aria-hidden': 'true' }, h('td', { colspan: columns }));
  const top = spacer();
  const bottom = spacer();
  let items = [];
  let rowHeight = ROW_HEIGHT;
  let measured = false;
  let rendered = new Map();
  let range = '';

  function draw(force) {
    if (!items.length) {
      rendered = new Map();
      range = '';
      tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: columns }, 'No nodes match the filters.')));
      return;
    }
    const viewHeight = scroller.clientHeight || window.innerHeight;
    const first = Math.max(0, Math.floor(scroller.scrollTop / rowHeight) - MARGIN);
    const last = Math.min(items.length, Math.ceil((scroller.scrollTop + viewHeight) / rowHeight) + MARGIN);
    if (!force && range === first + ':' + last) return;
    range = first + ':' + last;
    top.firstChild.style.height = first * rowHeight + 'px';
    bottom.firstChild.style.height = (items.length - last) * rowHeight + 'px';
    placeRows(items.slice(first, last));
    if (!measured) measure();
  }

  function placeRows(slice) {
    const next = new Map();
    const rows = slice.map((n) => {
      const row = rendered.get(n) || buildRow(n);
      next.set(n, row);
      return row;
    });
    rendered = next;
    const now = tbody.children;
    const same = now.length === rows.length + 2 && rows.every((r, i) => now[i + 1] === r);
    if (!same) tbody.replaceChildren(top, ...rows, bottom);
  }

  function measure() {
    const row = top.nextElementSibling;
    if (!row || row === bottom) return;
    measured = true;
    const height = row.getBoundingClientRect().height;
    if (height > 0 && Math.abs(height - rowHeight) > 0.5) {
      rowHeight = height;
      draw(true);
    }
  }

  const onScroll = perFrame(() => draw(false));
  scroller.addEventListener('scroll', onScroll, { passive: true });
  const observer = new ResizeObserver(onScroll);
  observer.observe(scroller);
  ctx.onClose(() => observer.disconnect());
  return {
    setItems(list) {
      items = list;
      draw(true);
    },
  };
}

// ----- node

function nodePage(ctx, [name], main) {
  const base = '/api/v1/nodes/' + encodeURIComponent(name);
  const st = { view: null, history: null, missing: false, drainForm: null, actionsKey: null };
  const eventIds = new Set();
  const part = {
    badges: h('span', { class: 'badges' }),
    actions: h('div', { class: 'actions' }),
    reasons: h('section', { class: 'panel wide' }),
    cordon: h('div', { class: 'wide' }),
    host: h('section', { class: 'panel' }),
    disks: h('section', { class: 'panel' }),
    ray: h('section', { id: 'ray', class: 'panel' }),
    plugins: h('section', { id: 'plugins', class: 'panel' }),
    gpus: h('section', { class: 'panel wide' }),
    charts: h('section', { class: 'panel wide' }),
    jobs: h('section', { class: 'panel wide' }),
    events: h('section', { class: 'panel wide' }),
  };
  const eventsBody = h('tbody');
  main.append(
    h('div', { class: 'page-head' }, h('h1', null, name), part.badges, part.actions),
    h('div', { class: 'grid' }, part.reasons, part.cordon, part.host, part.disks, part.ray, part.plugins,
      part.gpus, part.charts, part.jobs, part.events));
  fill(part.reasons, 'Health', waiting('Loading\u2026'));
  fill(part.events, 'Events',
    h('p', { class: 'muted' }, 'Newest first. ', h('a', { href: '/events?node=' + encodeURIComponent(name) }, 'All events of this node')),
    h('table', { id: 'node-events', class: 'events' }, eventHead(false), eventsBody));

  /** The live summary when the feed has it, else what the node view says. */
  function live() {
    const s = store.nodes.get(name);
    if (s) return s;
    const v = st.view;
    return v && { liveness: v.liveness, health: v.health, reasons: v.reasons, cordoned: !!v.cordon, gpus: [] };
  }

  function renderLive() {
    if (!live()) return;
    renderBadges(part.badges, live(), st.view);
    renderReasons(part.reasons, live().reasons);
    renderGpuTable(part.gpus, st.view, live());
    renderActions();
    if (st.view && live().cordoned !== !!st.view.cordon) renderCordon(part.cordon, st.view, live());
  }

  function renderFromView() {
    const v = st.view;
    renderLive();
    renderCordon(part.cordon, v, live());
    renderHost(part.host, v);
    renderDisks(part.disks, v.report);
    renderRay(part.ray, v.report && v.report.ray);
  }

  function renderMissing() {
    st.missing = true;
    main.replaceChildren(h('h1', null, 'No such node'),
      h('p', null, 'The coordinator knows no node named ', h('b', null, name), '. ', h('a', { href: '/nodes' }, 'All nodes')));
  }

  const loadView = () => ctx.load(base, (v) => {
    st.view = v;
    renderFromView();
  }, (e) => (e.status === 404 ? renderMissing() : flashError(e)));
  const loadHistory = () => ctx.load(base + '/history', (hist) => {
    st.history = hist;
    renderCharts(part.charts, hist, st.view);
  }, (e) => fill(part.charts, 'Last hour', h('p', { class: 'error' }, e.message)));
  const loadEvents = () => ctx.load('/api/v1/events?limit=100&node=' + encodeURIComponent(name), (list) => {
    insertEvents(eventsBody, eventIds, list.concat(store.events.filter((e) => e.node === name)), 200, false);
  });
  const loadPlugins = () => ctx.load('/api/v1/plugins', (all) => renderPlugins(part.plugins, all.find((p) => p.node === name)),
    (e) => fill(part.plugins, 'Scheduler plugins', h('p', { class: 'error' }, e.message)));
  const loadJobs = () => ctx.load('/api/v1/jobs?node=' + encodeURIComponent(name), (jobs) => renderNodeJobs(part.jobs, jobs),
    (e) => fill(part.jobs, 'Jobs', h('p', { class: 'error' }, e.message)));
  const refetchView = throttle(ctx, 2000, loadView);

  // ---- drain / resume (admins only; others get no buttons at all)

  function renderActions() {
    if (!session.me || session.me.role !== 'admin' || !live()) return;
    const cordoned = !!live().cordoned;
    const key = cordoned + '/' + !!st.drainForm;
    if (key === st.actionsKey) return;
    st.actionsKey = key;
    const drain = h('button', { id: 'drain', type: 'button', onclick: openDrain }, cordoned ? 'Drain again\u2026' : 'Drain\u2026');
    const resume = cordoned ? h('button', { id: 'resume', type: 'button', onclick: resumeNode }, 'Resume') : null;
    setChildren(part.actions, drain, st.drainForm, resume);
  }

  function openDrain() {
    if (!st.drainForm) {
      st.drainForm = drainForm(confirmDrain, () => {
        st.drainForm = null;
        renderActions();
      });
      renderActions();
    }
    $('drain-reason').focus();
  }

  async function confirmDrain(reason, button) {
    button.disabled = true;
    const ok = await act('drain', { reason }, `Drained ${name}: cordoned, and drains started in its schedulers and Ray.`);
    button.disabled = false;
    if (ok) {
      st.drainForm = null;
      renderActions();
    }
  }

  async function resumeNode(e) {
    const button = e.currentTarget;
    button.disabled = true;
    await act('resume', {}, `Resuming ${name}: lifting what corral drained.`);
    button.disabled = false;
  }

  async function act(action, body, message) {
    try {
      await api('POST', `${base}/${action}`, body);
      if (!ctx.alive) return true;
      flash('ok', message);
      st.actionsKey = null;
      loadView();
      return true;
    } catch (e) {
      if (ctx.alive && e.status !== 401) flash('error', e.message);
      return false;
    }
  }

  // ---- start: everything at once; ready when all initial fetches settled

  Promise.all([loadView(), loadHistory(), loadEvents(), loadPlugins(), loadJobs()]).then(() => {
    if (st.history && st.view) renderCharts(part.charts, st.history, st.view);
    ready(ctx);
  });
  ctx.every(60000, loadHistory);
  return {
    update(ch) {
      if (st.missing) return;
      if (ch.full || ch.nodes.has(name)) {
        renderLive();
        if (st.view) refetchView();
      }
      const mine = (ch.full ? store.events : ch.events).filter((e) => e.node === name);
      if (mine.length) insertEvents(eventsBody, eventIds, mine, 200, false);
    },
  };
}

/** Runs `fn` (returning a promise) at most once per `ms`; calls in between are
 * folded into one trailing run. */
function throttle(ctx, ms, fn) {
  let last = 0;
  let timer = false;
  return () => {
    if (timer) return;
    timer = true;
    ctx.after(Math.max(0, last + ms - Date.now()), () => {
      last = Date.now();
      Promise.resolve(fn()).finally(() => {
        timer = false;
      });
    });
  };
}

function drainForm(onConfirm, onCancel) {
  const input = h('input', { id: 'drain-reason', type: 'text', placeholder: 'why (sent to the schedulers)', maxlength: 200, autocomplete: 'off' });
  const confirm = h('button', { id: 'drain-confirm', type: 'submit', class: 'danger' }, 'Drain now');
  const form = h('form', { class: 'drain-form' }, input, confirm,
    h('button', { type: 'button', class: 'secondary', onclick: onCancel }, 'Cancel'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const reason = input.value.trim();
    if (!reason) {
      flash('error', 'Give a reason for the drain: the schedulers keep it with the node.');
      input.focus();
      return;
    }
    onConfirm(reason, confirm);
  });
  return form;
}

function renderBadges(el, s, view) {
  const since = view && view.liveness_since_ms ? 'since ' + new Date(view.liveness_since_ms).toISOString() : null;
  setChildren(el,
    h('span', { id: 'node-liveness', class: 'badge lv-' + s.liveness, title: since }, s.liveness),
    h('span', { id: 'node-health', class: 'badge st-' + s.health, 'data-health': s.health }, s.health),
    s.cordoned ? badge('cordoned', 'cordoned') : null);
}

function renderReasons(section, reasons) {
  fill(section, 'Health',
    h('ul', { id: 'reasons', class: 'reasons' }, reasons.map((r) => h('li', null,
      statusBadge(r.status), ' ', h('code', null, r.check), ' ', r.message))),
    reasons.length ? null : h('p', { class: 'muted' }, 'No problems reported.'));
}

function renderCordon(holder, view, s) {
  const c = view.cordon;
  if (!c && !s.cordoned) {
    holder.replaceChildren();
    return;
  }
  if (!c) {
    holder.replaceChildren(h('section', { id: 'cordon', class: 'panel cordon' }, h('h2', null, 'Cordoned'), waiting('Loading details\u2026')));
    return;
  }
  holder.replaceChildren(h('section', { id: 'cordon', class: 'panel cordon' },
    h('h2', null, c.resuming ? 'Cordoned (being resumed)' : 'Cordoned'),
    fields([['Reason', c.reason], ['By', c.by], ['Since', timeEl(c.since_ms)]]),
    c.drains.length ? table({ class: 'drains' }, ['Kind', 'Target', 'Name there', 'State', 'Attempts', 'Last error', 'Next try'],
      c.drains.map((d) => h('tr', { 'data-drain': d.target },
        h('td', null, d.kind), h('td', null, d.target), h('td', null, d.node),
        h('td', null, badge(d.state, 'drain-' + d.state)), h('td', { class: 'num' }, String(d.attempts)),
        h('td', { class: 'msg' }, d.message || DASH), h('td', null, timeEl(d.next_try_ms))))) : null));
}

function renderHost(section, v) {
  const r = v.report;
  const conn = [
    ['Agent', v.agent_version], ['Address', v.address], ['Connected', v.connected ? 'yes' : 'no'],
    ['First seen', timeEl(v.first_seen_ms)], ['Last beat', timeEl(v.last_beat_ms)], ['Last report', timeEl(v.last_report_ms)],
  ];
  if (!r) {
    fill(section, 'Host', fields(conn), h('p', { class: 'muted' }, 'No report from this node yet.'));
    return;
  }
  const { facts, host } = r;
  const mem = host.memory;
  const cores = `${facts.cpu_cores} cores` + (facts.physical_cores ? ` (${facts.physical_cores} physical)` : '');
  const hottest = host.cpu_temperatures.reduce((m, t) => Math.max(m, t.celsius), -Infinity);
  fill(section, 'Host',
    fields([
      ['Hostname', facts.hostname], ['OS', `${facts.os} \u00b7 kernel ${facts.kernel}`],
      ['CPU', `${facts.cpu_model} \u00b7 ${cores}`], ['CPU use', fmtPct(host.cpu_percent)],
      ['Load', [host.load.one, host.load.five, host.load.fifteen].map((x) => x.toFixed(2)).join(' / ')],
      ['Memory', `${fmtBytes(mem.used_bytes)} of ${fmtBytes(mem.total_bytes)} (${fmtBytes(mem.available_bytes)} available)`],
      ['Swap', mem.swap_total_bytes ? `${fmtBytes(mem.swap_used_bytes)} of ${fmtBytes(mem.swap_total_bytes)}` : 'none'],
      ['CPU temperature', hottest > -Infinity ? Math.round(hottest) + ' \u00b0C' : null],
      ['Uptime', fmtDuration(host.uptime_secs)],
    ].concat(conn)));
}

function renderDisks(section, report) {
  const filesystems = report ? report.host.filesystems : [];
  fill(section, 'Disks', h('div', { class: 'scroll-x' }, table({ id: 'disks' }, ['Mount', 'Device', 'Type', 'Size', 'Used', 'Free', 'Use'],
    filesystems.map((f) => h('tr', { 'data-mount': f.mount },
      h('td', null, f.mount), h('td', { class: 'msg' }, f.device), h('td', null, f.fs_type),
      h('td', { class: 'num' }, fmtBytes(f.total_bytes)),
      h('td', { class: 'num' }, fmtBytes(f.total_bytes - f.available_bytes)),
      h('td', { class: 'num' }, fmtBytes(f.available_bytes)),
      h('td', { class: 'num' }, f.total_bytes ? fmtPct(((f.total_bytes - f.available_bytes) * 100) / f.total_bytes) : DASH))))),
  filesystems.length ? null : h('p', { class: 'muted' }, 'No filesystems reported.'));
}

const GPU_HEADINGS = ['GPU', 'Model', 'Util', 'Memory', 'Temp', 'Power', 'Status', 'XID last / total', 'XIDs by code'];

/** GPU rows from the node view's samples, with status, XID and readings taken from
 * the live summary where it has them (so a new XID shows before the refetch). */
function renderGpuTable(section, view, s) {
  const report = view && view.report;
  const samples = (report && report.gpus) || [];
  const cells = new Map(s.gpus.map((g) => [g.index, g]));
  const stale = s.liveness !== 'ready';
  const rows = samples.length
    ? samples.map((g) => gpuRow(g, cells.get(g.index), stale))
    : s.gpus.map((c) => gpuRow(null, c, stale));
  fill(section, `GPUs (${rows.length})`,
    report && report.gpu_error ? h('p', { class: 'error' }, 'GPUs could not be read: ', report.gpu_error) : null,
    h('div', { class: 'scroll-x' }, table({ id: 'gpus' }, GPU_HEADINGS, rows)));
}

function gpuRow(sample, cell, stale) {
  const health = (sample && sample.health) || { status: 'ok', reasons: [], xid_last: null, xid_total: 0, xid_counts: [] };
  const status = cell ? cell.status : health.status;
  const pick = (live, reported) => (cell && cell[live] != null ? cell[live] : sample ? sample[reported] : null);
  const xidLast = cell && cell.xid != null ? cell.xid : health.xid_last;
  return h('tr', { 'data-gpu': sample ? sample.index : cell.index, 'data-health': status, class: stale ? 'stale' : null },
    h('td', { class: 'num' }, String(sample ? sample.index : cell.index)),
    h('td', { title: sample ? sample.uuid : null }, sample ? sample.name : cell.model),
    h('td', { class: 'num' }, fmtPct(pick('util', 'utilization_percent'))),
    h('td', { class: 'num' }, gpuMemText(sample, cell)),
    h('td', { class: 'num' }, fmtUnit(pick('temp', 'temperature_celsius'), ' \u00b0C')),
    h('td', { class: 'num' }, fmtUnit(pick('power', 'power_watts'), ' W') +
      (sample && sample.power_limit_watts ? ' / ' + Math.round(sample.power_limit_watts) + ' W' : '')),
    h('td', { class: 'msg' }, statusBadge(status), gpuReasons(sample, health)),
    h('td', { class: 'num t-' + status }, `${xidLast == null ? DASH : xidLast} / ${health.xid_total}`),
    h('td', null, (health.xid_counts || []).map((x) => `${x.xid}\u00d7${x.count}`).join(', ') || DASH));
}

function gpuMemText(sample, cell) {
  if (sample && sample.memory_used_bytes != null && sample.memory_total_bytes != null) {
    return `${fmtBytes(sample.memory_used_bytes)} / ${fmtBytes(sample.memory_total_bytes)}`;
  }
  return fmtPct(cell ? cell.mem : null);
}

function gpuReasons(sample, health) {
  const items = health.reasons.map((r) => h('li', { title: r.code }, r.message));
  if (sample && sample.lost) items.unshift(h('li', null, 'lost: ' + sample.lost));
  if (health.action && health.action !== 'none') items.push(h('li', { class: 'muted' }, 'needs: ' + health.action.replace(/_/g, ' ')));
  return items.length ? h('ul', { class: 'gpu-reasons' }, items) : null;
}

function renderRay(section, ray) {
  if (!ray) {
    fill(section, 'Ray', h('p', { class: 'muted' }, 'corral runs no Ray process on this node.'));
    return;
  }
  fill(section, 'Ray', fields([
    ['Role', ray.role], ['State', h('span', null, badge(ray.state, 'ray-' + ray.state), ' since ', timeEl(ray.since_ms))],
    ['Message', ray.message], ['Head', ray.head_address], ['Ray', ray.ray_version], ['Python', ray.python_version],
    ['Venv', ray.venv], ['Restarts', String(ray.restarts)], ['PID', ray.pid == null ? null : String(ray.pid)], ['Log', ray.log_file],
  ]));
}

function renderPlugins(section, p) {
  if (!p) {
    fill(section, 'Scheduler plugins', h('p', { class: 'muted' }, 'This node announced no scheduler plugins.'));
    return;
  }
  const refused = new Set(p.not_authorized || []);
  const items = p.loaded.map((l) => h('li', null, h('b', null, l.info.name), ` ${l.info.version} \u00b7 scheduler ${l.info.scheduler}`,
    refused.has(l.info.name) ? badge('not authorized here', 'st-warn') : null));
  const failed = p.failed.map((f) => h('li', { class: 'error' }, h('b', null, f.name), ': ', f.message));
  fill(section, 'Scheduler plugins',
    h('ul', { class: 'plain' }, items, failed),
    items.length + failed.length ? null : h('p', { class: 'muted' }, 'No plugins loaded.'),
    h('p', { class: 'muted' }, p.announced_ms ? ['Announced ', timeEl(p.announced_ms)] : 'Not announced yet.'));
}

function renderNodeJobs(section, jobs) {
  jobs.sort((a, b) => b.submitted_ms - a.submitted_ms);
  fill(section, `Jobs submitted here (${jobs.length})`,
    table({ id: 'node-jobs' }, ['Job', 'Scheduler', 'Owner', 'State', 'Name', 'Submitted', 'Updated'],
      jobs.map((j) => h('tr', { 'data-job': j.id },
        h('td', null, jobLink(j.id)), h('td', null, j.scheduler), h('td', null, j.owner || DASH),
        h('td', null, jobStateBadge(j.state_word)), h('td', null, (j.spec && j.spec.name) || DASH),
        h('td', null, timeEl(j.submitted_ms)), h('td', null, timeEl(j.updated_ms))))),
    jobs.length ? null : h('p', { class: 'muted' }, 'No jobs were submitted through this node.'));
}

// ----- charts (inline SVG, no library)

function renderCharts(section, hist, view) {
  const samples = (view && view.report && view.report.gpus) || [];
  const limit = (index) => (samples.find((g) => g.index === index) || {}).power_limit_watts;
  const charts = [lineChart('cpu', 'CPU', hist.cpu, 100, '%'), lineChart('mem', 'Memory', hist.mem, 100, '%')];
  for (const g of hist.gpus) {
    const p = 'gpu' + g.index;
    const label = 'GPU ' + g.index;
    charts.push(
      lineChart(p + '-util', label + ' utilization', g.util, 100, '%'),
      lineChart(p + '-mem', label + ' memory', g.mem, 100, '%'),
      lineChart(p + '-temp', label + ' temperature', g.temp, Math.max(100, maxOf(g.temp)), ' \u00b0C'),
      lineChart(p + '-power', label + ' power', g.power, limit(g.index) || Math.max(1, maxOf(g.power) * 1.2), ' W'));
  }
  const minutes = Math.round((hist.step_s * hist.cpu.length) / 60);
  fill(section, 'Last hour',
    h('p', { class: 'muted' }, `${minutes} minutes to `, timeEl(hist.end_ms), `, one point per ${hist.step_s} s.`),
    h('div', { id: 'charts', class: 'charts' }, charts));
}

const maxOf = (values) => values.reduce((m, v) => (v != null && v > m ? v : m), 0);

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return null;
}

function lineChart(series, title, values, max, unit) {
  const W = 300;
  const H = 60;
  const chart = svg('svg', { class: 'chart', 'data-series': series, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  const label = svg('title', {});
  label.textContent = `${title}, 0\u2013${Math.round(max)}${unit}`;
  chart.append(label, svg('path', { class: 'line', d: linePath(values, W, H, max) }));
  const latest = lastValue(values);
  return h('figure', { class: 'chart-box' },
    h('figcaption', null, h('span', null, title), h('b', { class: 'latest' }, latest == null ? DASH : Math.round(latest) + unit)),
    chart);
}

/** An SVG path through the values, broken where a value is missing. */
function linePath(values, W, H, max) {
  const dx = values.length > 1 ? W / (values.length - 1) : 0;
  let d = '';
  let pen = false;
  values.forEach((v, i) => {
    if (v == null) {
      pen = false;
      return;
    }
    const x = (i * dx).toFixed(1);
    const y = (H - 1 - (Math.min(v, max) / max) * (H - 2)).toFixed(1);
    d += pen ? `L${x} ${y}` : `M${x} ${y}h0.01`;
    pen = true;
  });
  return d;
}

// ----- GPUs (one canvas)

const CELL = 11;
const PITCH = 12;
const ROW_PITCH = 14;
const NODE_GAP = 6;
const GRID_PAD = 4;
const TEMP_MIN = 20;
const TEMP_MAX = 90;
const UTIL_RAMP = ramp([227, 242, 253], [13, 71, 161]);
const TEMP_RAMP = ramp([243, 229, 245], [74, 20, 140]);

/** 101 colours from light to dark. */
function ramp(from, to) {
  const out = [];
  for (let i = 0; i <= 100; i++) {
    const c = from.map((f, k) => Math.round(f + ((to[k] - f) * i) / 100));
    out.push(`rgb(${c[0]},${c[1]},${c[2]})`);
  }
  return out;
}

/** The fill of one GPU cell: not-ready nodes grey, failing GPUs red, whatever the mode. */
function cellFill(node, gpu, mode) {
  if (node.liveness !== 'ready') return COLOURS.unknown;
  if (gpu.status === 'fail') return COLOURS.fail;
  if (mode === 'utilization') return gpu.util == null ? COLOURS.unknown : UTIL_RAMP[Math.max(0, Math.min(100, gpu.util))];
  if (mode === 'temperature') {
    if (gpu.temp == null) return COLOURS.unknown;
    const t = Math.max(TEMP_MIN, Math.min(TEMP_MAX, gpu.temp));
    return TEMP_RAMP[Math.round(((t - TEMP_MIN) * 100) / (TEMP_MAX - TEMP_MIN))];
  }
  return gpu.status === 'warn' ? COLOURS.warn : COLOURS.ok;
}

/** Cell positions: each node a run of its GPUs (a run wraps to the next row rather
 * than split, unless it is wider than a row), nodes in name order. */
function layoutGrid(nodes, width) {
  let total = 0;
  for (const n of nodes) total += n.gpus.length;
  const lay = { xs: new Int32Array(total), ys: new Int32Array(total), owner: new Int32Array(total), slot: new Int32Array(total), firstCell: new Map(), rows: 0, rowStart: null, height: 0, nodes: 0 };
  const right = Math.max(width - GRID_PAD, GRID_PAD + CELL);
  let x = GRID_PAD;
  let y = GRID_PAD;
  let i = 0;
  nodes.forEach((n, ni) => {
    const count = n.gpus.length;
    if (!count) return;
    lay.nodes++;
    if (x > GRID_PAD && x + count * PITCH - (PITCH - CELL) > right) [x, y] = [GRID_PAD, y + ROW_PITCH];
    lay.firstCell.set(n.name, i);
    for (let j = 0; j < count; j++, i++) {
      if (x > GRID_PAD && x + CELL > right) [x, y] = [GRID_PAD, y + ROW_PITCH];
      lay.xs[i] = x;
      lay.ys[i] = y;
      lay.owner[i] = ni;
      lay.slot[i] = j;
      x += PITCH;
    }
    x += NODE_GAP;
  });
  indexRows(lay, total);
  return lay;
}

/** rowStart[r]..rowStart[r+1]: the cells of row r (for drawing and hit tests). */
function indexRows(lay, total) {
  lay.rows = total ? (lay.ys[total - 1] - GRID_PAD) / ROW_PITCH + 1 : 0;
  lay.rowStart = new Int32Array(lay.rows + 1);
  let r = 0;
  for (let i = 0; i < total; i++) {
    const row = (lay.ys[i] - GRID_PAD) / ROW_PITCH;
    while (r <= row) lay.rowStart[r++] = i;
  }
  while (r <= lay.rows) lay.rowStart[r++] = total;
  lay.height = total ? GRID_PAD * 2 + (lay.rows - 1) * ROW_PITCH + CELL : 0;
}

/** The grid: a canvas the size of the visible part of a scrolling area (a spacer
 * gives the full height), drawing only the rows in view. */
function gpuGrid(ctx, scroller, spacer, canvas, tip) {
  const g2d = canvas.getContext('2d');
  let nodes = [];
  let lay = layoutGrid([], 0);
  let mode = 'health';
  let width = 0;
  let viewHeight = 0;
  let mouse = null;

  function setNodes(list) {
    nodes = list;
    relayout();
  }

  function relayout() {
    width = scroller.clientWidth;
    lay = layoutGrid(nodes, width);
    spacer.style.height = lay.height + 'px';
    draw();
    if (mouse) hover(mouse);
  }

  function fitCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const w = width;
    const hgt = Math.min(scroller.clientHeight, lay.height);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
      canvas.style.width = w + 'px';
      canvas.style.height = hgt + 'px';
    }
    viewHeight = hgt;
    g2d.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function draw() {
    fitCanvas();
    const top = scroller.scrollTop;
    g2d.clearRect(0, 0, width, viewHeight);
    const r0 = Math.max(0, Math.floor((top - GRID_PAD) / ROW_PITCH));
    const r1 = Math.min(lay.rows - 1, Math.floor((top + viewHeight - GRID_PAD) / ROW_PITCH));
    const outlined = [];
    let fillStyle = '';
    for (let i = lay.rowStart[r0] || 0, end = r1 >= r0 ? lay.rowStart[r1 + 1] : 0; i < end; i++) {
      const node = nodes[lay.owner[i]];
      const gpu = node.gpus[lay.slot[i]];
      const colour = cellFill(node, gpu, mode);
      if (colour !== fillStyle) g2d.fillStyle = fillStyle = colour;
      g2d.fillRect(lay.xs[i], lay.ys[i] - top, CELL, CELL);
      if (gpu.status === 'warn' && node.liveness === 'ready') outlined.push(i);
    }
    g2d.strokeStyle = COLOURS.warn;
    g2d.lineWidth = 2;
    for (const i of outlined) g2d.strokeRect(lay.xs[i] + 1, lay.ys[i] - top + 1, CELL - 2, CELL - 2);
  }

  /** The cell under a point in client coordinates, or -1. */
  function cellAt(clientX, clientY) {
    const rect = canvas.getBoundingClientRect();
    const x = clientX - rect.left;
    const y = clientY - rect.top + scroller.scrollTop - GRID_PAD;
    const row = Math.floor(y / ROW_PITCH);
    if (row < 0 || row >= lay.rows || y - row * ROW_PITCH >= CELL) return -1;
    for (let i = lay.rowStart[row]; i < lay.rowStart[row + 1]; i++) {
      if (x >= lay.xs[i] && x < lay.xs[i] + CELL) return i;
    }
    return -1;
  }

  function hover(point) {
    mouse = point;
    const i = cellAt(point.x, point.y);
    canvas.style.cursor = i < 0 ? '' : 'pointer';
    if (i < 0) {
      tip.hidden = true;
      return;
    }
    const node = nodes[lay.owner[i]];
    showTip(tip, node, node.gpus[lay.slot[i]], point);
  }

  /** For tests: the cell's rectangle in CSS pixels relative to the canvas, scrolling
   * it into view first if it is not, so the rectangle can always be clicked. */
  function cellRect(name, index) {
    const first = lay.firstCell.get(name);
    if (first === undefined) return null;
    const slot = nodes[lay.owner[first]].gpus.findIndex((g) => g.index === index);
    if (slot < 0) return null;
    const i = first + slot;
    const y = lay.ys[i];
    if (y < scroller.scrollTop || y + CELL > scroller.scrollTop + viewHeight) {
      scroller.scrollTop = Math.max(0, y - GRID_PAD);
      draw();
    }
    return { x: lay.xs[i], y: y - scroller.scrollTop, w: CELL, h: CELL };
  }

  canvas.addEventListener('mousemove', (e) => hover({ x: e.clientX, y: e.clientY }));
  canvas.addEventListener('mouseleave', () => {
    mouse = null;
    tip.hidden = true;
  });
  canvas.addEventListener('click', (e) => {
    const i = cellAt(e.clientX, e.clientY);
    if (i >= 0) navigate(nodeHref(nodes[lay.owner[i]].name));
  });
  scroller.addEventListener('scroll', perFrame(draw), { passive: true });
  const observer = new ResizeObserver(perFrame(() => (scroller.clientWidth !== width ? relayout() : draw())));
  observer.observe(scroller);
  ctx.onClose(() => observer.disconnect());
  return {
    setNodes,
    setMode(m) {
      mode = m;
      draw();
    },
    cellRect,
    counts: () => ({ gpus: lay.xs.length, nodes: lay.nodes }),
  };
}

function showTip(tip, node, gpu, point) {
  setChildren(tip,
    h('div', null, h('b', null, node.name), ` \u00b7 GPU ${gpu.index}`),
    h('div', null, gpu.model),
    h('div', null, `util ${fmtPct(gpu.util)} \u00b7 mem ${fmtPct(gpu.mem)} \u00b7 ${fmtUnit(gpu.temp, ' \u00b0C')} \u00b7 ${fmtUnit(gpu.power, ' W')}`),
    h('div', null, 'status ', statusBadge(gpu.status), gpu.xid != null ? ` \u00b7 XID ${gpu.xid}` : ''),
    node.liveness !== 'ready' ? h('div', { class: 'muted' }, `node ${node.liveness}: readings are old`) : null);
  tip.hidden = false;
  const box = tip.getBoundingClientRect();
  const left = point.x + 14 + box.width > window.innerWidth ? point.x - 14 - box.width : point.x + 14;
  const top = point.y + 14 + box.height > window.innerHeight ? point.y - 14 - box.height : point.y + 14;
  tip.style.left = Math.max(0, left) + 'px';
  tip.style.top = Math.max(0, top) + 'px';
}

/** The GPU page's grid, for window.corralGpuCell. */
let activeGrid = null;

function gpusPage(ctx, _params, main) {
  const query = new URLSearchParams(location.search);
  const modes = [['health', 'health'], ['utilization', 'utilization'], ['temperature', 'temperature']];
  const initial = modes.some((m) => m[0] === query.get('colour')) ? query.get('colour') : 'health';
  const modeSelect = select('gpu-colour', modes, initial);
  const legend = h('div', { id: 'legend', class: 'legend' });
  const count = h('span', { id: 'gpu-count', class: 'muted' });
  const canvas = h('canvas', { id: 'gpu-grid' });
  const spacer = h('div', { class: 'gpu-spacer' }, canvas);
  const scroller = h('div', { class: 'gpu-scroll' }, spacer);
  const tip = h('div', { id: 'gpu-tip', class: 'tip', hidden: true, role: 'tooltip' });
  const note = waiting();
  main.append(h('div', { class: 'toolbar' }, h('h1', null, 'GPUs'), h('label', null, 'Colour by ', modeSelect), legend, count), note, scroller, tip);
  const grid = gpuGrid(ctx, scroller, spacer, canvas, tip);
  activeGrid = grid;
  ctx.onClose(() => {
    if (activeGrid === grid) activeGrid = null;
  });

  function render() {
    if (!store.ready) return;
    grid.setNodes(store.sortedNodes());
    const c = grid.counts();
    count.textContent = `${c.gpus} GPUs on ${c.nodes} nodes`;
    note.hidden = c.gpus > 0;
    note.textContent = 'No GPUs reported.';
    ready(ctx);
  }

  modeSelect.addEventListener('change', () => {
    grid.setMode(modeSelect.value);
    renderLegend(legend, modeSelect.value);
    history.replaceState(null, '', modeSelect.value === 'health' ? '/gpus' : '/gpus?colour=' + modeSelect.value);
  });
  grid.setMode(initial);
  renderLegend(legend, initial);
  render();
  return { update: render };
}

function renderLegend(legend, mode) {
  const swatch = (colour, label, outline) => {
    const s = h('span', { class: outline ? 'swatch outline' : 'swatch' });
    s.style.backgroundColor = colour;
    return h('span', { class: 'legend-item' }, s, label);
  };
  const items = [];
  if (mode === 'health') {
    items.push(swatch(COLOURS.ok, 'ok'), swatch(COLOURS.warn, 'warn'), swatch(COLOURS.fail, 'fail'));
  } else {
    const colours = mode === 'utilization' ? UTIL_RAMP : TEMP_RAMP;
    const bar = h('span', { class: 'ramp' });
    bar.style.backgroundImage = `linear-gradient(to right, ${colours[0]}, ${colours[100]})`;
    const [lo, hi] = mode === 'utilization' ? ['0%', '100%'] : [TEMP_MIN + ' \u00b0C', TEMP_MAX + ' \u00b0C'];
    items.push(h('span', { class: 'legend-item' }, lo, bar, hi), swatch(COLOURS.fail, 'fail'), swatch('transparent', 'warn', true));
  }
  items.push(swatch(COLOURS.unknown, 'node not ready / no reading'));
  legend.replaceChildren(...items);
}

// ----- jobs

const JOB_FILTERS = ['scheduler', 'state', 'owner'];

const JOB_STATE_CLASS = { succeeded: 'st-ok', running: 'st-run', failed: 'st-fail', 'timed-out': 'st-fail', rejected: 'st-fail', orphaned: 'st-warn', cancelled: 'st-unknown' };
const jobStateClass = (word) => JOB_STATE_CLASS[word] || '';
const jobStateBadge = (word) => badge(word, jobStateClass(word));

function jobsPage(ctx, _params, main) {
  const query = new URLSearchParams(location.search);
  const filters = {};
  for (const key of JOB_FILTERS) filters[key] = query.get(key) || '';
  const controls = {
    scheduler: select('f-scheduler', [['', 'any scheduler']], filters.scheduler),
    state: select('f-state', [['', 'any state']], filters.state),
    owner: select('f-owner', [['', 'any owner']], filters.owner),
  };
  const count = h('span', { id: 'job-count', class: 'muted' });
  const jobsTable = table({ id: 'jobs' }, ['Job', 'Scheduler', 'Owner', 'State', 'Submit host', 'Name', 'Submitted', 'Updated'], []);
  const tbody = jobsTable.tBodies[0];
  const empty = h('p', { class: 'muted', hidden: true }, 'No jobs match.');
  main.append(h('div', { class: 'toolbar' }, h('h1', null, 'Jobs'), Object.values(controls), count),
    h('div', { class: 'scroll-x' }, jobsTable), empty);
  let jobs = null;
  let shownKey = null;
  let loading = false;
  let again = false;

  function render() {
    if (!jobs) return;
    setOptions(controls.scheduler, optionsOf(sortedUnique(jobs.map((j) => j.scheduler)), 'any scheduler'), filters.scheduler);
    setOptions(controls.state, optionsOf(sortedUnique(jobs.map((j) => j.state_word)), 'any state'), filters.state);
    setOptions(controls.owner, optionsOf(sortedUnique(jobs.map((j) => j.owner)), 'any owner'), filters.owner);
    const shown = jobs.filter((j) => JOB_FILTERS.every((k) => !filters[k] || (k === 'state' ? j.state_word : j[k]) === filters[k]));
    shown.sort((a, b) => b.submitted_ms - a.submitted_ms || jobNumber(b.id) - jobNumber(a.id));
    count.textContent = `${shown.length} of ${jobs.length} jobs`;
    empty.hidden = shown.length > 0;
    const key = shown.map((j) => j.id + ':' + j.updated_ms + ':' + j.state_word).join(',');
    if (key !== shownKey) tbody.replaceChildren(...shown.map(jobRow));
    shownKey = key;
  }

  /** One fetch at a time; a call during one fetches again after it. */
  function load() {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    ctx.load('/api/v1/jobs', (list) => {
      jobs = list;
      render();
    }).finally(() => {
      loading = false;
      ready(ctx);
      if (again) {
        again = false;
        load();
      }
    });
  }

  for (const key of JOB_FILTERS) {
    controls[key].addEventListener('change', () => {
      filters[key] = controls[key].value;
      const q = new URLSearchParams();
      for (const k of JOB_FILTERS) if (filters[k]) q.set(k, filters[k]);
      history.replaceState(null, '', '/jobs' + (q.toString() ? '?' + q : ''));
      render();
    });
  }
  load();
  ctx.every(10000, load);
  return {
    update(ch) {
      if (ch.events.some((e) => e.kind === 'audit' && (e.to === 'submit' || e.to === 'cancel'))) load();
    },
  };
}

const jobNumber = (id) => Number(String(id).replace(/^c/, '')) || 0;

function jobRow(j) {
  return h('tr', { 'data-job': j.id },
    h('td', null, jobLink(j.id)), h('td', null, j.scheduler), h('td', null, j.owner || DASH),
    h('td', null, jobStateBadge(j.state_word)), h('td', null, nodeLink(j.node)),
    h('td', null, (j.spec && j.spec.name) || DASH),
    h('td', null, timeEl(j.submitted_ms)), h('td', null, timeEl(j.updated_ms)));
}

// ----- job

function jobPage(ctx, [id], main) {
  const base = '/api/v1/jobs/' + encodeURIComponent(id);
  const head = h('div', { class: 'page-head' }, h('h1', null, 'Job ' + id));
  const body = h('div', { class: 'grid' }, waiting('Loading\u2026'));
  const logText = h('pre', { class: 'log' });
  const refresh = h('button', { id: 'log-refresh', type: 'button' }, 'Refresh');
  const logBox = h('section', { id: 'log', class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', null, 'Output (last 64 KiB)'), refresh), logText);
  main.append(head, body, logBox);
  let job = null;

  const loadJob = () => ctx.load(base, (j) => {
    job = j;
    renderJob(head, body, j, cancelJob);
  }, (e) => {
    if (job) return flashError(e);
    body.replaceChildren(h('p', { class: 'error' }, e.status === 404 ? `No such job ${id}.` : e.message));
    logBox.hidden = e.status === 404;
  });

  function loadLog() {
    logText.textContent = 'Loading\u2026';
    logText.className = 'log';
    return ctx.load(base + '/logs?bytes=65536', (r) => {
      logText.textContent = r.text || '(no output yet)';
      logText.scrollTop = logText.scrollHeight;
    }, (e) => {
      logText.textContent = e.message;
      logText.className = 'log error';
    });
  }

  async function cancelJob(button) {
    button.disabled = true;
    try {
      const j = await api('POST', base + '/cancel', {});
      if (!ctx.alive) return;
      flash('ok', `Cancel sent for ${id}: ${j.state_word}.`);
      loadJob();
    } catch (e) {
      if (ctx.alive && e.status !== 401) flash('error', e.message);
      button.disabled = false;
    }
  }

  refresh.addEventListener('click', loadLog);
  Promise.all([loadJob(), loadLog()]).then(() => ready(ctx));
  ctx.every(10000, () => job && !FINISHED.has(job.state_word) && loadJob());
  return {
    update(ch) {
      if (ch.events.some((e) => e.kind === 'audit' && e.to === 'cancel')) loadJob();
    },
  };
}

function canCancel(j) {
  const me = session.me;
  if (!me || FINISHED.has(j.state_word)) return false;
  return me.role === 'admin' || (me.role === 'user' && j.owner === me.user);
}

function renderJob(head, body, j, onCancel) {
  const cancel = canCancel(j) ? h('button', { id: 'cancel', type: 'button', class: 'danger' }, 'Cancel job') : null;
  if (cancel) cancel.addEventListener('click', () => onCancel(cancel));
  setChildren(head, h('h1', null, 'Job ' + j.id + ((j.spec && j.spec.name) ? ' \u00b7 ' + j.spec.name : '')),
    h('span', { id: 'job-state', class: 'badge ' + jobStateClass(j.state_word) }, j.state_word),
    h('div', { class: 'actions' }, cancel));
  const history = j.history || [];
  body.replaceChildren(
    h('section', { class: 'panel' }, h('h2', null, 'Job'), fields(jobFields(j))),
    h('section', { class: 'panel' }, h('h2', null, 'Spec'),
      j.redacted ? h('p', { class: 'muted' }, 'Another user\u2019s job: its spec, messages and history are not shown.') : fields(specFields(j.spec || {}))),
    h('section', { class: 'panel wide' }, h('h2', null, 'History'),
      h('ul', { id: 'history', class: 'history' }, history.map((t) => h('li', null, timeEl(t.at_ms), ' ', transitionText(t)))),
      history.length ? null : h('p', { class: 'muted' }, 'No recorded transitions.')));
}

function jobFields(j) {
  const reason = j.state && typeof j.state === 'object' && j.state.failed ? j.state.failed.reason : null;
  return [
    ['Scheduler', j.scheduler], ['Native id', j.native_id], ['Owner', j.owner], ['Submit host', nodeLink(j.node)],
    ['Polled via', j.polled_via ? nodeLink(j.polled_via) : null], ['Phase', j.phase], ['Native state', j.native_state],
    ['Exit code', j.exit_code == null ? null : String(j.exit_code)], ['Failure', reason], ['Message', j.message],
    ['Poll error', j.poll_error ? h('span', { class: 'error' }, j.poll_error) : null],
    ['Submitted', timeEl(j.submitted_ms)], ['Updated', timeEl(j.updated_ms)], ['Last polled', timeEl(j.polled_ms)],
  ];
}

function specFields(s) {
  const command = [s.executable].concat(s.arguments || []).filter(Boolean).map(shellQuote).join(' ');
  const resources = [
    s.nodes != null && `${s.nodes} node(s)`, s.tasks_per_node != null && `${s.tasks_per_node} task(s)/node`,
    s.cpus_per_task != null && `${s.cpus_per_task} CPU(s)/task`, s.gpus_per_node != null && `${s.gpus_per_node} GPU(s)/node`,
    s.memory_mb != null && fmtBytes(s.memory_mb * 1048576), s.walltime_seconds != null && `walltime ${fmtDuration(s.walltime_seconds)}`,
  ].filter(Boolean).join(' \u00b7 ');
  const array = s.array ? `${s.array.first}-${s.array.last}:${s.array.step}` + (s.array.max_running ? ` %${s.array.max_running}` : '') : null;
  return [
    ['Name', s.name], ['Command', command ? h('code', null, command) : null], ['Directory', s.directory],
    ['Resources', resources], ['Queue', s.queue], ['Account', s.account], ['Reservation', s.reservation], ['Array', array],
    ['Depends on', (s.dependencies || []).map((d) => `${d.kind}:${d.job}`).join(', ')],
    ['Environment', (s.environment || []).map((e) => e[0]).join(', ')],
    ['Attributes', (s.attributes || []).map((a) => `${a[0]}=${a[1]}`).join(', ')],
    ['Output', [s.stdout_path, s.stderr_path].filter(Boolean).join(' \u00b7 ')],
  ];
}

const shellQuote = (arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${String(arg).replace(/'/g, "'\\''")}'`);

function transitionText(t) {
  return [t.state, t.native_state ? ` (${t.native_state})` : '', t.message ? ': ' + t.message : ''].join('');
}

// ----- events

const EVENTS_LIMIT = 500;

function eventsPage(ctx, _params, main) {
  const query = new URLSearchParams(location.search);
  const nodeInput = h('input', { id: 'f-node', type: 'text', placeholder: 'node (exact name)', value: query.get('node') || '', spellcheck: 'false', autocomplete: 'off' });
  const kindSelect = select('f-kind', optionsOf(EVENT_KINDS, 'any kind'), query.get('kind') || '');
  const form = h('form', { class: 'inline' }, nodeInput);
  const tbody = h('tbody');
  const empty = h('p', { class: 'muted', hidden: true }, 'No events match.');
  main.append(h('div', { class: 'toolbar' }, h('h1', null, 'Events'), form, kindSelect),
    h('table', { id: 'events', class: 'events' }, eventHead(true), tbody), empty);
  const seen = new Set();
  let filter = readFilter();
  let generation = 0;

  function readFilter() {
    return { node: nodeInput.value.trim(), kind: kindSelect.value };
  }

  const matches = (e) => (!filter.node || e.node === filter.node) && (!filter.kind || e.kind === filter.kind);

  function load() {
    filter = readFilter();
    syncEventsUrl(filter);
    const mine = ++generation;
    const q = new URLSearchParams({ limit: String(EVENTS_LIMIT) });
    if (filter.node) q.set('node', filter.node);
    if (filter.kind) q.set('kind', filter.kind);
    return ctx.load('/api/v1/events?' + q, (list) => {
      if (mine !== generation) return;
      tbody.replaceChildren();
      seen.clear();
      insertEvents(tbody, seen, list.concat(store.events).filter(matches), EVENTS_LIMIT, true);
      empty.hidden = tbody.children.length > 0;
    }).finally(() => mine === generation && ready(ctx));
  }

  let debounce = 0;
  nodeInput.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => ctx.alive && load(), 400);
  });
  ctx.onClose(() => clearTimeout(debounce));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(debounce);
    load();
  });
  kindSelect.addEventListener('change', load);
  load();
  return {
    update(ch) {
      const live = (ch.full ? store.events : ch.events).filter(matches);
      if (live.length && insertEvents(tbody, seen, live, EVENTS_LIMIT, true)) empty.hidden = true;
    },
  };
}

function syncEventsUrl(f) {
  const q = new URLSearchParams();
  if (f.node) q.set('node', f.node);
  if (f.kind) q.set('kind', f.kind);
  history.replaceState(null, '', '/events' + (q.toString() ? '?' + q : ''));
}

// ----- login, not found

function loginPage(ctx, _params, main) {
  const next = safeNext(new URLSearchParams(location.search).get('next'));
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', placeholder: 'corral_\u2026', spellcheck: 'false' });
  const submit = h('button', { id: 'login', type: 'submit', class: 'primary' }, 'Log in');
  const cert = h('button', { id: 'login-cert', type: 'button', class: 'secondary' }, 'Use my operator certificate');
  const error = h('p', { id: 'login-error', class: 'error', role: 'alert' });
  const form = h('form', { class: 'login' },
    h('h1', null, 'corral'),
    h('label', { for: 'token' }, 'API token'), token,
    h('div', { class: 'login-buttons' }, submit, cert),
    error,
    h('p', { class: 'muted' }, 'Make a token with ', h('code', null, 'corral tokens create'), ', or use ', h('code', null, 'corral dev'), '\u2019s link.'));
  main.append(form);

  async function attempt(body) {
    error.textContent = '';
    submit.disabled = cert.disabled = true;
    try {
      const who = await api('POST', '/ui/login', body, { quiet401: true });
      if (!ctx.alive) return;
      startSession(who);
      navigate(next, true);
    } catch (e) {
      if (!ctx.alive) return;
      error.textContent = e.message;
      submit.disabled = cert.disabled = false;
      ready(ctx);
    }
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const value = token.value.trim();
    if (value) attempt({ token: value });
    else error.textContent = 'Paste an API token first.';
  });
  cert.addEventListener('click', () => attempt({ certificate: true }));
  const fromHash = takeHashToken();
  if (!fromHash) {
    ready(ctx);
    token.focus();
    return;
  }
  // A link's token logs in by itself only where there is no session yet: a link from
  // someone else must not silently swap the user's identity for theirs.
  api('GET', '/api/v1/whoami', null, { quiet401: true }).then(
    (who) => {
      if (!ctx.alive) return;
      token.value = fromHash;
      error.textContent = `You are logged in as ${who.user} (${who.role}). Press Log in to use the link's token instead.`;
      ready(ctx);
    },
    () => ctx.alive && attempt({ token: fromHash }));
}

/** `/login#token=corral_...`: the token, with the fragment dropped from the URL. */
function takeHashToken() {
  if (!location.hash) return null;
  const value = new URLSearchParams(location.hash.slice(1)).get('token');
  history.replaceState(null, '', location.pathname + location.search);
  return value;
}

/** Only a local console path (no //host, no scheme) may be returned to. */
function safeNext(next) {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/';
  const found = matchRoute(next.split('?')[0]);
  return found && found.route.page !== 'login' ? next : '/';
}

function notFoundPage(ctx, _params, main) {
  main.append(h('h1', null, 'Not found'), h('p', null, 'No console page here. ', h('a', { href: '/' }, 'Overview')));
  ready(ctx);
}

// ---------------------------------------------------------------- 7. session

const session = { me: null };
const NAV = [['/', 'Overview', 'overview'], ['/nodes', 'Nodes', 'nodes'], ['/gpus', 'GPUs', 'gpus'], ['/jobs', 'Jobs', 'jobs'], ['/events', 'Events', 'events']];

function startSession(who) {
  session.me = who;
  renderHeader(who);
  store.reset();
  openFeed();
}

function endSession() {
  closeFeed();
  session.me = null;
  store.reset();
  $('top').replaceChildren();
  $('top').hidden = true;
}

/** A 401 from anything: the session is gone (expired, revoked, logged out elsewhere). */
function sessionExpired() {
  if (!session.me) return;
  endSession();
  toLogin();
}

function toLogin() {
  const here = location.pathname + location.search;
  const keep = here !== '/' && !location.pathname.startsWith('/login');
  navigate('/login' + (keep ? '?next=' + encodeURIComponent(here) : ''), true);
}

async function logout() {
  try {
    await api('POST', '/ui/logout', {}, { quiet401: true });
  } catch (e) {
    if (e.status !== 401) {
      flash('error', 'Logging out failed: ' + e.message);
      return;
    }
  }
  endSession();
  navigate('/login', true);
}

function renderHeader(who) {
  $('top').replaceChildren(
    h('a', { class: 'brand', href: '/' }, 'corral'),
    h('nav', null, NAV.map(([href, label, key]) => h('a', { href, 'data-nav': key }, label))),
    h('span', { class: 'grow' }),
    h('span', { id: 'feed', class: 'feed connecting' }, 'connecting\u2026'),
    h('span', { id: 'whoami' }, `${who.user} (${who.role})`),
    h('button', { id: 'logout', type: 'button', onclick: logout }, 'Log out'));
}

function markNav(key) {
  for (const a of $('top').querySelectorAll('nav a')) {
    if (a.dataset.nav === key) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function boot() {
  if (location.pathname === '/login') {
    showPage();
    return;
  }
  try {
    startSession(await api('GET', '/api/v1/whoami', null, { quiet401: true }));
    showPage();
  } catch (e) {
    if (e.status === 401) toLogin();
    else bootFailed(e);
  }
}

function bootFailed(e) {
  const main = $('page');
  main.dataset.page = 'error';
  main.replaceChildren(h('h1', null, 'corral'), h('p', { class: 'error' }, e.message),
    h('button', { type: 'button', onclick: boot }, 'Try again'));
}

/** A page being left (or put in the back/forward cache) lets go of its stream at
 * once: browsers keep only six connections per host, and a lingering stream per
 * reload would soon starve the API calls. A page restored from that cache reopens it. */
function onPageHide() {
  closeFeed();
}

function onPageShow(e) {
  if (e.persisted && session.me) openFeed();
}

window.corralGpuCell = (node, index) => (activeGrid ? activeGrid.cellRect(String(node), Number(index)) : null);
document.addEventListener('click', onDocumentClick);
window.addEventListener('popstate', showPage);
window.addEventListener('pagehide', onPageHide);
window.addEventListener('pageshow', onPageShow);
document.addEventListener('DOMContentLoaded', () => {
  $('flash').addEventListener('click', clearFlash);
  boot();
});
})();
