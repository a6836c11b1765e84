// The list of the user's conversations (GET /api/sessions): newest activity first, search by
// title and text, open, rename in place, delete after a confirmation that says what deleting
// means. A sidebar on wide screens, a drawer on narrow ones.
import { fill, h, icon } from "./dom.js";
import { api } from "./state.js";

const when = (t) => {
  if (!t) return "";
  const d = new Date(t * 1000), now = new Date();
  return d.toDateString() === now.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" });
};

export class SessionsPanel {
  /** hooks: open(id), created(), deleted(id), current() -> id, toast(msg) */
  constructor({ list, search, dialog }, hooks) {
    Object.assign(this, { list, search, dialog, hooks });
    this.items = [];
    let timer = null;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => this.refresh(), 200); });
    search.addEventListener("keydown", (e) => { if (e.key === "Escape" && search.value) { e.stopPropagation(); search.value = ""; this.refresh(); } });
  }

  async refresh() {
    const q = this.search.value.trim();
    try {
      const { sessions } = await api("GET", `/api/sessions${q ? `?q=${encodeURIComponent(q)}` : ""}`);
      this.items = sessions;
      this.render(q);
    } catch (e) {
      console.warn("rewardloop: cannot list conversations:", e);
    }
  }

  render(q) {
    const current = this.hooks.current();
    if (!this.items.length) {
      fill(this.list, h("li", { class: "conv-empty" }, q ? "No conversation matches." : "Your conversations will appear here."));
      return;
    }
    fill(this.list, this.items.map((s) => {
      const title = s.title || "Untitled conversation";
      const open = h("button", { type: "button", class: "conv-open", "data-testid": "conv-open", "aria-current": s.session_id === current ? "page" : false,
        onclick: () => this.hooks.open(s.session_id) }, h("span", { class: "conv-title" }, title), h("span", { class: "conv-time" }, when(s.last_active)));
      const rename = h("button", { type: "button", class: "icon-btn", "data-testid": "conv-rename", "aria-label": `Rename “${title}”`,
        title: "Rename" }, icon("rename"));
      const del = h("button", { type: "button", class: "icon-btn", "data-testid": "conv-delete", "aria-label": `Delete “${title}”`,
        title: "Delete" }, icon("trash"));
      const li = h("li", { class: "conv", "data-session-id": s.session_id }, open, h("span", { class: "conv-tools" }, rename, del));
      rename.onclick = () => this.rename(li, s);
      del.onclick = () => this.confirmDelete(s);
      return li;
    }));
  }

  rename(li, s) {
    const input = h("input", { type: "text", class: "conv-rename", value: s.title || "", maxlength: "120", "aria-label": "New title",
      "data-testid": "conv-title-input" });
    let done = false;
    const save = async (keep) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (keep && title && title !== s.title) {
        try { await api("PATCH", `/api/sessions/${encodeURIComponent(s.session_id)}`, { title }); }
        catch (e) { this.hooks.toast(`Could not rename: ${e.message}`); }
      }
      await this.refresh();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); save(true); }
      else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); save(false); }
    });
    input.addEventListener("blur", () => save(true));
    fill(li, input);
    input.focus();
    input.select();
  }

  confirmDelete(s) {
    const d = this.dialog;
    d.querySelector("[data-title]").textContent = s.title || "Untitled conversation";
    const ok = d.querySelector("[data-testid=confirm-delete]");
    ok.onclick = async () => {
      d.close();
      try {
        await api("DELETE", `/api/sessions/${encodeURIComponent(s.session_id)}`);
        this.hooks.toast("Conversation deleted: it is gone from your list and from future training, exports and replays.", "info");
        this.hooks.deleted(s.session_id);
      } catch (e) {
        this.hooks.toast(`Could not delete: ${e.message}`);
      }
      await this.refresh();
    };
    d.showModal();
  }
}
