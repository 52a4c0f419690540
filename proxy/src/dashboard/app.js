// The dashboard's data flow: polls the admin API every few seconds, finds out which roles this
// node serves (a 404 means the role is not here), asks for the admin token once when the API
// answers 401, and renders each section in place.
'use strict';

const TOKEN_KEY = 'prescale-admin-token';
const RANGE_KEY = 'prescale-chart-minutes';
const REFRESH_MS = 3000;
const ENDPOINTS = {
  plan: '/api/v1/plan', profiles: '/api/v1/profiles', fleets: '/api/v1/fleets', events: '/api/v1/events',
  nodes: '/api/v1/nodes', members: '/api/v1/members', regions: '/api/v1/regions',
};

class AuthNeeded extends Error {}

// sessionStorage with an in-memory fallback where storage is unavailable.
const memoryStore = new Map();
const store = {
  get(key) { try { return sessionStorage.getItem(key); } catch (_) { return memoryStore.has(key) ? memoryStore.get(key) : null; } },
  set(key, value) { try { sessionStorage.setItem(key, value); } catch (_) { memoryStore.set(key, value); } },
  remove(key) { try { sessionStorage.removeItem(key); } catch (_) { memoryStore.delete(key); } },
};

const $ = (id) => document.getElementById(id);
const state = { nowSeconds: null, timer: null, refreshing: false, eventFormReady: false };

// ---------------------------------------------------------------------------------------------
// small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function table(headers, rows, attrs) {
  return el('table', attrs,
    el('thead', null, el('tr', null, headers.map((h) => el('th', { class: h.num ? 'num' : null, title: h.title }, h.label || h)))),
    el('tbody', null, rows));
}

function cell(text, cls, title) { return el('td', { class: cls, title }, text === null || text === undefined ? '–' : String(text)); }
function num(text, cls) { return cell(text, 'num' + (cls ? ' ' + cls : '')); }
function absent(text) { return el('p', { class: 'absent' }, text); }
function keyOf(name) { return String(name).replace(/[^A-Za-z0-9_-]/g, '_'); }

function fmt(value, digits) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return '–';
  return Number(value).toLocaleString('en-US', { minimumFractionDigits: digits || 0, maximumFractionDigits: digits || 0 });
}

function nodeTime(unixMs, withSeconds) {
  const iso = new Date(unixMs).toISOString();
  return iso.slice(0, 10) + ' ' + iso.slice(11, withSeconds === false ? 16 : 19);
}

function clock(unixMs) { return new Date(unixMs).toISOString().slice(11, 19); }

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return s + ' s ago';
  if (s < 7200) return Math.round(s / 60) + ' min ago';
  return Math.round(s / 3600) + ' h ago';
}

function setStatus(text, cls) {
  const status = $('status');
  status.textContent = text;
  status.className = 'item' + (cls ? ' ' + cls : '');
}

// ---------------------------------------------------------------------------------------------
// the API and the admin token

function takeTokenFromUrl() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return;
  try { store.set(TOKEN_KEY, decodeURIComponent(match[1])); } catch (_) { store.set(TOKEN_KEY, match[1]); }
  history.replaceState(null, '', location.pathname + location.search);
}

async function api(path, init) {
  const headers = new Headers((init && init.headers) || {});
  const token = store.get(TOKEN_KEY);
  if (token) headers.set('Authorization', 'Bearer ' + token);
  const response = await fetch(path, Object.assign({ cache: 'no-store' }, init || {}, { headers }));
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (response.status === 401) throw new AuthNeeded(token ? 'wrong' : 'missing');
  const message = body && typeof body.error === 'string' ? body.error : (text || 'HTTP ' + response.status);
  return { status: response.status, ok: response.ok, body, message, absent: response.status === 404 };
}

function askForToken(reason) {
  if (reason === 'wrong') store.remove(TOKEN_KEY);
  document.body.dataset.auth = 'needed';
  $('token-prompt').hidden = false;
  $('token-message').textContent = reason === 'wrong'
    ? 'The admin token was not accepted. Enter it again:'
    : "This node's admin API needs a token. Enter it once:";
  $('forget-token').hidden = true;
  // Nothing read with an earlier token stays on the page.
  for (const id of ['region-body', 'profiles-body', 'nodes-body', 'members-body', 'events-body', 'backends-body']) {
    $(id).replaceChildren(absent('waiting for the admin token'));
  }
  for (const id of ['region-name', 'region-summary', 'profiles-summary', 'mesh-summary', 'backends-summary', 'node-name', 'node-roles', 'plan-state']) {
    $(id).replaceChildren();
  }
  $('node-time').textContent = '–';
  $('regions-body').replaceChildren();
  $('event-form').hidden = true;
  setStatus('waiting for the admin token', 'warn');
  $('token-input').focus();
}

