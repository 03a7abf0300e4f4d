// Replay: start an off-policy evaluation over the log (POST /v1/evaluations), watch its
// progress, and read its report: each policy's value by estimator, with intervals drawn.

import { get, post } from "./api.js";
import { fmt, h, replace, table, when } from "./dom.js";
import { intervalPlot } from "./charts.js";

const ESTIMATORS = ["ips", "snips", "dm", "dr", "cascade-ips", "cascade-dr"];
const POLL_MS = 1000;

function report(result) {
  const parts = [
    h("p", { class: "muted" }, `${fmt(result.n_decisions)} decisions, ${fmt(result.n_slots)} slots · bootstrap ${result.bootstrap} · seed ${result.seed}`),
  ];
  for (const warning of result.warnings) parts.push(h("p", { class: "warning" }, warning));
  for (const policy of result.policies) {
    parts.push(h("h4", {}, policy.policy),
      table([
        ["Estimator", (e) => e.estimator],
        ["Value", (e) => fmt(e.value, 5)],
        ["95% interval", (e) => `[${fmt(e.ci_low, 5)}, ${fmt(e.ci_high, 5)}]`],
        ["ESS", (e) => fmt(e.ess, 1)],
        ["Max weight", (e) => fmt(e.max_weight, 2)],
      ], policy.estimates, { class: "estimates" }));
  }
  const rows = result.policies.flatMap((p) => p.estimates.map((e) => ({
    label: `${p.policy} ${e.estimator}`, value: e.value, low: e.ci_low, high: e.ci_high,
  })));
  parts.push(intervalPlot(rows, { title: "Estimated reward per slot, 95% intervals", format: (v) => fmt(v, 4) }));
  parts.push(h("p", { class: "muted" }, result.note));
  return h("div", { id: "replay-report" }, parts);
}

export function render(main) {
  const policies = h("input", { id: "policies", value: "random, popular", placeholder: "random, popular, vw@3" });
  const boxes = ESTIMATORS.map((name) => h("label", { class: "check" },
    h("input", { type: "checkbox", value: name, checked: ["ips", "snips", "dr"].includes(name) }), name));
  const since = h("input", { id: "since", placeholder: "7d, an ISO date or epoch (empty: all)" });
  const until = h("input", { id: "until", placeholder: "empty: now minus the reward wait" });
  const bootstrap = h("input", { id: "bootstrap", type: "number", min: 0, max: 10000, value: 200 });
  const status = h("div", { id: "replay-status" });
  const output = h("div", {});
  const history = h("div", { id: "replay-history" });
  let timer = null;
  let watching = 0; // a newer watch (another run opened, the page left) ends the older ones

  async function listed() {
    let answer;
    try {
      answer = await get("/v1/evaluations");
    } catch (err) {
      replace(history, h("p", { class: "error" }, err.message));
      return;
    }
    replace(history, h("h3", {}, "Recent evaluations"), answer.evaluations.length
      ? table([
          ["Started", (e) => when(e.created_at)],
          ["Policies", (e) => h("a", { href: "#/replay", onclick: (event) => { event.preventDefault(); follow(e.id); } }, e.request.policies.join(", "))],
          ["Estimators", (e) => (e.request.estimators || ["default"]).join(", ")],
          ["Status", (e) => e.status],
        ], answer.evaluations, { id: "evaluations" })
      : h("p", { class: "muted" }, "None yet."));
  }

  function follow(id) {
    clearTimeout(timer);
    replace(output);
    watching += 1;
    return watch(id, watching);
  }

  async function watch(id, generation) {
    let evaluation;
    try {
      evaluation = await get(`/v1/evaluations/${id}`);
    } catch (err) {
      if (generation === watching) replace(status, h("p", { class: "error" }, err.message));
      return;
    }
    if (generation !== watching) return;
    const progress = evaluation.progress || {};
    const share = progress.total ? progress.done / progress.total : 0;
    replace(status, h("p", {}, `Evaluation ${id}: ${evaluation.status}`, progress.phase ? ` · ${progress.phase} ${fmt(progress.done)} of ${fmt(progress.total)}` : ""),
      h("progress", { max: 1, value: evaluation.status === "done" ? 1 : share }));
    if (evaluation.status === "running") {
      timer = setTimeout(() => watch(id, generation), POLL_MS);
    } else if (evaluation.status === "done") {
      replace(output, report(evaluation.result));
      listed();
    } else {
      replace(output, h("p", { class: "error" }, evaluation.error || "the evaluation failed"));
      listed();
    }
  }

  const form = h("form", {
    class: "panel", id: "replay-form",
    onsubmit: async (event) => {
      event.preventDefault();
      clearTimeout(timer);
      watching += 1; // whatever was followed before, this run takes the page
      replace(output);
      const body = {
        policies: policies.value.split(",").map((s) => s.trim()).filter(Boolean),
        estimators: boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
        bootstrap: Number(bootstrap.value),
      };
      if (since.value.trim()) body.since = since.value.trim();
      if (until.value.trim()) body.until = until.value.trim();
      try {
        const started = await post("/v1/evaluations", body);
        await follow(started.id);
      } catch (err) {
        replace(status, h("p", { class: "error" }, err.field ? `${err.field}: ${err.message}` : err.message));
      }
    },
  }, h("label", { for: "policies" }, "Policies (comma separated: random, popular, logged, vw@V, vw:ARGS, blend:...)"), policies,
    h("fieldset", {}, h("legend", {}, "Estimators"), boxes),
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "since" }, "Since"), since),
      h("div", {}, h("label", { for: "until" }, "Until"), until),
      h("div", {}, h("label", { for: "bootstrap" }, "Bootstrap replicates"), bootstrap)),
    h("button", { type: "submit" }, "Start the replay"));
  replace(main, h("div", { class: "toolbar" }, h("h2", {}, "Replay")),
    h("p", { class: "muted" }, "What another policy would have earned on the logged decisions, before it serves anyone. Retrieval changes cannot be evaluated offline."),
    form, status, output, history);
  listed();
  return () => { watching += 1; clearTimeout(timer); };
}
