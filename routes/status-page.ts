import { createHash } from 'node:crypto'

// The status page as one document: its style and script inline (no build
// step, no asset to serve or fetch), allowed by their hashes in the Content
// Security Policy and by nothing else. The script renders /status/stream's
// snapshots with textContent only (every text is data, never markup), falls
// back to polling /status.json where EventSource is missing or refused, and
// draws its two charts as SVG.

const STYLE = `
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --text: #1c2430; --muted: #5d6b7d; --line: #dde2e8; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --off: #6e7781; }
@media (prefers-color-scheme: dark) { :root { --bg: #0d1117; --card: #161b22; --text: #e6edf3; --muted: #8d96a0; --line: #30363d; --ok: #3fb950; --warn: #d29922; --bad: #f85149; --off: #8d96a0; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--text); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; padding: .9rem 1rem; border-bottom: 1px solid var(--line); background: var(--card); position: sticky; top: 0; }
h1 { font-size: 1.15rem; margin: 0; }
h2 { font-size: .95rem; margin: 1.2rem 0 .5rem; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
main { padding: 0 1rem 2rem; max-width: 1200px; margin: 0 auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: .75rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .75rem .9rem; min-width: 0; }
.card h3 { margin: 0 0 .4rem; font-size: 1rem; display: flex; justify-content: space-between; gap: .5rem; align-items: center; }
.badge { display: inline-block; border-radius: 999px; padding: .05rem .6rem; font-size: .8rem; font-weight: 600; color: #fff; background: var(--off); white-space: nowrap; }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .75rem; margin: 0; font-size: .9rem; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.muted { color: var(--muted); font-size: .85rem; }
.bar { height: .6rem; background: var(--line); border-radius: 999px; overflow: hidden; margin: .4rem 0; }
.bar > div { height: 100%; width: 0; background: var(--ok); }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.table { overflow-x: auto; }
svg { width: 100%; height: auto; display: block; }
svg text { fill: var(--muted); font-size: 11px; }
.legend { display: flex; flex-wrap: wrap; gap: .25rem 1rem; font-size: .85rem; margin-top: .3rem; }
.legend span::before { content: ""; display: inline-block; width: .8rem; height: .25rem; margin-right: .35rem; vertical-align: middle; background: var(--swatch); }
`