function tokenGiven(event) {
  event.preventDefault();
  const value = $('token-input').value.trim();
  if (!value) return;
  store.set(TOKEN_KEY, value);
  $('token-input').value = '';
  $('token-prompt').hidden = true;
  document.body.dataset.auth = 'given';
  refreshSoon(0);
}

// ---------------------------------------------------------------------------------------------
// the refresh loop

function refreshSoon(delay) {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, delay);
}

async function refresh() {
  if (state.refreshing) return;
  if (document.body.dataset.auth === 'needed') return;
  state.refreshing = true;
  let data = null;
  try {
    data = await fetchAll();
  } catch (e) {
    if (e instanceof AuthNeeded) askForToken(e.message);
    else setStatus('cannot reach the node: ' + e.message + ' (showing the last data)', 'bad');
  }
  try {
    if (data) render(data);
  } catch (e) {
    setStatus('the page failed to show the data: ' + e.message, 'bad');
  } finally {
    state.refreshing = false;
    if (document.body.dataset.auth !== 'needed') refreshSoon(REFRESH_MS);
  }
}

// Every endpoint of the page, and the history of each fleet the plan has.
async function fetchAll() {
  const names = Object.keys(ENDPOINTS);
  const answers = await Promise.all(names.map((name) => api(ENDPOINTS[name])));
  const data = { histories: {} };
  names.forEach((name, i) => { data[name] = answers[i]; });
  const plan = data.plan.ok ? data.plan.body : null;
  if (plan) {
    const minutes = Number(store.get(RANGE_KEY)) || 180;
    const fetched = await Promise.all(plan.fleets.map((f) => api('/api/v1/history?fleet=' + encodeURIComponent(f.fleet) +
      '&region=' + encodeURIComponent(plan.region) + '&minutes=' + minutes)));
    plan.fleets.forEach((f, i) => { data.histories[f.fleet] = fetched[i]; });
  }
  return data;
}

function render(data) {
  const plan = data.plan.ok ? data.plan.body : null;
  state.nowSeconds = plan ? plan.at_ms / 1000 : null;
  if (store.get(TOKEN_KEY)) { document.body.dataset.auth = 'given'; $('forget-token').hidden = false; }
  renderHeader(data);
  renderRegion(data.plan, data.histories);
  renderProfiles(data.profiles, plan);
  renderMesh(data.nodes, data.members, data.regions);
  renderEvents(data.events, plan);
  renderBackends(data.fleets, plan);
  setStatus('live · updated ' + new Date().toTimeString().slice(0, 8), 'ok');
}

// ---------------------------------------------------------------------------------------------
// header

function renderHeader(data) {
  const roles = [];
  if (data.profiles.ok) roles.push('proxy');
  if (data.plan.ok) roles.push('forecaster');
  if (data.members.ok) roles.push('membership');
  const name = (data.profiles.ok && data.profiles.body.node) || (data.members.ok && data.members.body.self) || '';
  $('node-name').textContent = name ? 'node ' + name : '';
  $('node-roles').replaceChildren(...roles.map((r) => el('span', { class: 'badge on' }, r)));
  const plan = data.plan.ok ? data.plan.body : null;
  $('node-time').textContent = plan ? nodeTime(plan.at_ms) + ' UTC' : '– (no forecaster here)';
  const bits = [];
  if (plan) {
    bits.push(el('span', null, 'plan ' + (plan.plan_version === null ? '–' : 'v' + plan.plan_version)));
    bits.push(el('span', { class: 'badge' + (plan.forecast_only ? ' alert' : ' on') }, plan.forecast_only ? 'forecast only' : 'provisioning'));
    if (plan.holding) bits.push(el('span', { class: 'badge alert', title: plan.holding }, 'holding capacity'));
  }
  $('plan-state').replaceChildren(...bits);
}

