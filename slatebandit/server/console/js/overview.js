// Overview: traffic, click-through and latency over time, what the slates led to, and the
// state of the parts. Traffic and CTR come from the log (GET /v1/stats), so they are every
// worker's; latency comes from the request histograms, differenced between two polls. CTR,
// conversion rate and revenue per slate with their intervals, overall and by placement, come
// from GET /v1/metrics/summary over the same window.

import { get } from "./api.js";
import { bytes, card, fmt, h, percent, ranged, replace, table } from "./dom.js";
import { lineChart } from "./charts.js";

const POLL_MS = 5000;
const WINDOWS = { "15 minutes": [15, 10], "1 hour": [60, 60], "6 hours": [360, 300], "1 day": [1440, 900] };

// The q-quantile of a histogram given as cumulative [[upper bound, count], ...] and its total
// count, interpolated inside the bucket that holds it (as Prometheus' histogram_quantile).
export function quantile(q, buckets, count) {
  if (!count) return null;
  const rank = q * count;
  let lower = 0, below = 0;
  for (const [upper, cumulative] of buckets) {
    if (cumulative >= rank) {
      const inside = cumulative - below;
      return inside > 0 ? lower + ((upper - lower) * (rank - below)) / inside : upper;
    }
    lower = upper;
    below = cumulative;
  }
  return lower; // in the +Inf bucket: the highest finite bound is all that is known
}

function difference(now, before) {
  if (!before) return now;
  return {
    count: now.count - before.count,
    buckets: now.buckets.map(([le, n], i) => [le, n - (before.buckets[i] ? before.buckets[i][1] : 0)]),
  };
}

const arm = (b) => (b.arm ? `${b.policy} · ${b.arm}` : b.policy);
const money = (x) => (x === null || x === undefined ? "–" : x.toFixed(2)); // always two decimals
const within = (figure, format) => (figure.low === null ? "no interval yet" : `95%: ${format(figure.low)} to ${format(figure.high)}`);

// The summary's figures: three cards for the whole window, then one row per placement.
export function outcomes(summary) {
  const all = summary.overall;
  return h("div", { class: "panel" },
    h("h3", {}, "What the slates led to"),
    h("div", { class: "cards" },
      card("CTR (clicks per item shown)", percent(all.ctr.value), { "data-figure": "summary-ctr" }, within(all.ctr, percent)),
      card("Conversion rate (purchases per item shown)", percent(all.conversion_rate.value), { "data-figure": "summary-conversion" }, within(all.conversion_rate, percent)),
      card("Revenue per slate", money(all.revenue_per_slate.value), { "data-figure": "summary-revenue" }, within(all.revenue_per_slate, money)),
    ),
    table([
      ["Placement", (p) => p.placement],
      ["Share of slates", (p) => percent(p.share, 1)],
      ["Slates", (p) => fmt(p.slates)],
      ["CTR [95%]", (p) => ranged(p.ctr, percent)],
      ["Conversion rate [95%]", (p) => ranged(p.conversion_rate, percent)],
      ["Revenue per slate [95%]", (p) => ranged(p.revenue_per_slate, money)],
    ], summary.placements, { id: "placement-table" }),
    h("p", { class: "muted" }, `${fmt(all.slates)} slates in the last ${summary.minutes} minutes; `
      + "a click or a purchase is a reward of that type, revenue their money value; intervals take the slate as the unit."));
}

