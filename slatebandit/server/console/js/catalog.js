// Catalog: search items by id or title, and see one item with its nearest neighbours.

import { get } from "./api.js";
import { fmt, h, replace, table } from "./dom.js";
import { bar } from "./charts.js";

export function render(main) {
  const query = h("input", { id: "search", type: "search", placeholder: "id or title" });
  const results = h("div", { id: "results" });
  const detail = h("div", { id: "item" });

  async function open(itemId) {
    let answer;
    try {
      answer = await get(`/v1/items/${encodeURIComponent(itemId)}?neighbours=10`);
    } catch (err) {
      replace(detail, h("p", { class: "error" }, err.message));
      return;
    }
    const item = answer.item;
    const attributes = Object.entries(item.attributes || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
    replace(detail, h("div", { class: "panel" },
      h("h3", {}, item.title || item.item_id),
      h("p", {}, h("code", {}, item.item_id), ` · ${item.category} · ${item.brand}`, item.price !== null ? ` · ${fmt(item.price, 2)}` : "",
        item.available ? "" : " · unavailable"),
      attributes ? h("p", { class: "muted" }, attributes) : null,
      h("h4", {}, "Nearest neighbours"),
      table([
        ["Item", (n) => h("a", { href: "#/catalog", onclick: (event) => { event.preventDefault(); open(n.item_id); } }, n.item_id)],
        ["Title", (n) => n.title],
        ["Category", (n) => n.category],
        ["Similarity", (n) => h("span", { class: "scored" }, bar(n.similarity, 1), " ", fmt(n.similarity, 3))],
      ], answer.neighbours, { id: "neighbours" })));
  }

  async function search(event) {
    if (event) event.preventDefault();
    let answer;
    try {
      answer = await get(`/v1/items?q=${encodeURIComponent(query.value.trim())}&limit=50`);
    } catch (err) {
      replace(results, h("p", { class: "error" }, err.message));
      return;
    }
    replace(results, answer.items.length
      ? table([
          ["Item", (i) => h("a", { href: "#/catalog", onclick: (e) => { e.preventDefault(); open(i.item_id); } }, i.item_id)],
          ["Title", (i) => i.title],
          ["Category", (i) => i.category],
          ["Brand", (i) => i.brand],
          ["Price", (i) => fmt(i.price, 2)],
          ["Impressions (this worker)", (i) => fmt(i.impressions)],
        ], answer.items, { id: "items" })
      : h("p", { class: "muted" }, "No item matches."));
  }

  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Catalog")),
    h("form", { class: "panel", id: "search-form", onsubmit: search }, h("label", { for: "search" }, "Search"), query, h("button", { type: "submit" }, "Search")),
    results, detail);
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("item");
  if (wanted) open(wanted);
  search();
}