// ---------------------------------------------------------------------------------------------
// region: one block per fleet with its chart, instances and decisions

function renderRegion(planAnswer, histories) {
  const body = $('region-body');
  if (!planAnswer.ok) {
    $('region-name').textContent = '';
    $('region-summary').textContent = '';
    body.replaceChildren(absent(planAnswer.absent
      ? 'No forecaster on this node: plans, forecasts and instances live on the region\'s forecaster.'
      : 'The plan could not be read: ' + planAnswer.message));
    return;
  }
  const plan = planAnswer.body;
  $('region-name').textContent = plan.region;
  const summary = [];
  if (plan.observed_through_ms) summary.push('minutes handed to the brain through ' + nodeTime(plan.observed_through_ms, false));
  if (plan.holding) summary.push('holding: ' + plan.holding);
  const running = (plan.events || []).filter((e) => e.active).length;
  if ((plan.events || []).length) summary.push(running + ' event(s) running, ' + (plan.events.length - running) + ' coming');
  $('region-summary').textContent = summary.join(' · ');
  if (!plan.fleets.length) { body.replaceChildren(absent('No fleets in this region.')); return; }
  const wanted = new Set(plan.fleets.map((f) => 'fleet-' + keyOf(f.fleet)));
  for (const child of Array.from(body.children)) if (!wanted.has(child.id)) child.remove();
  for (const fleet of plan.fleets) {
    const key = keyOf(fleet.fleet);
    let article = $('fleet-' + key);
    if (!article) { article = fleetSkeleton(fleet.fleet, key); body.appendChild(article); }
    renderFleet(article, key, fleet, histories[fleet.fleet], plan);
  }
}

function fleetSkeleton(name, key) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('id', 'chart-' + key);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'demand, forecast band and capacity of fleet ' + name);
  const tooltip = $('tooltip');
  svg.addEventListener('mousemove', (event) => chartPointer(svg, event, tooltip));
  svg.addEventListener('mouseleave', () => chartLeave(svg, tooltip));
  return el('article', { class: 'fleet', id: 'fleet-' + key, 'data-fleet': name },
    el('div', { class: 'fleet-head', id: 'head-' + key }),
    el('div', { class: 'fleet-grid' },
      el('div', { class: 'chart-box' }, svg,
        el('div', { class: 'legend', id: 'legend-' + key }),
        el('p', { class: 'forecasts', id: 'forecasts-' + key }),
        el('p', { class: 'reason', id: 'reason-' + key })),
      el('div', { class: 'side' },
        el('h3', null, 'Instances by tier and state'),
        el('div', { id: 'tiers-' + key }),
        el('p', { class: 'note', id: 'provisioner-' + key }),
        el('h3', null, 'Last decisions ', el('span', { class: 'sub' }, 'newest first')),
        el('ol', { class: 'decisions', id: 'decisions-' + key }))));
}

