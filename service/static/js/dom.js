// The one small DOM helper of the chat page and the operator page. Text only ever goes in as
// text nodes and attributes one by one, so nothing a model or a user wrote becomes markup.
// Icons are inline SVG (no icon font, no emoji font needed).

export const $ = (sel, root = document) => root.querySelector(sel);

/** h("button", {class: "x", onclick: fn}, "text", child, ...) -> element. Attribute values
 * false/null are left out, true is an empty attribute; "on..." functions become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v == null) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) { el.replaceChildren(); append(el, children); return el; }

export const setPressed = (btn, on) => btn.setAttribute("aria-pressed", on ? "true" : "false");

// 24x24 outline icons, drawn for this project (stroke = currentColor).
const PATHS = {
  thumb: "M7 10v10H4V10h3zm0 0 3.6-6.6A1.8 1.8 0 0 1 14 4.6V9h4.6a2 2 0 0 1 2 2.4l-1.3 6.8A2.2 2.2 0 0 1 17.1 20H7",
  star: "M12 3.2l2.6 5.5 6 .8-4.4 4.2 1.1 6L12 16.8 6.7 19.7l1.1-6L3.4 9.5l6-.8z",
  copy: "M9 9h10v11H9zM15 9V5H5v11h4",
  regenerate: "M19.5 12a7.5 7.5 0 1 1-2.2-5.3M19.5 4v4h-4",
  edit: "M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4",
  stop: "M7 7h10v10H7z",
  send: "M4 12 20 4l-5 16-3.5-6.5zM11.5 13.5 20 4",
  left: "M15 5l-7 7 7 7",
  right: "M9 5l7 7-7 7",
  menu: "M4 6h16M4 12h16M4 18h16",
  plus: "M12 5v14M5 12h14",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
  search: "M10.5 4a6.5 6.5 0 1 1 0 13 6.5 6.5 0 0 1 0-13zM15.5 15.5 20 20",
  close: "M6 6l12 12M18 6 6 18",
  check: "M5 12.5 10 17l9-10",
  rename: "M4 20h4L19 9l-4-4L4 16z",
};

/** An inline SVG icon, hidden from assistive technology (the button carries the label). */
export function icon(name, { flip = false } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({ viewBox: "0 0 24 24", width: "18", height: "18", fill: "none", stroke: "currentColor",
    "stroke-width": "1.8", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true", focusable: "false",
    class: `icon icon-${name}` })) svg.setAttribute(k, v);
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", PATHS[name]);
  if (flip) path.setAttribute("transform", "rotate(180 12 12)");
  svg.append(path);
  return svg;
}

/** A short message in a live region (errors: role=alert), gone after a while. */
export function toast(box, message, kind = "error") {
  const t = h("div", { class: `toast ${kind}`, "data-testid": "toast", role: kind === "error" ? "alert" : "status" }, message);
  box.append(t);
  setTimeout(() => t.remove(), 6000);
}
