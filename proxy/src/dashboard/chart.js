// The fleet chart: inline SVG of demand, the forecast band at the fleet's lead time (continued by
// the plan's outlook for the next hour), ready capacity and the planned capacity ahead, a "now"
// marker and time/requests axes. Times are node time (UTC), values requests per minute.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART_HEIGHT = 290;
const CHART_PAD = { left: 58, right: 14, top: 18, bottom: 26 };
const OUTLOOK_SECONDS = 3600;
// Candidate spacings of the time axis, seconds.
const TIME_STEPS = [300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

function svgNode(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / magnitude;
  const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return nice * magnitude;
}

function compactNumber(value) {
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toFixed(abs >= 1e7 ? 0 : 1).replace(/\.0$/, '') + 'M';
  if (abs >= 1e4) return (value / 1e3).toFixed(0) + 'k';
  if (abs >= 1e3) return (value / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
  if (abs >= 10 || value === 0) return value.toFixed(0);
  return value.toFixed(1);
}

function clockLabel(unixSeconds, withDate) {
  const iso = new Date(unixSeconds * 1000).toISOString();
  return withDate ? iso.slice(5, 10) + ' ' + iso.slice(11, 16) : iso.slice(11, 16);
}

// The chart's series from the fleet's recorded minutes and outlook: each point at the middle of
// its minute (capacity as a step over the whole minute).
function chartSeries(minutes, outlook, nowSeconds, rpsPerInstance) {
  const series = { demand: [], band: [], capacity: [], plan: [], byMinute: new Map() };
  let lastRps = rpsPerInstance;
  for (const m of minutes) {
    const row = { minute: m.minute, demand: m.demand, ready: m.ready, warming: m.warming, draining: m.draining, planned: m.planned };
    if (m.demand !== null && m.demand !== undefined) series.demand.push({ t: m.minute + 30, v: m.demand });
    if (m.forecast) {
      series.band.push({ t: m.minute + 30, lo: m.forecast.lower, hi: m.forecast.upper, p: m.forecast.point, recorded: true });
      row.forecast = m.forecast;
    }
    if (Number.isFinite(m.rps_per_instance)) {
      lastRps = m.rps_per_instance;
      const capacity = m.ready * m.rps_per_instance * 60;
      series.capacity.push({ t: m.minute, v: capacity });
      row.capacity = capacity;
    }
    series.byMinute.set(m.minute, row);
  }
  const lastPast = series.band.length ? series.band[series.band.length - 1].t : -Infinity;
  const outlookEnd = nowSeconds + OUTLOOK_SECONDS;
  for (const p of (outlook && outlook.points) || []) {
    if (p.minute > outlookEnd) break;
    if (p.minute + 30 <= lastPast || p.minute + 60 <= nowSeconds) continue;
    series.band.push({ t: p.minute + 30, lo: p.lower, hi: p.upper, p: p.point, recorded: false });
    if (Number.isFinite(lastRps)) series.plan.push({ t: p.minute, v: p.instances * lastRps * 60 });
    const row = series.byMinute.get(p.minute) || { minute: p.minute };
    row.outlook = p;
    if (Number.isFinite(lastRps)) row.planCapacity = p.instances * lastRps * 60;
    series.byMinute.set(p.minute, row);
  }
  return series;
}

// Splits points into runs of consecutive minutes.
function runs(points) {
  const out = [];
  let run = [];
  for (const point of points) {
    if (run.length && point.t - run[run.length - 1].t > 90) { out.push(run); run = []; }
    run.push(point);
  }
  if (run.length) out.push(run);
  return out;
}

function linePath(points, x, y, key) {
  return runs(points).map((run) => run.map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(p[key]).toFixed(1)).join(' ')).join(' ');
}

function bandPath(points, x, y) {
  return runs(points).map((run) => {
    const upper = run.map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(p.hi).toFixed(1));
    const lower = run.slice().reverse().map((p) => 'L' + x(p.t).toFixed(1) + ' ' + y(p.lo).toFixed(1));
    return upper.concat(lower).join(' ') + ' Z';
  }).join(' ');
}