function renderFleet(article, key, fleet, historyAnswer, plan) {
  const rps = fleet.capacity ? fleet.capacity.rps_per_instance : null;
  const facts = [
    el('h3', null, 'fleet ' + fleet.fleet),
    el('span', { class: 'fact' }, fleet.provisioned ? 'provisioned' : 'static backends'),
    el('span', { class: 'fact' }, 'planned ', el('b', null, String(fleet.planned))),
    el('span', { class: 'fact' }, 'ready ', el('b', { class: 'ok' }, String(fleet.instances.ready)),
      ' · warming ', el('b', null, String(fleet.instances.warming)), ' · draining ', el('b', null, String(fleet.instances.draining))),
  ];
  if (rps !== null) {
    const source = fleet.capacity.source === 'learned' ? 'learned' + (fleet.capacity.why ? ': ' + fleet.capacity.why : '') : 'configured';
    facts.push(el('span', { class: 'fact', title: source }, 'capacity ', el('b', null, fmt(rps, rps < 10 ? 1 : 0) + ' req/s'), ' per instance (' + (fleet.capacity.source || 'configured') + ')'));
  }
  if (fleet.lead_minutes !== undefined && fleet.lead_minutes !== null) facts.push(el('span', { class: 'fact' }, 'lead time ', el('b', null, fleet.lead_minutes + ' min')));
  if (fleet.sizing) facts.push(el('span', { class: 'fact', title: 'recent error at the lead time: total ' + fmt(fleet.sizing.fleet_total_error, 1) + ', sum of profiles ' + fmt(fleet.sizing.sum_of_profiles_error, 1) }, 'sized by ' + fleet.sizing.method.replace(/_/g, ' ')));
  if (fleet.grants && fleet.grants.length) facts.push(el('span', { class: 'fact warn' }, 'cap binds: grants to ' + fleet.grants.map((g) => g.profile).join(', ')));
  $('head-' + key).replaceChildren(...facts);

  // The chart.
  let minutes = [];
  let message = null;
  if (!historyAnswer) message = 'no history';
  else if (historyAnswer.ok) minutes = historyAnswer.body.minutes || [];
  else message = historyAnswer.absent && /no admin endpoint/.test(historyAnswer.message)
    ? 'capacity history is not served by this node' : historyAnswer.message;
  const svg = $('chart-' + key);
  const model = {
    key, minutes, outlook: fleet.outlook || null, nowSeconds: plan.at_ms / 1000,
    rangeSeconds: (Number(store.get(RANGE_KEY)) || 180) * 60, rpsPerInstance: rps, lead: fleet.lead_minutes, message,
  };
  svg.chartModel = model;
  drawFleetChart(svg, model);
  const lead = fleet.lead_minutes ? ' (lead ' + fleet.lead_minutes + ' min)' : '';
  $('legend-' + key).replaceChildren(
    el('span', { class: 'l-demand', title: 'requests of the minute as handed to the brain' }, 'demand'),
    el('span', { class: 'l-band', title: 'lower to upper bound of the forecast made a lead time before each past minute; ahead of now, the plan\'s outlook' }, 'forecast band' + lead + ', then outlook'),
    el('span', { class: 'l-forecast' }, 'forecast'),
    el('span', { class: 'l-capacity', title: 'ready instances × requests/s per instance × 60' }, 'ready capacity'),
    el('span', { class: 'l-plan', title: 'instances the outlook sizes each coming minute for × requests/s per instance × 60' }, 'planned capacity'));

  // Forecasts in words.
  const words = [];
  if (fleet.lead_forecast) {
    const f = fleet.lead_forecast;
    words.push(el('span', null, 'Forecast for ', el('b', null, nodeTime(f.minute * 1000, false).slice(11)), ' (lead ' + f.horizon_minutes + ' min): ',
      el('b', null, fmt(f.point)), ' req/min [' + fmt(f.lower) + '–' + fmt(f.upper) + '], the plan covers ' + fmt(f.slo_upper) + ' (' + f.model + ')'));
  }
  const horizons = (fleet.forecast || []).map((f) => '+' + (f.horizon_minutes >= 1440 ? f.horizon_minutes / 1440 + ' d' : f.horizon_minutes + ' min') + ' ' + fmt(f.point) + ' [' + fmt(f.lower) + '–' + fmt(f.upper) + ']');
  if (horizons.length) words.push(el('span', { class: 'muted' }, (words.length ? ' · ' : 'Forecast ') + horizons.join(' · ') + ' req/min'));
  if (!words.length) words.push(el('span', { class: 'muted' }, 'No forecast yet.'));
  const accuracy = fleet.accuracy;
  if (accuracy && accuracy.minutes_scored) {
    const held = accuracy.minutes_scored - accuracy.misses;
    words.push(el('br'), el('span', { id: 'accuracy-' + key, title: 'handed minutes whose demand fell within the interval forecast a lead time before' },
      'Demand inside the lead-time interval: ', el('b', null, fmt(held) + ' of ' + fmt(accuracy.minutes_scored)),
      ' minutes (' + fmt(100 * held / accuracy.minutes_scored) + ' %)'));
  }
  $('forecasts-' + key).replaceChildren(...words);
  $('reason-' + key).replaceChildren(...(fleet.reason ? [el('b', null, 'Plan: '), fleet.reason] : []));

  renderTiers($('tiers-' + key), fleet);
  const p = fleet.provisioner;
  const provisioner = [];
  if (p) {
    provisioner.push(p.kind + ' provisioner: ' + p.started_total + ' started, ' + p.adopted_total + ' adopted, ' + p.stopped_total + ' stopped');
    if (p.start_failures_total) provisioner.push(p.start_failures_total + ' failed starts');
    if (p.unexpected_exits_total) provisioner.push(p.unexpected_exits_total + ' unexpected exits');
    if (p.last_error) provisioner.push('last error: ' + p.last_error);
  }
  const provisionerLine = $('provisioner-' + key);
  provisionerLine.textContent = provisioner.join(' · ');
  provisionerLine.className = 'note' + (p && p.last_error ? ' bad' : '');

  const decisions = fleet.decisions || [];
  const list = $('decisions-' + key);
  list.setAttribute('data-count', decisions.length);
  list.replaceChildren(...(decisions.length ? decisions.map((d) => el('li', { 'data-at-ms': d.at_ms, 'data-action': d.action },
    el('time', { datetime: new Date(d.at_ms).toISOString() }, nodeTime(d.at_ms).slice(11)),
    el('span', { class: 'action ' + d.action }, d.action.replace(/_/g, ' ')),
    el('span', { class: 'reason-text' }, d.reason))) : [el('li', { class: 'muted' }, 'no decisions yet')]));
}