const SCRIPT = `
(function () {
  'use strict';
  var COLORS = { cache: '#0969da', sse: '#8250df', presence: '#bf3989', queues: '#1a7f37', connections: '#9a6700' };
  var history = [];
  var $ = function (id) { return document.getElementById(id); };
  function h (tag, attrs) {
    var el = document.createElement(tag);
    for (var k in attrs || {}) { if (k === 'text') el.textContent = attrs[k]; else el.setAttribute(k, attrs[k]); }
    for (var i = 2; i < arguments.length; i++) { var c = arguments[i]; if (c !== null && c !== undefined) el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); }
    return el;
  }
  function svg (tag, attrs) {
    var el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (var k in attrs) el.setAttribute(k, attrs[k]);
    return el;
  }
  function num (n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: 1 }); }
  function pct (r) { return r === null || r === undefined ? '–' : (r * 100).toFixed(1) + ' %'; }
  function time (iso) { return iso ? new Date(iso).toLocaleTimeString() : '–'; }
  function utc (iso) { return iso ? iso.slice(11, 16) + ' UTC' : '–'; }
  function list (pairs) {
    var dl = h('dl');
    pairs.forEach(function (p) { if (p[1] !== null && p[1] !== undefined && p[1] !== '') { dl.appendChild(h('dt', { text: p[0] })); dl.appendChild(h('dd', { text: String(p[1]) })); } });
    return dl;
  }
  function badge (text, kind) { return h('span', { 'class': 'badge ' + kind, text: text }); }
  function replace (id, children) { var el = $(id); el.replaceChildren.apply(el, children); }

  function renderTiers (s) {
    replace('tiers', s.tiers.map(function (t) {
      var refusing = t.reachable && t.refusing ? t.refusing : null;
      var state = !t.configured ? 'off' : refusing ? refusing.cause : t.reachable ? 'up' : 'down';
      var label = { off: 'not configured', full: 'full: writes refused', quota: 'quota spent' }[state] || state;
      var card = h('div', { 'class': 'card', 'data-tier': t.tier, 'data-state': state },
        h('h3', null, h('span', { text: t.tier }), badge(label, state === 'up' ? 'ok' : state === 'down' ? 'bad' : refusing ? 'warn' : '')),
        t.configured ? list([['endpoint', t.endpoint], ['from', t.source], ['latency', t.latencyMs === null ? null : num(t.latencyMs) + ' ms'], ['since', time(refusing ? refusing.since : t.since)], ['diagnosis', refusing ? refusing.reason : t.lastError]]) : h('p', { 'class': 'muted', text: t.setUp }));
      return card;
    }));
  }

  function figuresOf (name, s) {
    var f = s.figures;
    if (name === 'cache') return [['hit ratio', pct(f.cache.hitRatio)], ['hits / misses', num(f.cache.hits) + ' / ' + num(f.cache.misses)], ['L1 entries', num(f.cache.l1Entries)], ['writes shed', f.cache.l2WritesShed ? num(f.cache.l2WritesShed) : null]];
    if (name === 'sse') return [['clients', num(f.sse.clients)], ['events/s', num(f.sse.eventsPerSecond)], ['published', num(f.sse.published)]];
    if (name === 'presence') return [['online', num(f.presence.online)]];
    if (name === 'rate-limit') return [['decisions', num(f.rateLimit.decisions)], ['refused in memory', num(f.rateLimit.refusedInMemory)], ['by the outage policy', f.rateLimit.byPolicy ? num(f.rateLimit.byPolicy) : null], ['instances', num(f.rateLimit.instances)]];
    if (name === 'queues') return Object.keys(f.queues).map(function (q) {
      var c = f.queues[q];
      return [q, Object.keys(c).filter(function (k) { return c[k] > 0 || k === 'waiting' || k === 'active'; }).map(function (k) { return k + ' ' + num(c[k]); }).join(', ')];
    });
    return [];
  }

  function renderFeatures (s) {
    replace('features', s.features.map(function (f) {
      var active = f.status === 'active';
      var kind = !active ? '' : f.tier === 'memory' ? 'warn' : (s.tiers.some(function (t) { return t.tier === f.tier && !t.reachable; }) ? 'bad' : s.tiers.some(function (t) { return t.tier === f.tier && t.refusing; }) ? 'warn' : 'ok');
      var today = s.commands.filter(function (c) { return c.feature === f.feature; }).reduce(function (n, c) { return n + c.today; }, 0);
      return h('div', { 'class': 'card', 'data-feature': f.feature, 'data-on': f.tier || 'none' },
        h('h3', null, h('span', { text: f.feature }), badge(active ? 'on ' + f.tier : 'skipped', kind)),
        h('p', { 'class': 'muted', text: f.reason }),
        list([['on outage', f.outage], ['moves', num(f.transitions)], ['since', time(f.since)], ['commands today', num(today)]].concat(active ? figuresOf(f.feature, s) : [])));
    }));
  }

  function renderBudget (b) {
    var used = num(b.used) + (b.limit === null ? ' commands today (UTC)' : ' of ' + num(b.limit) + ' commands today (UTC)');
    var bar = h('div', { 'class': 'bar' }, h('div'));
    var fill = bar.firstChild;
    if (b.limit !== null) {
      var ratio = Math.min(1, b.used / b.limit);
      fill.style.width = (ratio * 100).toFixed(1) + '%';
      fill.style.background = ratio >= 1 ? 'var(--bad)' : ratio >= 0.8 ? 'var(--warn)' : 'var(--ok)';
    }
    var when = b.limit === null ? 'No REDIS_DAILY_COMMAND_BUDGET is set: commands are counted, not limited.'
      : b.exhaustedAt ? 'Spent at ' + utc(b.exhaustedAt) + (b.shedding ? '; REDIS_BUDGET_GUARD sheds optional work until the reset.' : '; commands are still sent (REDIS_BUDGET_GUARD is off).')
      : b.projectedExhaustion ? 'At this rate it runs out at ' + utc(b.projectedExhaustion) + '.' : 'At this rate it lasts until the reset.';
    replace('budget', [h('div', { 'class': 'card', 'data-budget': b.shedding ? 'shedding' : 'counting' },
      h('h3', null, h('span', { text: used }), b.limit === null ? null : badge(num(b.remaining) + ' left', b.used >= b.limit ? 'bad' : b.used >= 0.8 * b.limit ? 'warn' : 'ok')),
      b.limit === null ? null : bar,
      h('p', { 'class': 'muted', text: when + ' Resets at ' + utc(b.resetsAt) + '.' }))]);
  }

  function renderCommands (s) {
    var head = h('tr', null, h('th', { text: 'feature' }), h('th', { text: 'tier' }), h('th', { 'class': 'n', text: 'today' }), h('th', { 'class': 'n', text: 'since boot' }), h('th', { 'class': 'n', text: 'round trips' }));
    var body = h('tbody');
    s.commands.forEach(function (c) { body.appendChild(h('tr', null, h('td', { text: c.feature }), h('td', { text: c.tier }), h('td', { 'class': 'n', text: num(c.today) }), h('td', { 'class': 'n', text: num(c.commands) }), h('td', { 'class': 'n', text: num(c.requests) }))); });
    if (s.commands.length === 0) body.appendChild(h('tr', null, h('td', { colspan: '5', 'class': 'muted', text: 'No Redis command sent yet.' })));
    replace('commands', [h('thead', null, head), body]);
  }

  /** One SVG line chart: series of [t, value|null] points, a gap where a value is null. */
  function chart (id, series, yMax, format) {
    var W = 600, H = 160, L = 44, B = 18, T = 8;
    var root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': id });
    var ts = [];
    series.forEach(function (s) { s.points.forEach(function (p) { ts.push(p[0]); }); });
    var t0 = Math.min.apply(null, ts.concat([Date.now() - 60000])), t1 = Math.max.apply(null, ts.concat([Date.now()]));
    var x = function (t) { return L + (W - L - 4) * (t - t0) / Math.max(1, t1 - t0); };
    var y = function (v) { return T + (H - T - B) * (1 - v / yMax); };
    [0, 0.5, 1].forEach(function (f) {
      root.appendChild(svg('line', { x1: L, x2: W - 4, y1: y(yMax * f), y2: y(yMax * f), stroke: 'currentColor', 'stroke-opacity': '0.15' }));
      var label = svg('text', { x: L - 6, y: y(yMax * f) + 4, 'text-anchor': 'end' }); label.textContent = format(yMax * f); root.appendChild(label);
    });
    var minutes = svg('text', { x: W - 4, y: H - 4, 'text-anchor': 'end' }); minutes.textContent = 'last ' + Math.max(1, Math.round((t1 - t0) / 60000)) + ' min'; root.appendChild(minutes);
    var legend = h('div', { 'class': 'legend' });
    series.forEach(function (s) {
      var d = '', pen = 'M';
      s.points.forEach(function (p) { if (p[1] === null) { pen = 'M'; return; } d += pen + x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1) + ' '; pen = 'L'; });
      if (d !== '') root.appendChild(svg('path', { d: d, fill: 'none', stroke: s.color, 'stroke-width': '2', 'stroke-linejoin': 'round' }));
      var item = h('span', { text: s.name }); item.style.setProperty('--swatch', s.color); legend.appendChild(item);
    });
    replace(id, [root, legend]);
  }

  function renderCharts () {
    var features = {};
    history.forEach(function (s) { for (var f in s.commands) features[f] = true; });
    var rates = Object.keys(features).map(function (f) {
      var points = [];
      for (var i = 1; i < history.length; i++) {
        var a = history[i - 1], b = history[i];
        points.push([b.t, Math.max(0, ((b.commands[f] || 0) - (a.commands[f] || 0)) / Math.max(1e-9, (b.t - a.t) / 60000))]);
      }
      return { name: f, color: COLORS[f] || '#57606a', points: points };
    });
    var top = rates.reduce(function (m, s) { return s.points.reduce(function (n, p) { return Math.max(n, p[1]); }, m); }, 0);
    chart('chart-commands', rates, top > 0 ? top * 1.1 : 1, function (v) { return num(v); });
    var ratio = [];
    for (var i = 1; i < history.length; i++) {
      var hits = history[i].cacheHits - history[i - 1].cacheHits, misses = history[i].cacheMisses - history[i - 1].cacheMisses;
      ratio.push([history[i].t, hits + misses > 0 ? hits / (hits + misses) : null]);
    }
    chart('chart-hits', [{ name: 'cache hit ratio', color: COLORS.cache, points: ratio }], 1, function (v) { return Math.round(v * 100) + ' %'; });
  }

  function render (s) {
    if (s.history) { history = s.history; renderCharts(); }
    var overall = $('overall');
    overall.textContent = s.status;
    overall.className = 'badge ' + (s.status === 'ok' ? 'ok' : s.status === 'degraded' ? 'warn' : 'bad');
    document.body.setAttribute('data-status', s.status);
    $('updated').textContent = 'updated ' + time(s.at);
    renderTiers(s); renderFeatures(s); renderBudget(s.budget); renderCommands(s);
  }

  function setMode (mode) { $('mode').textContent = mode; document.body.setAttribute('data-mode', mode); }

  function poll () {
    setMode('polling');
    fetch('status.json', { cache: 'no-store', credentials: 'same-origin' })
      .then(function (r) { if (!r.ok) throw new Error('the status answered ' + r.status); return r.json(); })
      .then(render, function (err) { $('updated').textContent = String(err.message || err); })
      .then(function () { setTimeout(poll, 5000); });
  }

  function live () {
    if (typeof window.EventSource !== 'function') return poll();
    var source = new EventSource('status/stream');
    var failures = 0;
    source.onmessage = function (e) { failures = 0; setMode('live'); render(JSON.parse(e.data)); };
    source.onerror = function () {
      failures++;
      setMode('reconnecting');
      if (source.readyState === 2 || failures >= 3) { source.close(); poll(); }
    };
  }
  live();
})();
`

const BODY = `<header><h1>Redis tiers</h1><span id="overall" class="badge">…</span><span id="mode" class="muted">connecting</span><span id="updated" class="muted"></span></header>
<main>
<h2>Tiers</h2><div id="tiers" class="grid"></div>
<h2>Features</h2><div id="features" class="grid"></div>
<h2>Command budget</h2><div id="budget"></div>
<div class="grid">
<div><h2>Commands per minute, by feature</h2><div class="card" id="chart-commands"></div></div>
<div><h2>Cache hit ratio</h2><div class="card" id="chart-hits"></div></div>
</div>
<h2>Commands by feature and tier</h2><div class="card table"><table id="commands"></table></div>
</main>`

const hash = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`

/** The page and the policy that lets exactly its own style and script run. */
export function statusPage (): { html: string, contentSecurityPolicy: string } {
  return {
    html: `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
<title>Redis tiers: status</title><link rel="icon" href="data:,"><style>${STYLE}</style></head>
<body data-mode="connecting">${BODY}<script>${SCRIPT}</script></body></html>`,
    contentSecurityPolicy: `default-src 'none'; script-src ${hash(SCRIPT)}; style-src ${hash(STYLE)}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`
  }
}
