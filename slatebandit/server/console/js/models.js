// Models: the version timeline with every release verdict and its figures (guard, canary,
// watch, manual), the canaries, and, for admin keys, promote and rollback with a confirmation.

import { get, post } from "./api.js";
import { confirming, fmt, h, replace, table, when } from "./dom.js";

function figures(details) {
  if (!details || typeof details !== "object") return "";
  const shown = Object.entries(details)
    .filter(([, v]) => v === null || typeof v !== "object")
    .slice(0, 8)
    .map(([k, v]) => `${k}: ${typeof v === "number" ? fmt(v, 4) : v}`);
  return h("span", { class: "figures" }, shown.join(" · "));
}

export function render(main, access) {
  const body = h("div", {});
  // No timed refresh: it would wipe a confirmation half made. The button re-reads.
  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Models"),
    h("button", { id: "refresh", onclick: () => load() }, "Refresh")), body);

  async function load() {
    let models;
    try {
      models = await get("/v1/models");
    } catch (err) {
      replace(body, h("p", { class: "error" }, err.message));
      return;
    }
    const admin = access.can("admin");
    const act = async (path) => { await post(path); await load(); };
    const summary = h("div", { class: "cards" },
      h("div", { class: "card", "data-figure": "champion" }, h("div", { class: "label" }, "Champion"), h("div", { class: "value" }, models.champion ?? "none")),
      h("div", { class: "card", "data-figure": "serving" }, h("div", { class: "label" }, "Serving (this worker)"), h("div", { class: "value" }, models.serving)),
      h("div", { class: "card", "data-figure": "canary" }, h("div", { class: "label" }, "Canary"), h("div", { class: "value" }, models.canary ? `version ${models.canary.version}` : "none")),
      h("div", { class: "card" }, h("div", { class: "label" }, "Late rewards"), h("div", { class: "value" }, fmt(models.late_rewards))));
    const rollback = admin
      ? h("p", {}, confirming("Roll back", "Serve the previous champion again?", () => act("/v1/models/rollback")))
      : null;

    const verdicts = table([
      ["When", (v) => when(v.created_at)],
      ["Version", (v) => v.version],
      ["Stage", (v) => v.stage],
      ["Verdict", (v) => h("span", { class: `verdict ${v.outcome}` }, v.outcome || (v.promoted ? "promote" : "reject"))],
      ["Champion then", (v) => v.champion ?? "–"],
      ["Reason", (v) => v.reason],
      ["Figures", (v) => figures(v.details)],
    ], models.gate, { id: "verdicts" });

    const canaries = table([
      ["Canary", (c) => c.id],
      ["Version", (c) => c.version],
      ["Against", (c) => c.champion],
      ["Share", (c) => fmt(c.share, 2)],
      ["Started", (c) => when(c.started_at)],
      ["Status", (c) => c.status],
      ["Watch", (c) => c.watch ?? "–"],
      ["Figures", (c) => figures(c.stats)],
    ], models.canaries, { id: "canaries" });

    const versions = table([
      ["Version", (v) => h("span", {}, v.version, v.version === models.champion ? h("span", { class: "badge" }, "champion") : null)],
      ["Parent", (v) => v.parent ?? "–"],
      ["Examples", (v) => fmt(v.examples)],
      ["Learned through", (v) => fmt(v.learned_through)],
      ["Created", (v) => when(v.created_at)],
      ...(admin ? [["", (v) => (v.version === models.champion ? "" : confirming("Promote", `Make version ${v.version} the champion?`, () => act(`/v1/models/${v.version}/promote`)))]] : []),
    ], [...models.versions].reverse(), { id: "versions" });

    replace(body, summary, rollback,
      h("h3", {}, "Release verdicts, newest first"), models.gate.length ? verdicts : h("p", { class: "muted" }, "No verdict yet: the first checkpoint has not been judged."),
      h("h3", {}, "Canaries"), models.canaries.length ? canaries : h("p", { class: "muted" }, "No canary yet."),
      h("h3", {}, "Versions"), models.versions.length ? versions : h("p", { class: "muted" }, "No checkpoint yet."));
  }

  load();
}