const TIER_LABELS = { baseline: 'baseline', predictive: 'predictive', burst: 'burst', guard: 'reactive guard', warm_pool: 'warm pool', held: 'held', draining: 'draining' };

function renderTiers(target, fleet) {
  const t = fleet.tiers;
  const planLine = t ? el('p', { class: 'note' }, 'plan: baseline ' + t.baseline + ' · predictive ' + t.predictive + ' · burst ' + t.burst +
    ' · guard ' + t.guard + ' · warm pool ' + t.warm_pool + ' → ' + t.total) : null;
  const sets = fleet.tier_sets || [];
  if (!sets.length) {
    const i = fleet.instances;
    target.replaceChildren(table(['', { label: 'ready', num: true }, { label: 'warming', num: true }, { label: 'draining', num: true }],
      [el('tr', null, cell(fleet.provisioned ? 'no instances yet' : 'static'), num(i.ready, 'ok'), num(i.warming), num(i.draining))],
      { class: 'tiers', id: 'tier-table-' + keyOf(fleet.fleet) }), planLine);
    return;
  }
  // The profile column only when a warm sub-pool has one.
  const profiles = sets.some((s) => s.profile);
  const rows = sets.map((s) => el('tr', { 'data-tier': s.tier },
    cell(TIER_LABELS[s.tier] || s.tier, null, (s.instances || []).map((b) => b.address + ' ' + b.phase).join('\n')),
    profiles ? cell(s.profile || '') : null,
    num(s.ready, s.ready ? 'ok' : 'muted'), num(s.warming, s.warming ? 'warn' : 'muted'), num(s.draining, s.draining ? 'warn' : 'muted')));
  const sum = (k) => sets.reduce((acc, s) => acc + s[k], 0);
  rows.push(el('tr', null, el('th', null, 'total'), profiles ? cell('') : null, num(sum('ready')), num(sum('warming')), num(sum('draining'))));
  const headers = ['tier'].concat(profiles ? ['profile'] : [], [{ label: 'ready', num: true }, { label: 'warming', num: true }, { label: 'draining', num: true }]);
  target.replaceChildren(table(headers, rows, { class: 'tiers', id: 'tier-table-' + keyOf(fleet.fleet) }), planLine);
}

// ---------------------------------------------------------------------------------------------
// profiles

