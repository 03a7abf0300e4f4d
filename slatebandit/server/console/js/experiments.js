// Experiments: each one's arms and shares, and its report with the intervals drawn. Admin keys
// create one, change its shares, or stop it (with a confirmation).

import { api, get } from "./api.js";
import { confirming, fmt, h, percent, replace, table, when } from "./dom.js";
import { intervalPlot } from "./charts.js";

// "control=popular:0.5" per line, as the CLI's --arm takes them.
export function parseArms(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const [name, rest = ""] = line.split(/=(.*)/s);
    const cut = rest.lastIndexOf(":");
    return { name: name.trim(), policy: rest.slice(0, cut).trim(), share: Number(rest.slice(cut + 1)) };
  });
}

export function render(main, access) {
  const list = h("div", { id: "experiment-list" });
  const detail = h("div", { id: "experiment" });
  const admin = access.can("admin");
  const form = admin ? editor() : null;
  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Experiments")), list, form, detail);

  function editor(existing) {
    const id = existing ? "edit" : "new";
    const name = h("input", { id: `${id}-name`, placeholder: "name", value: existing ? existing.name : "", pattern: "[A-Za-z0-9._\\-]{1,64}" });
    const arms = h("textarea", { id: `${id}-arms`, rows: 3, placeholder: "control=vw:0.5\ntreatment=popular:0.5" },
      existing ? existing.arms.map((a) => `${a.name}=${a.policy}:${a.share}`).join("\n") : "");
    const message = h("p", { class: "message" });
    return h("form", {
      class: "panel", id: `${id}-experiment`,
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const answer = await api("PUT", `/v1/experiments/${encodeURIComponent(name.value.trim())}`, { arms: parseArms(arms.value) });
          replace(message, `Saved ${answer.name}.`);
          await load(answer.name);
        } catch (err) {
          replace(message, h("span", { class: "error" }, err.field ? `${err.field}: ${err.message}` : err.message));
        }
      },
    }, h("h3", {}, existing ? `Change ${existing.name}'s arms and shares` : "Create an experiment"),
      h("label", { for: `${id}-name` }, "Name"), name,
      h("label", { for: `${id}-arms` }, "Arms, one per line: NAME=POLICY:SHARE (the first is the control)"), arms,
      h("button", { type: "submit" }, "Save"), message);
  }

  async function open(name) {
    let experiment, report;
    try {
      [experiment, report] = await Promise.all([get(`/v1/experiments/${encodeURIComponent(name)}`), get(`/v1/experiments/${encodeURIComponent(name)}/report`)]);
    } catch (err) {
      replace(detail, h("p", { class: "error" }, err.message));
      return;
    }
    const rows = report.arms;
    const stop = admin && experiment.status === "running"
      ? confirming("Stop", `Stop assigning shoppers to ${name}?`, async () => {
          await api("DELETE", `/v1/experiments/${encodeURIComponent(name)}`);
          await load(name);
        })
      : null;
    const differences = rows.filter((r) => r.vs_control).map((r) => ({
      label: `${r.arm} − ${report.control}`,
      value: r.vs_control.difference, low: r.vs_control.anytime_low, high: r.vs_control.anytime_high,
    }));
    replace(detail, h("div", { class: "panel" },
      h("h3", {}, `${name} (${experiment.status})`, " ", stop),
      h("p", { class: "muted" }, `control: ${report.control} · created ${when(experiment.created_at)}`),
      table([
        ["Arm", (r) => r.arm], ["Policy", (r) => r.policy], ["Share", (r) => fmt(r.share, 2)],
        ["Slates", (r) => fmt(r.slates)], ["Impressions", (r) => fmt(r.impressions)], ["Clicks", (r) => fmt(r.clicks)],
        ["CTR [95%]", (r) => `${percent(r.ctr)} [${percent(r.ctr_low)}, ${percent(r.ctr_high)}]`],
        ["vs control, anytime 95%", (r) => (r.vs_control ? `${percent(r.vs_control.difference)} [${percent(r.vs_control.anytime_low)}, ${percent(r.vs_control.anytime_high)}]${r.vs_control.anytime_significant ? " significant" : ""}` : "control")],
      ], rows, { id: "report" }),
      intervalPlot(rows.map((r) => ({ label: r.arm, value: r.ctr, low: r.ctr_low, high: r.ctr_high })), { title: "CTR by arm, 95% intervals", format: (v) => percent(v, 1) }),
      differences.length ? intervalPlot(differences, { title: "Difference to the control, anytime-valid 95% intervals", format: (v) => percent(v, 1), reference: 0 }) : null,
      admin ? editor(experiment) : null));
  }

  async function load(selected) {
    let answer;
    try {
      answer = await get("/v1/experiments");
    } catch (err) {
      replace(list, h("p", { class: "error" }, err.message));
      return;
    }
    const found = answer.experiments;
    replace(list, found.length
      ? table([
          ["Experiment", (e) => h("a", { href: "#/experiments", onclick: (event) => { event.preventDefault(); open(e.name); } }, e.name)],
          ["Status", (e) => e.status],
          ["Arms", (e) => e.arms.map((a) => `${a.name}=${a.policy}:${a.share}`).join(", ")],
          ["Control", (e) => e.control],
        ], found, { id: "experiments" })
      : h("p", { class: "muted" }, "No experiment yet."));
    const first = selected || (found.find((e) => e.status === "running") || found[0] || {}).name;
    if (first) await open(first);
  }

  load();
}
