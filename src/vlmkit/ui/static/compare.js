// Compare: `vlmkit eval` results (metrics.json) of several models or checkpoints side by side, with their
// first predictions next to the references.
import { get } from "./api.js";

const $ = id => document.getElementById(id);

function cell(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text;
  return el;
}

function value(score) {
  if (score === undefined || score === null) return "–";
  const v = typeof score === "object" ? score.value : score;
  return typeof v === "number" ? v.toFixed(4) : String(v);
}

async function show(path) {
  const out = $("compare");
  if (!path) { out.replaceChildren(cell("p", "No eval results (metrics.json) in the app's folders yet: run vlmkit eval.")); return; }
  try {
    const { metrics, predictions } = await get(`/ui/api/eval?path=${encodeURIComponent(path)}`);
    const labels = Object.keys(metrics.models || {});
    const names = metrics.metrics || [...new Set(labels.flatMap(l => Object.keys(metrics.models[l].scores || {})))];
    const table = document.createElement("table");
    table.className = "scores";
    const head = document.createElement("tr");
    head.append(cell("th", "metric"), ...labels.map(l => cell("th", l)));
    table.append(head);
    for (const name of [...names, "rows", "failed"]) {
      const tr = document.createElement("tr");
      tr.append(cell("th", name), ...labels.map(l => {
        const m = metrics.models[l];
        return cell("td", name in m ? String(m[name]) : value((m.scores || {})[name]));
      }));
      table.append(tr);
    }
    const rows = document.createElement("table");
    rows.className = "predictions";
    const top = document.createElement("tr");
    top.append(cell("th", "#"), cell("th", "reference"), ...labels.map(l => cell("th", l)));
    rows.append(top);
    const n = Math.max(0, ...labels.map(l => (predictions[l] || []).length));
    for (let i = 0; i < n; i++) {
      const first = labels.map(l => (predictions[l] || [])[i]).find(Boolean);
      const tr = document.createElement("tr");
      const ref = cell("td", JSON.stringify(first.reference));
      if (first.image && first.image.url) {
        const img = document.createElement("img");
        img.src = first.image.url; img.alt = "row image"; img.className = "thumb";
        ref.prepend(img);
      }
      tr.append(cell("td", String(i + 1)), ref, ...labels.map(l => {
        const p = (predictions[l] || [])[i];
        return cell("td", p ? (p.error ? "error: " + p.error : p.response) : "");
      }));
      rows.append(tr);
    }
    out.replaceChildren(cell("p", `dataset: ${metrics.dataset || "?"}`), table, cell("h4", "First predictions"), rows);
  } catch (e) {
    out.replaceChildren(cell("p", e.message));
  }
}

async function refresh() {
  const { evals } = await get("/ui/api/evals");
  const select = $("evals");
  select.replaceChildren(...evals.map(path => { const o = document.createElement("option"); o.value = o.textContent = path; return o; }));
  await show(select.value);
}

export async function initCompare() {
  $("evals").onchange = e => show(e.target.value);
  $("evals-refresh").onclick = refresh;
  await refresh();
}