function renderProfiles(answer, plan) {
  const body = $('profiles-body');
  if (!answer.ok) {
    $('profiles-summary').textContent = '';
    body.replaceChildren(absent(answer.absent
      ? 'No proxy on this node: profiles are measured by the proxies (their sketches are listed under Mesh).'
      : 'Profiles could not be read: ' + answer.message));
    return;
  }
  const report = answer.body;
  $('profiles-summary').textContent = fmt(report.users_tracked) + ' users tracked' + (report.model_version === null ? ' · assigned by rules (no model yet)' : ' · model v' + report.model_version);
  // The forecast column only where this node's forecaster forecasts the profiles.
  const forecasts = plan ? new Map((plan.series || []).map((s) => [s.profile, s.forecast.find((f) => f.horizon_minutes === 30) || s.forecast[0]])) : null;
  // The persona the forecaster mapped each learned profile to (in the installed model).
  const personas = new Map(((report.model && report.model.profiles) || [])
    .filter((m) => m.persona).map((m) => [m.name, m.persona]));
  const rows = report.profiles.map((p) => {
    const f = forecasts && forecasts.get(p.name);
    const persona = personas.get(p.name);
    return el('tr', { 'data-profile': p.name },
      cell(p.name), num(fmt(p.users)), num(fmt(p.request_rate, 2)), num(fmt(p.requests)),
      num(fmt(p.latency_ms.p50, 1)), num(fmt(p.latency_ms.p95, 1)), num(fmt(p.latency_ms.p99, 1)),
      num(fmt(p.error_rate * 100, 2) + ' %', p.error_rate > 0.01 ? 'bad' : null),
      forecasts ? num(f ? fmt(f.point) : '–') : null, persona
        ? cell(persona.persona, null, 'revenue ' + fmt(persona.revenue_weight_milli / 1000, 3) + ' · priority ' + persona.priority + (persona.fleet ? ' · fleet ' + persona.fleet : ''))
        : cell('—', 'muted', report.model ? 'no persona matches this profile' : 'personas map learned profiles; no model is installed'));
  });
  const headers = ['profile', { label: 'users', num: true }, { label: 'req/s', num: true },
    { label: 'requests', num: true, title: 'since the node started' }, { label: 'p50 ms', num: true }, { label: 'p95 ms', num: true },
    { label: 'p99 ms', num: true }, { label: 'errors', num: true }];
  if (forecasts) headers.push({ label: 'fcst +30m', num: true, title: 'forecast requests/min in 30 minutes' });
  headers.push('persona');
  body.replaceChildren(el('div', { class: 'scroll' }, table(headers,
    rows.length ? rows : [el('tr', null, el('td', { colspan: headers.length, class: 'muted' }, 'no profiles'))], { id: 'profiles-table' })));
}

// ---------------------------------------------------------------------------------------------
// mesh

function renderMesh(nodesAnswer, membersAnswer, regionsAnswer) {
  const summary = [];
  if (nodesAnswer.ok) {
    const nodes = nodesAnswer.body.nodes;
    const silent = nodes.filter((n) => n.silent).length;
    summary.push(nodes.length + ' proxies' + (silent ? ', ' + silent + ' silent' : ''));
    const now = Date.now();
    const rows = nodes.map((n) => el('tr', { 'data-node': n.node },
      cell(n.node), cell(n.region),
      cell(clock(n.last_seen_ms) + ' · ' + ago(now - n.last_seen_ms), null, 'when the last sketch arrived (wall clock)'),
      num(fmt(n.last_sequence)), num(fmt(n.sketches)), num(fmt(n.spool_backlog), n.spool_backlog ? 'warn' : null),
      num(fmt(n.spool_dropped), n.spool_dropped ? 'bad' : null), cell(n.silent ? 'silent' : 'reporting', n.silent ? 'bad' : 'ok')));
    $('nodes-body').replaceChildren(table(['node', 'region', 'last sketch', { label: 'seq', num: true }, { label: 'sketches', num: true },
      { label: 'spooled', num: true }, { label: 'dropped', num: true }, 'state'],
    rows.length ? rows : [el('tr', null, el('td', { colspan: 8, class: 'muted' }, 'no proxy has sent a sketch yet'))], { id: 'nodes-table' }));
  } else {
    $('nodes-body').replaceChildren(absent(nodesAnswer.absent ? 'No forecaster on this node: sketches go to the region\'s forecaster.' : 'Nodes could not be read: ' + nodesAnswer.message));
  }
  if (membersAnswer.ok) {
    const m = membersAnswer.body;
    const alive = m.members.filter((x) => x.alive).length;
    summary.push(alive + '/' + m.members.length + ' members alive');
    const rows = m.members.map((x) => el('tr', { 'data-member': x.name },
      cell(x.name + (x.name === m.self ? ' (this node)' : '')), cell(x.role), cell(x.region), cell(x.address),
      cell(x.alive ? 'alive' : 'down', x.alive ? 'ok' : 'bad'), cell(x.state_for_secs + ' s'),
      cell((m.silent_proxies || []).includes(x.name) ? 'silent' : '', 'bad')));
    $('members-body').replaceChildren(table(['member', 'role', 'region', 'address', 'state', 'for', ''], rows, { id: 'members-table' }));
  } else {
    $('members-body').replaceChildren(absent(membersAnswer.absent ? 'Membership is not configured on this node (mesh.membership_listen).' : 'Members could not be read: ' + membersAnswer.message));
  }
  if (regionsAnswer.ok && regionsAnswer.body.regions.length) {
    const rows = regionsAnswer.body.regions.map((r) => el('tr', null, cell(r.region), cell(r.forecaster), num(fmt(r.proxies)),
      num(fmt(r.requests)), cell(r.period_start_ms ? clock(r.period_start_ms).slice(0, 5) : '–')));
    $('regions-body').replaceChildren(el('h3', { style: 'margin-top:8px' }, 'Regions (global view)'),
      table(['region', 'forecaster', { label: 'proxies', num: true }, { label: 'requests', num: true }, 'minute'], rows, { id: 'regions-table' }));
  } else {
    $('regions-body').replaceChildren();
  }
  $('mesh-summary').textContent = summary.join(' · ');
}

