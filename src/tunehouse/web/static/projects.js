// Projects and keys page, for the admin: OpenAI's /v1/organization/projects with the admin key, which
// this page keeps apart from the project key the rest of the dashboard reads with.
const ADMIN_KEY = "tunehouse.adminKey";

export function projectsPage(ui) {
  const { view, h, table, when, showError, useKey } = ui;
  const keyInput = h("input", { id: "admin-key-input", type: "password", autocomplete: "off", placeholder: "sk-admin-…", value: localStorage.getItem(ADMIN_KEY) || "" });
  const list = h("div", { class: "panel", id: "projects-list" });
  const name = h("input", { id: "project-name", placeholder: "Project name" });
  const shown = h("div", { class: "panel", id: "new-key", hidden: true });

  async function admin(path, options = {}) {
    const response = await fetch(`/v1/organization/projects${path}`, {
      ...options,
      headers: { Authorization: `Bearer ${localStorage.getItem(ADMIN_KEY) || ""}`, "Content-Type": "application/json" },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message || `HTTP ${response.status}`);
    return body;
  }

  function showKey(project, account) {  // the one time the key's value is ever shown
    const value = account.api_key.value;
    shown.replaceChildren(h("h2", {}, `New key for ${project.name}`),
      h("p", {}, "Copy it now: it is not shown again."),
      h("p", { class: "mono", id: "new-key-value" }, value),
      h("button", { type: "button", id: "use-key", onclick: () => useKey(value, project.name) }, "Use this key in the dashboard"));
    shown.hidden = false;
  }

  async function keysOf(project) {
    const { data } = await admin(`/${project.id}/api_keys?limit=100`);
    return data.map((k) => h("div", { class: "row" },
      h("span", { class: "mono" }, k.redacted_value), h("span", { class: "muted" }, `${k.owner.service_account?.name || ""} · last used ${when(k.last_used_at)}`),
      h("button", { type: "button", class: "link", onclick: () => act(() => admin(`/${project.id}/api_keys/${k.id}`, { method: "DELETE" })) }, "Delete")));
  }

  async function act(fn) {
    try { await fn(); await refresh(); } catch (e) { showError(e); }
  }

  async function refresh() {
    if (!localStorage.getItem(ADMIN_KEY)) {
      list.replaceChildren(h("p", { class: "muted" }, "Enter the server's admin key (TUNEHOUSE_ADMIN_KEY) to manage projects."));
      return;
    }
    const { data } = await admin("?limit=100");
    const rows = await Promise.all(data.map(async (p) => h("tr", { "data-project": p.id },
      h("td", {}, p.name, h("div", { class: "mono muted" }, p.id)), h("td", {}, when(p.created_at)),
      h("td", {}, await keysOf(p)),
      h("td", {},
        h("button", { type: "button", class: "new-key", onclick: () => act(async () => showKey(p, await admin(`/${p.id}/service_accounts`, { method: "POST", body: JSON.stringify({ name: "dashboard" }) }))) }, "New key"), " ",
        p.id === "proj_default" ? null : h("button", { type: "button", class: "link", onclick: () => act(() => admin(`/${p.id}/archive`, { method: "POST" })) }, "Archive")))));
    list.replaceChildren(table(["Project", "Created", "Keys", ""], rows));
  }

  const save = h("button", { type: "button", id: "admin-key-save", onclick: () => { localStorage.setItem(ADMIN_KEY, keyInput.value.trim()); refresh().catch(showError); } }, "Save");
  const create = h("button", { type: "button", id: "project-create", onclick: () => name.value.trim() && act(async () => {
    await admin("", { method: "POST", body: JSON.stringify({ name: name.value.trim() }) });
    name.value = "";
  }) }, "Create project");
  view.replaceChildren(h("h1", {}, "Projects and keys"),
    h("div", { class: "panel" }, h("h2", {}, "Admin key"), h("div", { class: "row" }, keyInput, save)),
    h("div", { class: "panel" }, h("h2", {}, "New project"), h("div", { class: "row" }, name, create)),
    shown, list);
  refresh().catch(showError);
  return () => {};
}
