// The console's shell: who is looking (GET /v1/access), the navigation, and which page shows.
// Pages are modules with `render(main, access)`; a page may return a function that stops what
// it started (a poll), called when another page opens.

import { get, setKey } from "./api.js";
import { h, replace } from "./dom.js";
import * as overview from "./overview.js";
import * as models from "./models.js";
import * as experiments from "./experiments.js";
import * as replay from "./replay.js";
import * as inspector from "./inspector.js";
import * as catalog from "./catalog.js";

const PAGES = [
  ["overview", "Overview", overview],
  ["models", "Models", models],
  ["experiments", "Experiments", experiments],
  ["replay", "Replay", replay],
  ["inspector", "Slate inspector", inspector],
  ["catalog", "Catalog", catalog],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let stop = null;

class Access {
  constructor(answer) {
    this.open = answer.open;
    this.scopes = answer.scopes;
  }
  can(scope) {
    return this.scopes.includes("admin") || this.scopes.includes(scope);
  }
}

function askForKey(message) {
  replace(nav);
  replace(who);
  const input = h("input", { type: "password", id: "key", autocomplete: "off", placeholder: "API key" });
  const form = h("form", {
    class: "panel narrow",
    onsubmit: (event) => {
      event.preventDefault();
      setKey(input.value.trim());
      start();
    },
  },
    h("h2", {}, "This server needs an API key"),
    h("p", {}, "An analyst key shows every page; an admin key can also promote models and change experiments. The key is kept for this browser tab only."),
    message ? h("p", { class: "error" }, message) : null,
    h("label", { for: "key" }, "Key"), input, h("button", { type: "submit" }, "Open the console"));
  replace(main, form);
  input.focus();
}

function show(access) {
  const wanted = location.hash.replace(/^#\/?/, "").split("?")[0] || "overview";
  const found = PAGES.find(([id]) => id === wanted) || PAGES[0];
  replace(nav, PAGES.map(([id, title]) =>
    h("a", { href: `#/${id}`, class: id === found[0] ? "active" : "" }, title)));
  if (stop) stop();
  stop = null;
  replace(main);
  if (!access.can("analyst")) {
    replace(main, h("div", { class: "panel" }, h("h2", {}, "Nothing to show for this key"),
      h("p", {}, `Its scopes (${access.scopes.join(", ")}) serve a storefront or a catalog feed; the console reads with an analyst or admin key.`)));
    return;
  }
  document.title = `${found[1]} · slatebandit`;
  const result = found[2].render(main, access);
  if (typeof result === "function") stop = result;
}

async function start() {
  let answer;
  try {
    answer = await get("/v1/access");
  } catch (err) {
    replace(main, h("p", { class: "error" }, `The server did not answer: ${err.message}`));
    return;
  }
  if (answer.key === "missing" || answer.key === "unknown") {
    setKey(null);
    askForKey(answer.key === "unknown" ? "That key was not accepted." : "");
    return;
  }
  const access = new Access(answer);
  replace(who, access.open ? "open (no keys configured)" : `key: ${access.scopes.join(", ")}`,
    access.open ? null : h("button", { class: "link", onclick: () => { setKey(null); start(); } }, "forget key"));
  window.onhashchange = () => show(access);
  show(access);
}

start();
