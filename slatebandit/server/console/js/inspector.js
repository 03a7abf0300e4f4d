// Slate inspector: the slate a shopper would get now, from a dry run (never logged, no
// impression, nothing learned), with each pick's propensity, kind, source, reason and
// explanation, and every candidate the policy scored.

import { post } from "./api.js";
import { fmt, h, replace, table } from "./dom.js";
import { bar } from "./charts.js";

// "device=mobile" per line; numbers and true/false keep their type.
export function parseContext(text) {
  const context = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const [name, value = ""] = line.split(/=(.*)/s);
    const raw = value.trim();
    const number = /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(raw); // decimal only: not "0x10" or "Infinity"
    context[name.trim()] = raw === "true" ? true : raw === "false" ? false : number ? Number(raw) : raw;
  }
  return context;
}

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export function render(main) {
  const user = h("input", { id: "user", value: "alice", required: true });
  const k = h("input", { id: "k", type: "number", min: 1, max: 100, value: 5 });
  const context = h("textarea", { id: "context", rows: 3 }, "device=mobile\npage=home");
  const session = h("input", { id: "session", placeholder: "item ids, newest first" });
  const categories = h("input", { id: "categories", placeholder: "category prefixes, comma separated" });
  const brands = h("input", { id: "brands", placeholder: "brands, comma separated" });
  const priceMin = h("input", { id: "price-min", type: "number", step: "any" });
  const priceMax = h("input", { id: "price-max", type: "number", step: "any" });
  const output = h("div", { id: "inspection" });

  const form = h("form", {
    class: "panel", id: "inspector-form",
    onsubmit: async (event) => {
      event.preventDefault();
      const body = { user_id: user.value.trim(), k: Number(k.value), context: parseContext(context.value), session_items: list(session.value) };
      const filters = {};
      if (list(categories.value).length) filters.category = list(categories.value);
      if (list(brands.value).length) filters.brand = list(brands.value);
      if (priceMin.value !== "") filters.price_min = Number(priceMin.value);
      if (priceMax.value !== "") filters.price_max = Number(priceMax.value);
      if (Object.keys(filters).length) body.filters = filters;
      let slate;
      try {
        slate = await post("/v1/slates?dry_run=true&explain=true", body);
      } catch (err) {
        replace(output, h("p", { class: "error" }, err.field ? `${err.field}: ${err.message}` : err.message));
        return;
      }
      const chosen = new Set(slate.items.map((i) => i.item_id));
      const scores = slate.candidates.map((c) => c.score);
      const floor = Math.min(0, ...scores), top = Math.max(0, ...scores);
      replace(output,
        h("p", { class: "muted" }, `policy ${slate.policy} · model version ${slate.model_version}`,
          slate.experiment ? ` · experiment ${slate.experiment}` : "", slate.arm ? ` · arm ${slate.arm}` : "",
          " · dry run: not logged, no impression counted, nothing learned"),
        h("h3", {}, "The slate"),
        table([
          ["Slot", (i) => i.slot],
          ["Item", (i) => h("a", { href: `#/catalog?item=${encodeURIComponent(i.item_id)}` }, i.item_id)],
          ["Propensity", (i) => fmt(i.propensity, 4)],
          ["Kind", (i) => i.kind],
          ["Source", (i) => i.source],
          ["Score", (i) => fmt(i.score, 4)],
          ["Reason", (i) => i.reason],
          ["Top features", (i) => ((i.explanation && i.explanation.features) || []).slice(0, 4).map((f) => `${f.feature} ${f.contribution >= 0 ? "+" : ""}${fmt(f.contribution, 3)}`).join(", ")],
        ], slate.items, { id: "slate" }),
        h("h3", {}, `Candidates (${slate.candidates.length}), best score first`),
        table([
          ["#", (c) => slate.candidates.indexOf(c) + 1],
          ["Item", (c) => c.item_id],
          ["Score", (c) => h("span", { class: "scored" }, bar(c.score - floor, top - floor), " ", fmt(c.score, 4))],
          ["Source", (c) => c.source],
          ["In the slate", (c) => (chosen.has(c.item_id) ? "yes" : "")],
        ], slate.candidates, { id: "candidates" }));
    },
  },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "user" }, "User id"), user),
      h("div", {}, h("label", { for: "k" }, "Slots (k)"), k)),
    h("label", { for: "context" }, "Context, one NAME=VALUE per line"), context,
    h("label", { for: "session" }, "Session items"), session,
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "categories" }, "Categories"), categories),
      h("div", {}, h("label", { for: "brands" }, "Brands"), brands),
      h("div", {}, h("label", { for: "price-min" }, "Price from"), priceMin),
      h("div", {}, h("label", { for: "price-max" }, "to"), priceMax)),
    h("button", { type: "submit" }, "Show the slate"));
  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Slate inspector")), form, output);
}