function stepPath(points, x, y) {
  return runs(points).map((run) => run.map((p, i) => (i ? 'V' : 'M' + x(p.t).toFixed(1) + ' ') + y(p.v).toFixed(1) + ' H' + x(p.t + 60).toFixed(1)).join(' ')).join(' ');
}

// Draws one fleet's chart into `svg`. `model`: {key, minutes, outlook, nowSeconds, rangeSeconds,
// rpsPerInstance, lead, message}.
function drawFleetChart(svg, model) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = Math.max(420, Math.round(svg.parentNode.getBoundingClientRect().width) || 900);
  const height = CHART_HEIGHT;
  svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  const now = model.nowSeconds;
  const series = chartSeries(model.minutes, model.outlook, now, model.rpsPerInstance);
  // From the first recorded minute (but at least a quarter of an hour back) within the range.
  const first = Math.min.apply(null, [now - 900].concat(model.minutes.map((m) => m.minute)));
  const start = Math.max(now - model.rangeSeconds, first);
  const end = now + OUTLOOK_SECONDS;
  const values = [10];
  for (const p of series.demand) values.push(p.v);
  for (const p of series.band) values.push(p.hi);
  for (const p of series.capacity) values.push(p.v);
  for (const p of series.plan) values.push(p.v);
  const yStep = niceStep(Math.max.apply(null, values) * 1.05, 5);
  const yMax = Math.ceil(Math.max.apply(null, values) * 1.05 / yStep) * yStep;
  const plotW = width - CHART_PAD.left - CHART_PAD.right;
  const plotH = height - CHART_PAD.top - CHART_PAD.bottom;
  const x = (t) => CHART_PAD.left + (Math.min(Math.max(t, start), end) - start) / (end - start) * plotW;
  const y = (v) => CHART_PAD.top + plotH - Math.max(0, v) / yMax * plotH;
  const visible = (p) => p.t >= start && p.t <= end;

  svgNode('rect', { x: x(now), y: CHART_PAD.top, width: x(end) - x(now), height: plotH, fill: '#f7f8fa' }, svg);
  const axes = svgNode('g', { class: 'axes' }, svg);
  for (let v = 0; v <= yMax + 1e-9; v += yStep) {
    svgNode('line', { class: v ? 'grid' : 'axis', x1: CHART_PAD.left, x2: width - CHART_PAD.right, y1: y(v), y2: y(v) }, axes);
    const label = svgNode('text', { x: CHART_PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, axes);
    label.textContent = compactNumber(v);
  }
  const title = svgNode('text', { x: 4, y: 11 }, axes);
  title.textContent = 'requests/min  ·  times: node time (UTC)';
  const timeStep = TIME_STEPS.find((s) => (end - start) / s <= plotW / 80) || 86400;
  const withDate = end - start > 86400;
  for (let t = Math.ceil(start / timeStep) * timeStep; t <= end; t += timeStep) {
    svgNode('line', { class: 'grid', x1: x(t), x2: x(t), y1: CHART_PAD.top, y2: CHART_PAD.top + plotH }, axes);
    const label = svgNode('text', { x: x(t), y: height - 8, 'text-anchor': 'middle' }, axes);
    label.textContent = clockLabel(t, withDate);
  }

  const band = series.band.filter(visible);
  const demand = series.demand.filter(visible);
  const capacity = series.capacity.filter((p) => p.t + 60 >= start && p.t <= end);
  const plan = series.plan.filter((p) => p.t <= end);
  svgNode('path', {
    id: 'forecast-band-' + model.key, class: 'band', d: bandPath(band, x, y),
    'data-points': band.length, 'data-past-points': band.filter((p) => p.recorded).length,
    'data-outlook-points': band.filter((p) => !p.recorded).length, 'data-lead-minutes': model.lead,
  }, svg);
  svgNode('path', { id: 'forecast-point-' + model.key, class: 'forecast-point', d: linePath(band, x, y, 'p'), 'data-points': band.length }, svg);
  svgNode('path', { id: 'capacity-line-' + model.key, class: 'capacity', d: stepPath(capacity, x, y), 'data-points': capacity.length }, svg);
  svgNode('path', { id: 'capacity-plan-' + model.key, class: 'capacity-plan', d: stepPath(plan, x, y), 'data-points': plan.length }, svg);
  svgNode('path', { id: 'demand-line-' + model.key, class: 'demand', d: linePath(demand, x, y, 'v'), 'data-points': demand.length }, svg);
  svgNode('line', { id: 'now-' + model.key, class: 'now', x1: x(now), x2: x(now), y1: CHART_PAD.top - 4, y2: CHART_PAD.top + plotH, 'data-at': now }, svg);
  const nowLabel = svgNode('text', { class: 'now-label', x: x(now) + 4, y: CHART_PAD.top - 6 }, svg);
  nowLabel.textContent = 'now ' + clockLabel(now, false);
  if (model.message || !model.minutes.length) {
    const note = svgNode('text', { class: 'empty', x: CHART_PAD.left + plotW * 0.3, y: CHART_PAD.top + plotH / 2, 'text-anchor': 'middle' }, svg);
    note.textContent = model.message || 'no minutes recorded yet';
  }
  const cursor = svgNode('line', { class: 'cursor', y1: CHART_PAD.top, y2: CHART_PAD.top + plotH, visibility: 'hidden' }, svg);
  svg.chartState = { series, start, end, plotW, cursor, x };
}