// ---------------------------------------------------------------------------------------------
// events

function scopeText(scope) {
  switch (scope.kind) {
    case 'all': return 'all';
    case 'region': return 'region ' + scope.region;
    case 'profile': return 'profile ' + scope.profile;
    case 'region_profile': return scope.region + ' / ' + scope.profile;
    default: return scope.kind;
  }
}

function effectText(effect) {
  return effect.kind === 'multiplier' ? '× ' + effect.factor : 'learn from tag';
}

function renderEvents(answer, plan) {
  const body = $('events-body');
  const form = $('event-form');
  if (!answer.ok) {
    form.hidden = true;
    body.replaceChildren(absent(answer.absent ? 'No forecaster on this node: scheduled events are kept by the region\'s forecaster.' : 'Events could not be read: ' + answer.message));
    return;
  }
  const applied = new Map(((plan && plan.events) || []).map((e) => [e.id, e]));
  const nowS = state.nowSeconds;
  const rows = answer.body.events.map((e) => {
    const seen = applied.get(e.id);
    const when = seen ? (seen.active ? 'running' : 'coming') : (nowS !== null && e.end <= nowS ? 'ended' : 'coming');
    const multiplier = seen ? '× ' + fmt(seen.multiplier, 2) + (seen.learned !== null && seen.learned !== undefined ? ' (learned)' : '') : '–';
    return el('tr', { 'data-event': e.id },
      cell(e.id), cell(e.tag), cell(nodeTime(e.start * 1000, false)), cell(nodeTime(e.end * 1000, false)), cell(scopeText(e.scope)),
      cell(effectText(e.effect)), cell(when, when === 'running' ? 'ok' : when === 'ended' ? 'muted' : null), cell(multiplier), cell('v' + e.version),
      el('td', null, el('button', { type: 'button', class: 'link', title: 'delete ' + e.id, onclick: () => deleteEvent(e.id) }, 'delete')));
  });
  body.replaceChildren(el('div', { class: 'scroll' }, table(['id', 'tag', 'start', 'end', 'scope', 'effect', 'state', 'applies', 'version', ''],
    rows.length ? rows : [el('tr', null, el('td', { colspan: 10, class: 'muted' }, 'no scheduled events'))], { id: 'events-table' })));
  form.hidden = false;
  if (!state.eventFormReady && nowS !== null) {
    state.eventFormReady = true;
    form.elements.start.value = new Date((Math.floor(nowS / 60) + 10) * 60000).toISOString().slice(0, 16);
  }
}

function eventFormChanged() {
  const form = $('event-form');
  const scope = form.elements.scope.value;
  form.querySelector('.scope-region').classList.toggle('hidden', scope !== 'region' && scope !== 'region_profile');
  form.querySelector('.scope-profile').classList.toggle('hidden', scope !== 'profile' && scope !== 'region_profile');
  form.querySelector('.effect-factor').classList.toggle('hidden', form.elements.effect.value !== 'multiplier');
}

function eventFromForm(form) {
  const f = form.elements;
  const start = Date.parse(f.start.value + 'Z');
  const startS = Number.isFinite(start) ? Math.round(start / 1000) : null;
  const minutes = Number(f.minutes.value);
  const event = {
    tag: f.tag.value.trim(),
    start: startS,
    end: startS === null || !Number.isFinite(minutes) ? null : startS + Math.round(minutes * 60),
  };
  if (f.id.value.trim()) event.id = f.id.value.trim();
  const scope = { kind: f.scope.value };
  if (scope.kind === 'region' || scope.kind === 'region_profile') scope.region = f.region.value.trim();
  if (scope.kind === 'profile' || scope.kind === 'region_profile') scope.profile = f.profile.value.trim();
  event.scope = scope;
  event.effect = f.effect.value === 'multiplier' ? { kind: 'multiplier', factor: f.factor.value === '' ? null : Number(f.factor.value) } : { kind: 'learn_from_tag' };
  return event;
}

