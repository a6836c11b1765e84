// The feedback bar under a finished reply: thumbs, a 1-5 rating, copy, regenerate, the pick
// between two candidates, and after a thumbs the reasons form (tags and a comment). Every
// click is its own event; the pressed state mirrors the latest one.
import { fill, h, icon, setPressed } from "./dom.js";

// core/feedback_tags.py, in the same order (a browser test checks they agree)
export const TAGS = [
  ["inaccurate", -1, "Not accurate"], ["ignored_instructions", -1, "Did not follow the instructions"],
  ["too_long", -1, "Too long"], ["too_short", -1, "Too short"], ["unsafe", -1, "Unsafe or harmful"],
  ["refused", -1, "Refused without cause"], ["other", -1, "Something else"],
  ["accurate", 1, "Accurate"], ["clear", 1, "Clear"], ["helpful", 1, "Helpful"],
];
export const MAX_COMMENT_CHARS = 500;
const LABEL = Object.fromEntries(TAGS.map(([name, , label]) => [name, label]));

function button(testid, label, { iconName, flip, text, toggle } = {}) {
  const b = h("button", { type: "button", class: "fb", "data-testid": testid, title: label },
    iconName ? icon(iconName, { flip }) : null, text ? h("span", { class: "fb-label" }, text) : null);
  if (!text) b.setAttribute("aria-label", label);
  if (toggle) setPressed(b, false);
  return b;
}

/** actions: send(kind, value, extra), regenerate(), choose(), copy(btn) */
export function feedbackBar(r, actions) {
  const up = button("thumb-up", "Good reply", { iconName: "thumb", toggle: true });
  const down = button("thumb-down", "Bad reply", { iconName: "thumb", flip: true, toggle: true });
  const form = h("div", { class: "reasons-slot" });
  const thumb = (v) => {
    actions.send("thumbs", v);
    setPressed(up, v > 0); setPressed(down, v < 0);
    fill(form, reasonsForm(v, actions, form));
  };
  up.onclick = () => thumb(1);
  down.onclick = () => thumb(-1);

  const stars = h("span", { class: "stars", role: "group", "aria-label": "Rate this reply from 1 to 5" });
  const starBtns = [1, 2, 3, 4, 5].map((n) => {
    const s = button(`star-${n}`, `${n} star${n > 1 ? "s" : ""}`, { iconName: "star", toggle: true });
    s.classList.add("star");
    s.onclick = () => { actions.send("rating", n); showRating(starBtns, n); };
    return s;
  });
  stars.append(...starBtns);

  const copy = button("copy", "Copy the reply (Markdown)", { iconName: "copy", text: "Copy" });
  copy.onclick = () => actions.copy(copy);
  const regen = button("regenerate", "Ask for a different reply", { iconName: "regenerate", text: "Regenerate" });
  regen.onclick = () => actions.regenerate();
  const bar = h("div", { class: "feedback", role: "group", "aria-label": "Feedback on this reply" }, up, down, stars, copy, regen);
  r.btn = { up, down, stars: starBtns, copy, regen };
  if (r.other) {
    const choose = button("choose", "Prefer this candidate over the other", { iconName: "check", text: "This one is better", toggle: true });
    choose.classList.add("choose");
    choose.onclick = () => actions.choose();
    r.btn.choose = choose;
    bar.append(choose);
  }
  return h("div", { class: "feedback-area" }, bar, form);
}

function showRating(starBtns, n) {
  starBtns.forEach((x, i) => { x.classList.toggle("filled", i < n); setPressed(x, i + 1 === n); });
}

/** The small form a thumbs opens: reasons of its polarity, an optional comment. */
function reasonsForm(polarity, actions, slot) {
  const tags = TAGS.filter(([, p]) => p === polarity);
  const legend = polarity < 0 ? "What was wrong?" : "What was good?";
  const chips = tags.map(([name, , label]) => h("label", { class: "chip" },
    h("input", { type: "checkbox", name: "tag", value: name, "data-testid": `tag-${name}` }), h("span", {}, label)));
  const comment = h("textarea", { name: "comment", rows: "2", maxlength: String(MAX_COMMENT_CHARS), "data-testid": "reason-comment",
    placeholder: "Anything else? (optional)" });
  const form = h("form", { class: "reasons", "data-testid": "reasons", "aria-label": legend },
    h("fieldset", {}, h("legend", {}, legend), ...chips),
    h("label", { class: "comment" }, h("span", { class: "sr-only" }, "Comment (optional)"), comment),
    h("div", { class: "reasons-actions" },
      h("button", { type: "submit", class: "btn primary small", "data-testid": "reason-send" }, "Send"),
      h("button", { type: "button", class: "btn small", "data-testid": "reason-skip", onclick: () => slot.replaceChildren() }, "Not now")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const picked = [...form.querySelectorAll("input[name=tag]:checked")].map((x) => x.value);
    const text = comment.value.trim().slice(0, MAX_COMMENT_CHARS);
    if (!picked.length && !text) { slot.replaceChildren(); return; }
    actions.send("reasons", undefined, { tags: picked, comment: text });
    fill(slot, reasonsNote(picked, text));
  });
  form.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.stopPropagation(); slot.replaceChildren(); } });
  queueMicrotask(() => chips[0] && chips[0].querySelector("input").focus({ preventScroll: true }));
  return form;
}

function reasonsNote(tags, comment) {
  const what = tags.map((t) => LABEL[t] || t).join(", ");
  return h("p", { class: "reasons-note", "data-testid": "reasons-note", role: "status" },
    "Thanks — noted", what ? `: ${what}` : "", comment ? ` (“${comment}”)` : "", ".");
}

/** Show what the user gave before a reload (GET /api/sessions/{id}: feedback of each reply). */
export function applyState(r, fb) {
  if (!fb || !r.btn) return;
  if (fb.thumbs) { setPressed(r.btn.up, fb.thumbs > 0); setPressed(r.btn.down, fb.thumbs < 0); }
  if (fb.rating) showRating(r.btn.stars, fb.rating);
  if (fb.reasons) fill(r.bar.querySelector(".reasons-slot"), reasonsNote(fb.reasons.tags || [], fb.reasons.comment || ""));
}
