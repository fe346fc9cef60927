// Data: a dataset's rows as training reads them, images with their boxes, and `vlmkit data check`'s report.
import { get } from "./api.js";
import { boxedImage, plot } from "./draw.js";

const PAGE = 10;
const $ = id => document.getElementById(id);
let offset = 0;

function rowCard(row) {
  const card = document.createElement("article");
  card.className = "row-card";
  const where = document.createElement("h4");
  where.textContent = row.where;
  card.append(where);
  if (row.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = row.error;
    card.append(error);
    return card;
  }
  const images = document.createElement("div");
  images.className = "images";
  row.images.forEach((image, k) => {
    const figure = document.createElement("figure");
    if (image.error) {
      figure.className = "error";
      figure.textContent = image.error;
    } else {
      figure.append(boxedImage(image.url, image.width, image.height, row.boxes.filter(b => b.image_id === k)));
      const caption = document.createElement("figcaption");
      caption.textContent = `${image.width}×${image.height}`;
      figure.append(caption);
    }
    images.append(figure);
  });
  card.append(images);
  for (const m of row.messages) {
    const p = document.createElement("p");
    p.className = "turn " + m.role;
    const role = document.createElement("b");
    role.textContent = m.role + ": ";
    p.append(role, document.createTextNode(m.text));
    card.append(p);
  }
  return card;
}

async function open(at) {
  const path = $("data-path").value.trim();
  if (!path) return;
  $("data-info").textContent = "reading…";
  try {
    const page = await get(`/ui/api/data?path=${encodeURIComponent(path)}&offset=${at}&limit=${PAGE}`);
    offset = at;
    $("data-info").textContent = `${page.format}: rows ${at + 1}–${at + page.rows.length}`;
    $("data-rows").replaceChildren(...page.rows.map(rowCard));
    sessionStorage.setItem("vlmkit-data-path", path);
  } catch (e) {
    $("data-info").textContent = "";
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = e.message;
    $("data-rows").replaceChildren(error);
  }
}

async function check() {
  const path = $("data-path").value.trim();
  const out = $("data-check-out");
  out.textContent = "checking…";
  try {
    const report = await get(`/ui/api/data/check?path=${encodeURIComponent(path)}`);
    const pre = document.createElement("pre");
    pre.textContent = report.summary + (report.first_rows_only ? `\n(first ${report.rows} rows)` : "");
    const canvas = document.createElement("canvas");
    canvas.width = 480; canvas.height = 160;
    const counts = {};
    const bin = Math.max(1, Math.ceil(Math.max(...report.lengths, 1) / 20));
    report.lengths.forEach(n => { const b = Math.floor(n / bin) * bin; counts[b] = (counts[b] || 0) + 1; });
    plot(canvas, [{ name: "rows", points: Object.entries(counts).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]) }],
         "token lengths");
    out.replaceChildren(pre, canvas);
  } catch (e) {
    out.textContent = "";
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = e.message;
    out.append(error);
  }
}

export function initData() {
  $("data-path").value = sessionStorage.getItem("vlmkit-data-path") || "";
  $("data-open").onclick = () => open(0);
  $("data-next").onclick = () => open(offset + PAGE);
  $("data-prev").onclick = () => open(Math.max(0, offset - PAGE));
  $("data-check").onclick = check;
  $("data-path").onkeydown = e => { if (e.key === "Enter") open(0); };
}