async function submitEvent(event) {
  event.preventDefault();
  const form = $('event-form');
  const message = $('event-form-message');
  message.className = 'muted';
  message.textContent = 'sending…';
  try {
    const answer = await api(ENDPOINTS.events, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(eventFromForm(form)) });
    if (answer.ok) {
      message.className = 'ok';
      message.textContent = 'Added event ' + answer.body.id + ' (' + answer.body.tag + ').';
      form.elements.tag.value = '';
      form.elements.id.value = '';
      refreshSoon(0);
    } else {
      message.className = 'bad';
      message.textContent = 'Not added (' + answer.status + '): ' + answer.message;
    }
  } catch (e) {
    if (e instanceof AuthNeeded) { askForToken(e.message); message.textContent = ''; return; }
    message.className = 'bad';
    message.textContent = 'Not added: ' + e.message;
  }
}

async function deleteEvent(id) {
  if (!window.confirm('Delete event ' + id + '?')) return;
  try {
    const answer = await api(ENDPOINTS.events + '/' + encodeURIComponent(id), { method: 'DELETE' });
    const message = $('event-form-message');
    message.className = answer.ok ? 'ok' : 'bad';
    message.textContent = answer.ok ? 'Deleted event ' + id + '.' : 'Not deleted (' + answer.status + '): ' + answer.message;
    refreshSoon(0);
  } catch (e) {
    if (e instanceof AuthNeeded) askForToken(e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// backends as the proxy routes them

function renderBackends(answer, plan) {
  const body = $('backends-body');
  if (!answer.ok) {
    $('backends-summary').textContent = '';
    body.replaceChildren(absent(answer.absent ? 'No proxy on this node.' : 'Fleets could not be read: ' + answer.message));
    return;
  }
  const rows = [];
  let total = 0;
  for (const f of answer.body.fleets) {
    for (const b of f.backends) {
      total += 1;
      const health = b.ejected ? 'ejected' : (b.healthy ? 'healthy' : 'unhealthy');
      rows.push(el('tr', { 'data-backend': b.address },
        cell(f.name), cell(b.address), cell(b.state, b.state === 'ready' ? 'ok' : b.state === 'warming' ? 'warn' : 'muted'),
        cell(health, health === 'healthy' ? 'ok' : 'bad'), num(fmt(b.in_flight)), num(fmt(b.requests)), num(fmt(b.failures), b.failures ? 'bad' : null)));
    }
  }
  $('backends-summary').textContent = total + ' backends' + (plan ? ' · the forecaster\'s view of the same instances is under Region' : '');
  body.replaceChildren(el('div', { class: 'scroll' }, table(['fleet', 'backend', 'state', 'health', { label: 'in flight', num: true },
    { label: 'requests', num: true }, { label: 'failures', num: true }],
  rows.length ? rows : [el('tr', null, el('td', { colspan: 7, class: 'muted' }, 'no backends'))], { id: 'backends-table' })));
}

// ---------------------------------------------------------------------------------------------
// start

function redrawCharts() {
  for (const svg of document.querySelectorAll('svg.chart')) if (svg.chartModel) drawFleetChart(svg, svg.chartModel);
}

function start() {
  takeTokenFromUrl();
  $('token-form').addEventListener('submit', tokenGiven);
  $('forget-token').addEventListener('click', () => { store.remove(TOKEN_KEY); $('forget-token').hidden = true; document.body.dataset.auth = ''; refreshSoon(0); });
  const range = $('range');
  range.value = store.get(RANGE_KEY) || '180';
  range.addEventListener('change', () => { store.set(RANGE_KEY, range.value); refreshSoon(0); });
  const form = $('event-form');
  form.setAttribute('novalidate', '');
  form.addEventListener('change', eventFormChanged);
  form.addEventListener('submit', submitEvent);
  eventFormChanged();
  let resizeTimer = null;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(redrawCharts, 150); });
  refreshSoon(0);
}

start();