export function render(main, access) {
  const select = h("select", { id: "window" },
    Object.keys(WINDOWS).map((name) => h("option", { value: name, selected: name === "1 hour" }, name)));
  const cards = h("div", { class: "cards", id: "cards" });
  const charts = h("div", { class: "charts" });
  const arms = h("div", { id: "arms" });
  const summary = h("div", { id: "summary" });
  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Overview"), h("label", {}, "Window ", select)),
    cards, summary, arms, charts);
  let previous = null;
  const latencies = []; // [time, p50, p99] per poll interval, this session

  let asked = 0; // replies may come back out of order (a window change during a poll)

  // Read beside the traffic and shown apart: either may fail without the other.
  async function pollSummary(minutes, ticket) {
    let answer;
    try {
      answer = await get(`/v1/metrics/summary?minutes=${minutes}`);
    } catch (err) {
      if (ticket === asked) replace(summary, h("p", { class: "error" }, err.message));
      return;
    }
    if (ticket === asked) replace(summary, outcomes(answer));
  }

  async function poll() {
    const [minutes, step] = WINDOWS[select.value];
    const ticket = ++asked;
    pollSummary(minutes, ticket);
    let stats;
    try {
      stats = await get(`/v1/stats?minutes=${minutes}&step=${step}`);
    } catch (err) {
      if (ticket === asked) replace(cards, h("p", { class: "error" }, err.message));
      return;
    }
    if (ticket !== asked) return;
    const slates = stats.latency["/v1/slates"] || { count: 0, buckets: [] };
    // The latest poll interval's latency when it served slates, else everything since start.
    const interval = difference(slates, previous);
    const fresh = previous !== null && interval.count > 0;
    const shown = fresh ? interval : slates;
    const p50 = quantile(0.5, shown.buckets, shown.count);
    const p99 = quantile(0.99, shown.buckets, shown.count);
    if (fresh) latencies.push([stats.now, p50, p99]);
    previous = slates;

    const traffic = stats.traffic;
    // A rate over the newest bucket with data, while that is the current or the previous
    // bucket; older than that, nothing is coming: 0.
    const current = Math.floor(stats.now / stats.step) * stats.step;
    const recent = (start) => start !== null && start >= current - stats.step;
    const over = (start) => Math.max(1, Math.min(stats.now, start + stats.step) - start);
    const newest = traffic.length ? Math.max(...traffic.map((b) => b.start)) : null;
    const elapsed = newest === null ? 1 : over(newest);
    const latestSlates = recent(newest) ? traffic.filter((b) => b.start === newest).reduce((n, b) => n + b.slates, 0) : 0;
    const rewards = stats.rewards;
    const lastRewards = rewards.length ? rewards[rewards.length - 1] : null;
    const rewardRate = lastRewards && recent(lastRewards.start) ? lastRewards.rewards / over(lastRewards.start) : 0;
    const total = traffic.reduce((t, b) => ({ slates: t.slates + b.slates, shown: t.shown + b.shown, clicks: t.clicks + b.clicks }), { slates: 0, shown: 0, clicks: 0 });
    const ms = (s) => (s === null ? "–" : (1000 * s).toFixed(1) + " ms");
    const spool = stats.spool;
    replace(cards,
      card("Slates/s (latest bucket)", fmt(latestSlates / elapsed, 1), { "data-figure": "slates-rate" }),
      card("Rewards/s (latest bucket)", fmt(rewardRate, 1), { "data-figure": "rewards-rate" }),
      card("Slates in window", fmt(total.slates), { "data-figure": "slates" }),
      card("Clicks per item shown", percent(total.shown ? total.clicks / total.shown : null), { "data-figure": "ctr" }),
      card(`Slate p50 (${fresh ? "last 5 s" : "since start"})`, ms(p50), { "data-figure": "p50" }),
      card(`Slate p99 (${fresh ? "last 5 s" : "since start"})`, ms(p99), { "data-figure": "p99" }),
      card("Learner lag", stats.learner_lag_seconds === null ? "–" : fmt(stats.learner_lag_seconds, 1) + " s", { "data-figure": "lag" }),
      card("Database", stats.database, { "data-figure": "database", class: stats.database === "ok" ? "card ok" : "card bad" }),
      card("Spool", `${spool.segments} segments, ${bytes(spool.bytes)}`, { "data-figure": "spool", class: spool.segments ? "card bad" : "card" }),
      card("Catalog items", fmt(stats.items), { "data-figure": "items" }),
      card("Champion / serving", `${stats.models.champion ?? "–"} / ${stats.models.serving}`, { "data-figure": "models" }),
      card("Canary", stats.models.canary ?? "none", { "data-figure": "canary" }),
    );

    const byArm = new Map();
    for (const b of traffic) {
      const name = arm(b);
      const t = byArm.get(name) || { name, slates: 0, shown: 0, clicks: 0 };
      t.slates += b.slates; t.shown += b.shown; t.clicks += b.clicks;
      byArm.set(name, t);
    }
    replace(arms, table([
      ["Policy · arm", (r) => r.name],
      ["Slates", (r) => fmt(r.slates)],
      ["Items shown", (r) => fmt(r.shown)],
      ["Clicks", (r) => fmt(r.clicks)],
      ["Clicks per item", (r) => percent(r.shown ? r.clicks / r.shown : null)],
    ], [...byArm.values()], { id: "arm-table" }));

    const series = (value) => [...byArm.keys()].map((name) => ({
      name,
      points: traffic.filter((b) => arm(b) === name).map((b) => [b.start, value(b)]),
    }));
    // The newest bucket is still filling: its rate is over the seconds it has had.
    const perSecond = (b) => b.slates / (b.start === newest ? elapsed : stats.step);
    replace(charts,
      lineChart(series(perSecond), { title: "Slates/s by policy and arm", yFormat: (v) => fmt(v, 1) }),
      lineChart(series((b) => (b.shown ? b.clicks / b.shown : 0)), { title: "Clicks per item shown, by policy and arm", yFormat: (v) => percent(v, 1) }),
      lineChart([
        { name: "p50", points: latencies.map(([t, a]) => [t, 1000 * a]) },
        { name: "p99", points: latencies.map(([t, , b]) => [t, 1000 * b]) },
      ], { title: "Slate latency this session (ms, per 5 s)", yFormat: (v) => fmt(v, 1) }));
  }

  select.addEventListener("change", poll);
  poll();
  const timer = setInterval(poll, POLL_MS);
  return () => clearInterval(timer);
}