// The tooltip of a chart under the pointer: the minute's demand, forecast and capacity.
function chartPointer(svg, event, tooltip) {
  const state = svg.chartState;
  if (!state) return;
  const box = svg.getBoundingClientRect();
  const px = event.clientX - box.left;
  const t = state.start + (px - CHART_PAD.left) / state.plotW * (state.end - state.start);
  const minute = Math.floor(t / 60) * 60;
  const row = state.series.byMinute.get(minute);
  if (!row || t < state.start || t > state.end) { chartLeave(svg, tooltip); return; }
  state.cursor.setAttribute('x1', state.x(minute + 30));
  state.cursor.setAttribute('x2', state.x(minute + 30));
  state.cursor.setAttribute('visibility', 'visible');
  const lines = [clockLabel(minute, true) + ' (node time)'];
  if (row.demand !== undefined) lines.push('demand ' + (row.demand === null ? 'absent' : Math.round(row.demand)));
  const f = row.forecast || row.outlook;
  if (f) lines.push('forecast ' + Math.round(f.point) + '  [' + Math.round(f.lower) + '–' + Math.round(f.upper) + ']' + (row.outlook ? ' (outlook)' : ''));
  if (row.capacity !== undefined) lines.push('ready capacity ' + Math.round(row.capacity) + ' (' + row.ready + ' ready, ' + row.warming + ' warming)');
  if (row.planCapacity !== undefined) lines.push('planned capacity ' + Math.round(row.planCapacity) + ' (' + row.outlook.instances + ' instances)');
  tooltip.textContent = '';
  for (const line of lines) { const div = document.createElement('div'); div.textContent = line; tooltip.appendChild(div); }
  tooltip.hidden = false;
  const left = event.pageX + 14 + 260 > window.innerWidth + window.scrollX ? event.pageX - 270 : event.pageX + 14;
  tooltip.style.left = left + 'px';
  tooltip.style.top = (event.pageY + 12) + 'px';
}

function chartLeave(svg, tooltip) {
  tooltip.hidden = true;
  if (svg.chartState) svg.chartState.cursor.setAttribute('visibility', 'hidden');
}
