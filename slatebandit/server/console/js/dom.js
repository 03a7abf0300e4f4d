// Small DOM helpers. Data is only ever put into the page as text (never as HTML), so an item
// title or a reason can hold "<script>" and stay harmless.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// A table: columns are [header, row => cell] pairs; wrapped so that it scrolls on a phone.
export function table(columns, rows, attrs = {}) {
  const head = h("tr", {}, columns.map(([title]) => h("th", {}, title)));
  const body = rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))));
  return h("div", { class: "scroll" }, h("table", attrs, h("thead", {}, head), h("tbody", {}, body)));
}

export function card(label, value, attrs = {}, note = null) {
  return h("div", { class: "card", ...attrs }, h("div", { class: "label" }, label),
    h("div", { class: "value" }, value), note === null ? null : h("div", { class: "note" }, note));
}

// A figure of the API's {value, low, high} as "value [low, high]", each through format.
export function ranged(figure, format) {
  if (figure.value === null) return "–";
  if (figure.low === null) return format(figure.value);
  return `${format(figure.value)} [${format(figure.low)}, ${format(figure.high)}]`;
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  return x.toFixed(digits);
}

export function percent(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : (100 * x).toFixed(digits) + "%";
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "–";
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return (n / 1000 ** i).toFixed(i ? 1 : 0) + " " + units[i];
}

// A two-step button: the first click asks, the second (within the shown prompt) acts.
export function confirming(label, question, action) {
  const holder = h("span", { class: "confirm" });
  const ask = () => replace(holder,
    h("span", { class: "question" }, question + " "),
    h("button", { class: "danger", "data-confirm": "yes", onclick: async () => {
      replace(holder, "…");
      try { await action(); } catch (err) { replace(holder, h("span", { class: "error" }, err.message)); }
    } }, "Confirm"),
    h("button", { onclick: reset }, "Cancel"));
  const reset = () => replace(holder, h("button", { onclick: ask }, label));
  reset();
  return holder;
}
