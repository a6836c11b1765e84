// Model text -> safe, rendered Markdown, while it streams.
//
// marked parses (GFM: tables, lists, fenced code), highlight.js colours fenced code, DOMPurify
// sanitises what comes out. Model text never becomes live HTML: raw HTML in a reply is shown as
// text, images are links (nothing is fetched), links other than http(s)/mailto are plain text,
// and every link opens in a new tab with rel="noopener noreferrer".
//
// Streaming: a reply is split at block boundaries (a blank line or a closing code fence at the
// top level). Finished blocks are rendered once and kept; only the open tail is rendered again,
// at most once per animation frame, so a long reply costs the same per frame at its end as at
// its start. A reopened conversation renders with the same split, so it looks the same.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.js";
import hljs from "../vendor/highlight.esm.min.js";
import { h, icon } from "./dom.js";

const SAFE_URL = /^(https?:|mailto:)/i;
const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({ gfm: true, breaks: false });
marked.use({
  renderer: {
    html({ text, block }) { return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text); },
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language);
      const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
      const label = (language.replace(/[^a-z0-9+#_-]/g, "") || "text").slice(0, 24);
      return `<pre><code class="hljs language-${label}">${body}</code></pre>`;
    },
    link({ href, title, tokens }) {
      const inner = this.parser.parseInline(tokens);
      if (!SAFE_URL.test(href || "")) return inner;   // javascript:, data:, relative: shown as text
      const t = title ? ` title="${escapeHtml(title)}"` : "";
      return `<a href="${escapeHtml(href)}"${t}>${inner}</a>`;
    },
    image({ href, text }) {   // never load a picture the model names: a link to it, if it is safe
      const alt = escapeHtml(text || "image");
      return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">[image: ${alt}]</a>` : `[image: ${alt}]`;
    },
  },
});

const PURIFY = {
  ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i, ALLOW_DATA_ATTR: false,
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "object",
    "embed", "video", "audio", "source", "link", "meta", "base", "script", "template"],
  FORBID_ATTR: ["style", "srcset", "action", "formaction"],
  RETURN_DOM_FRAGMENT: true,
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (!SAFE_URL.test(node.getAttribute("href") || "")) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Markdown text -> a sanitised DocumentFragment, code blocks with a copy button. */
export function renderFragment(text, onCopyCode) {
  const frag = DOMPurify.sanitize(marked.parse(text), PURIFY);
  for (const node of [...frag.childNodes]) if (node.nodeType === 3 && !node.data.trim()) node.remove();
  // a code block or table wider than the bubble scrolls sideways: keyboard users must be able to
  // reach it (axe: scrollable-region-focusable)
  for (const wide of frag.querySelectorAll("pre > code, table")) wide.setAttribute("tabindex", "0");
  for (const pre of frag.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const copy = h("button", { type: "button", class: "copy-code", "aria-label": "Copy code" }, icon("copy"), h("span", {}, "Copy code"));
    copy.addEventListener("click", () => onCopyCode && onCopyCode(code ? code.textContent : pre.textContent, copy));
    const lang = code && (/(?:^| )language-(\S+)/.exec(code.className) || [])[1];
    const head = h("div", { class: "code-head" }, h("span", { class: "code-lang" }, lang || "text"), copy);
    const block = h("div", { class: "codeblock" }, head);
    pre.before(block);
    block.append(pre);
  }
  return frag;
}

/** Where finished blocks end in `text`: after a blank line (when the next line starts a new
 * block at the margin) or a closing fence at the margin; 0 when none. `complete` says the text
 * is whole (its last line is finished too). */
export function splitPoint(text, complete = false) {
  const lines = text.split("\n");
  const n = complete ? lines.length : lines.length - 1;   // the last line may still grow
  let pos = 0, safe = 0, fence = null, blank = -1;        // blank: just after the last blank line
  for (let i = 0; i < n; i++) {
    const line = lines[i];
    const next = Math.min(pos + line.length + 1, text.length);
    const m = /^( {0,3})(`{3,}|~{3,})/.exec(line);
    if (fence) {
      if (m && m[2][0] === fence.ch && m[2].length >= fence.len && /^ {0,3}[`~]+\s*$/.test(line)) {
        if (fence.top) safe = next;   // a whole code block at the margin
        fence = null;
      }
    } else if (!line.trim()) {
      blank = next;
    } else {
      if (blank >= 0 && /^\S/.test(line)) safe = blank;   // an indented line continues a list item
      if (m) fence = { ch: m[2][0], len: m[2].length, top: m[1] === "" };
      blank = -1;
    }
    pos = next;
  }
  return safe;
}

// One animation-frame loop for every reply that has new text.
const dirty = new Set();
let frame = 0;
function schedule(r) {
  dirty.add(r);
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; const all = [...dirty]; dirty.clear(); for (const x of all) x.flush(); });
}

/** A reply's rendered text in `el`: append() while it streams, finish() at the end, or
 * set() a whole text at once (a reopened conversation). `source` is the Markdown as sent. */
export class StreamRenderer {
  constructor(el, onCopyCode) {
    this.el = el; this.onCopyCode = onCopyCode;
    this.source = ""; this.done = 0;          // chars of source rendered into kept blocks
    this.tail = h("div", { class: "md-tail" });
    this.el.append(this.tail);
    this.rendered = -1;                        // source length when the tail was last drawn
    this.around = null;                        // (draw) => void: e.g. keep the view pinned to the bottom
  }

  append(text) { this.source += text; schedule(this); }

  finish() { this.flush(true); }

  set(text) { this.reset(); this.source = text; this.flush(true); }

  /** Start over (the server restarted this reply). */
  reset() { this.source = ""; this.done = 0; this.rendered = -1; this.el.replaceChildren(this.tail); this.tail.replaceChildren(); }

  flush(complete = false) {
    if (!complete && this.rendered === this.source.length) return;
    if (this.around) this.around(() => this.draw(complete)); else this.draw(complete);
  }

  draw(complete) {
    let rest = this.source.slice(this.done);
    const cut = splitPoint(rest, complete);
    if (cut > 0) {   // finished blocks: rendered once, kept before the tail
      this.tail.before(h("div", { class: "md-block" }, renderFragment(rest.slice(0, cut), this.onCopyCode)));
      this.done += cut;
      rest = rest.slice(cut);
    }
    this.tail.replaceChildren(renderFragment(rest, this.onCopyCode));
    this.rendered = this.source.length;
  }
}
