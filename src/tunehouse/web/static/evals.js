// tunehouse dashboard: evals. The list of evals, and an eval's runs side by side — prompt, expected
// answer, each run's answer and whether it passed — with each grader's scores per run. A run's
// `report_url` (#/evals/{eval_id}/runs/{run_id}) opens this page with that run first.
// `ui` is the dashboard's kit (view, h, table, every, getJson, status, when), handed over by app.js.

const RUN_ENDED = new Set(["completed", "failed", "canceled"]);

async function allPages(ui, path, after = null) {
  const rows = [];
  for (;;) {
    const page = await ui.getJson(`${path}${path.includes("?") ? "&" : "?"}limit=100${after ? `&after=${after}` : ""}`);
    rows.push(...page.data);
    if (!page.has_more || !page.data.length) return rows;
    after = page.data[page.data.length - 1].id;
  }
}

export function evalsPage(ui) {
  const { h } = ui;
  const body = h("div", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
  ui.view.replaceChildren(h("h1", {}, "Evals"), body);
  return ui.every(5000, async () => {
    const evals = await allPages(ui, "/evals?order=desc");
    body.replaceChildren(evals.length ? ui.table(["Eval", "Name", "Graders", "Job", "Created"],
      evals.map((e) => h("tr", { "data-eval": e.id },
        h("td", { class: "mono" }, h("a", { href: `#/evals/${e.id}` }, e.id)),
        h("td", {}, e.name),
        h("td", {}, e.testing_criteria.map((c) => c.name).join(", ")),
        h("td", { class: "mono" }, e.metadata?.fine_tuning_job_id
          ? h("a", { href: `#/jobs/${e.metadata.fine_tuning_job_id}` }, e.metadata.fine_tuning_job_id) : "–"),
        h("td", {}, ui.when(e.created_at)))),
    ) : h("p", { class: "muted" }, "No evals yet. A job with a validation file makes one; so do `tunehouse eval` and the Evals API."));
    ui.view.dataset.loaded = "true";
  });
}

const text = (content) => (typeof content === "string" ? content : JSON.stringify(content));

// What the table shows of an item: its prompt (a held-out example's input, else the sampled messages' last user turn)
function promptOf(item, outputs) {
  const input = item.input;
  if (typeof input === "string") return input;
  const messages = Array.isArray(input) ? input : outputs.find((o) => o?.sample?.input?.length)?.sample.input || [];
  const users = messages.filter((m) => m.role === "user");
  if (users.length) return text(users[users.length - 1].content);
  return text(Object.fromEntries(Object.entries(item).filter(([k]) => k !== "expected")));
}

function answerOf(output) {
  if (!output) return "…";
  if (output.sample?.error) return `error: ${output.sample.error.message}`;
  const answer = output.sample?.output?.[0]?.content ?? "";
  return answer.trim() ? answer : `(blank${answer ? `: ${JSON.stringify(answer)}` : ""})`;
}

// Per criterion: items passed, items graded, mean score — as the job's summary and `tunehouse eval` count them
function scores(criteria, outputs) {
  return criteria.map((c) => {
    const results = outputs.flatMap((o) => o.results.filter((r) => r.name === c.id));
    const passed = results.filter((r) => r.passed).length;
    const mean = results.length ? results.reduce((s, r) => s + r.score, 0) / results.length : 0;
    return { name: c.name, passed, graded: results.length, mean };
  });
}

const percent = (n, d) => (d ? `${Math.round((100 * n) / d)}%` : "–");

export function evalPage(ui, evalId, runId) {
  const { h } = ui;
  const header = h("div", { class: "panel", id: "eval-header" }, h("p", { class: "muted" }, "Loading…"));
  const scoresPanel = h("div", { class: "panel", id: "eval-scores" });
  const itemsPanel = h("div", { class: "panel", id: "eval-items" });
  ui.view.replaceChildren(h("h1", {}, evalId), header, scoresPanel, itemsPanel);
  const outputs = new Map();  // run id -> (datasource_item_id -> output item)
  const cursors = new Map();  // run id -> the last output item read
  let finished = false;

  return ui.every(2000, async () => {
    if (finished) return;
    const evaluation = await ui.getJson(`/evals/${evalId}`);
    let runs = await allPages(ui, `/evals/${evalId}/runs`);
    if (runId) runs = [...runs.filter((r) => r.id === runId), ...runs.filter((r) => r.id !== runId)];
    for (const run of runs) {
      const known = outputs.get(run.id) || new Map();
      if (known.size < run.result_counts.total) {
        const fresh = await allPages(ui, `/evals/${evalId}/runs/${run.id}/output_items?order=asc`, cursors.get(run.id));
        for (const o of fresh) known.set(o.datasource_item_id, o);
        if (fresh.length) cursors.set(run.id, fresh[fresh.length - 1].id);
      }
      outputs.set(run.id, known);
    }
    const job = evaluation.metadata?.fine_tuning_job_id;
    header.replaceChildren(
      h("h2", {}, evaluation.name),
      job ? h("p", {}, "Base vs fine-tuned for job ", h("a", { href: `#/jobs/${job}`, class: "mono" }, job)) : null,
      ui.table(["Run", "Model", "Status", "Graded", "Passed", "Failed", "Errored"], runs.map((r) => h("tr", { "data-run": r.id, class: r.id === runId ? "chosen" : null },
        h("td", { class: "mono" }, h("a", { href: `#/evals/${evalId}/runs/${r.id}` }, r.name)),
        h("td", { class: "mono" }, r.model || "–"), h("td", {}, ui.status(r.status)),
        h("td", {}, String(r.result_counts.total)), h("td", {}, String(r.result_counts.passed)),
        h("td", {}, String(r.result_counts.failed)), h("td", {}, String(r.result_counts.errored))))));

    const perRun = runs.map((r) => scores(evaluation.testing_criteria, [...outputs.get(r.id).values()]));
    // a classifier job's eval: the worker writes each run's classification metrics into its metadata
    const metrics = [...new Set(runs.flatMap((r) => Object.keys(r.metadata || {}).filter((k) => k.startsWith("classification/"))))];
    scoresPanel.replaceChildren(h("h2", {}, "Scores"), ui.table(["Grader", ...runs.map((r) => r.model || r.name)], [
      ...evaluation.testing_criteria.map((c, i) => h("tr", { "data-criterion": c.name }, h("td", {}, c.name),
        perRun.map((s) => h("td", {}, `${percent(s[i].passed, s[i].graded)} passed (${s[i].passed}/${s[i].graded}) · mean ${s[i].mean.toFixed(2)}`)))),
      ...metrics.map((m) => h("tr", { "data-metric": m }, h("td", {}, m),
        runs.map((r) => h("td", {}, r.metadata?.[m] ? Number(r.metadata[m]).toFixed(3) : "–")))),
    ]));

    const ids = [...new Set(runs.flatMap((r) => [...outputs.get(r.id).keys()]))].sort((a, b) => a - b);
    const columns = ["#", "Prompt", "Expected", ...runs.flatMap((r) => [r.model || r.name, "Pass"])];
    itemsPanel.replaceChildren(h("h2", {}, `Items (${ids.length})`), ui.table(columns, ids.map((id) => {
      const row = runs.map((r) => outputs.get(r.id).get(id));
      const item = row.find(Boolean).datasource_item;
      return h("tr", { "data-item": String(id) },
        h("td", {}, String(id + 1)), h("td", { class: "prompt" }, promptOf(item, row)),
        h("td", { class: "expected" }, "expected" in item ? text(item.expected) : "–"),
        row.flatMap((o) => [
          h("td", { class: "answer-cell mono" }, answerOf(o)),
          h("td", { class: o ? o.status : "", title: o ? o.results.map((r) => `${r.name.replace(/-[0-9a-f-]{36}$/, "")}: ${r.score.toFixed(2)}`).join("\n") : "" },
            o ? (o.status === "pass" ? "✓" : "✗") : "…")]));
    })));
    finished = runs.length > 0 && runs.every((r) => RUN_ENDED.has(r.status));
    ui.view.dataset.loaded = finished ? "true" : "running";
  });
}
