// Train: a form generated from sft's option groups (/ui/api/train/form), runs read from their folders,
// live curves from train_log.jsonl, the output's tail, stop and resume, the error line of a failed run, and a
// chat with any LoRA checkpoint of a run (loaded by the server beside the served model).
import { get, post } from "./api.js";
import { chatWith } from "./chat.js";
import { plot } from "./draw.js";

const $ = id => document.getElementById(id);
const SELECTED = "vlmkit-run";
let fields = [];
let timer = null;

function input(field) {
  let el;
  if (field.kind === "bool" && !field.optional) {
    el = document.createElement("input");
    el.type = "checkbox";
    el.checked = field.default;
  } else if (field.kind === "bool") {
    el = document.createElement("select");
    for (const [value, text] of [["", "default"], ["true", "yes"], ["false", "no"]]) {
      const option = document.createElement("option");
      option.value = value; option.textContent = text;
      el.append(option);
    }
  } else {
    el = document.createElement("input");
    el.type = field.kind === "int" || field.kind === "float" ? "number" : "text";
    if (field.kind === "float") el.step = "any";
    const value = Array.isArray(field.default) ? field.default.join(" ") : field.default;
    if (value !== null && value !== undefined) el.value = value;
    if (field.optional) el.placeholder = "default";
  }
  el.name = field.name;
  return el;
}

function buildForm(data) {
  fields = data.fields;
  const form = $("train-form");
  form.replaceChildren();
  const groups = {};
  for (const field of fields) {
    if (!groups[field.group]) {
      const details = document.createElement("details");
      details.open = field.group === "Data" || field.group === "Optim" || field.group === "Tuner";
      const summary = document.createElement("summary");
      summary.textContent = field.group;
      details.append(summary);
      form.append(details);
      groups[field.group] = details;
    }
    const label = document.createElement("label");
    label.title = field.help;
    const name = document.createElement("span");
    name.textContent = field.flag;
    const help = document.createElement("small");
    help.textContent = field.help;
    label.append(name, input(field), help);
    groups[field.group].append(label);
  }
  const note = document.createElement("p");
  note.textContent = `Runs go to ${data.runs}.`;
  const launch = document.createElement("button");
  launch.type = "submit";
  launch.textContent = "Start training";
  const error = document.createElement("p");
  error.id = "train-error";
  error.className = "error";
  form.append(note, launch, error);
  form.onsubmit = launchRun;
}

function formValues() {
  const values = {};
  for (const field of fields) {
    const el = $("train-form").elements[field.name];
    let value;
    if (field.kind === "bool" && !field.optional) value = el.checked;
    else if (field.kind === "bool") value = el.value === "" ? null : el.value === "true";
    else if (el.value === "") value = null;
    else if (field.kind === "int" || field.kind === "float") value = Number(el.value);
    else if (field.kind === "list") value = el.value.split(/\s+/).filter(Boolean);
    else value = el.value;
    const same = JSON.stringify(value) === JSON.stringify(field.default) || (value === null && field.default === null);
    if (!same && value !== null) values[field.name] = value;
  }
  return values;
}

async function launchRun(e) {
  e.preventDefault();
  $("train-error").textContent = "";
  try {
    const run = await post("/ui/api/train", { values: formValues() });
    sessionStorage.setItem(SELECTED, run.id);
    refresh();
  } catch (err) {
    $("train-error").textContent = err.message;
  }
}

function showRun(run) {
  const box = $("run");
  const title = document.createElement("h4");
  title.textContent = `${run.folder || run.id}: ${run.state}`;
  title.className = "state-" + run.state;
  box.replaceChildren(title);
  if (run.error) {
    const error = document.createElement("p");
    error.className = "error run-error";
    error.textContent = run.error;
    box.append(error);
  }
  if (run.state === "running" || run.state === "starting") {
    const stop = document.createElement("button");
    stop.type = "button";
    stop.textContent = "Stop";
    stop.onclick = () => post("/ui/api/run/stop", { id: run.id }).then(refresh);
    box.append(stop);
  }
  if ((run.state === "stopped" || run.state === "failed") && run.command && run.checkpoints.length) {
    const resume = document.createElement("button");
    resume.type = "button";
    resume.className = "resume";
    resume.textContent = `Resume from ${run.checkpoints[run.checkpoints.length - 1]}`;
    resume.onclick = () => post("/ui/api/run/resume", { id: run.id }).then(refresh, showRunError);
    box.append(resume);
  }
  for (const checkpoint of run.checkpoints) {
    const chat = document.createElement("button");
    chat.type = "button";
    chat.className = "chat-checkpoint";
    chat.textContent = `Chat with ${checkpoint}`;
    chat.onclick = () => post("/ui/api/run/chat", { id: run.id, checkpoint })
      .then(loaded => chatWith(loaded.model), showRunError);
    box.append(chat);
  }
  const series = key => run.points.filter(p => p[key] !== undefined).map(p => [p.step, p[key]]);
  const loss = document.createElement("canvas");
  loss.width = 420; loss.height = 180; loss.className = "curve loss-curve";
  const lr = document.createElement("canvas");
  lr.width = 420; lr.height = 180; lr.className = "curve";
  box.append(loss, lr);
  const evalKeys = [...new Set(run.points.flatMap(Object.keys))].filter(k => k.startsWith("eval_") && k !== "eval_runtime");
  plot(loss, [{ name: "loss", points: series("loss") }, ...evalKeys.slice(0, 2).map(k => ({ name: k, points: series(k) }))], "loss");
  plot(lr, [{ name: "learning rate", points: series("learning_rate") }], "learning rate");
  const steps = document.createElement("p");
  const last = run.points.filter(p => p.loss !== undefined).pop();
  steps.className = "steps";
  steps.textContent = `step ${last ? last.step : 0}${run.max_steps > 0 ? " of " + run.max_steps : ""}; checkpoints: ${run.checkpoints.join(", ") || "none"}`;
  const log = document.createElement("pre");
  log.className = "log";
  log.textContent = run.output.join("\n");
  box.append(steps, log);
}

function showRunError(e) {
  const error = document.createElement("p");
  error.className = "error run-action-error";
  error.textContent = e.message;
  $("run").append(error);
}

async function refresh() {
  try {
    const { runs } = await get("/ui/api/runs");
    const list = $("runs");
    list.replaceChildren(...runs.map(run => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${run.folder ? run.folder.split("/").slice(-2).join("/") : run.id} — ${run.state}, step ${run.step}`;
      button.className = "state-" + run.state;
      button.onclick = () => { sessionStorage.setItem(SELECTED, run.id); refresh(); };
      li.append(button);
      return li;
    }));
    const selected = sessionStorage.getItem(SELECTED) || (runs[0] && runs[0].id);
    if (selected && runs.some(r => r.id === selected)) showRun(await get(`/ui/api/run?id=${encodeURIComponent(selected)}`));
  } catch (e) {
    $("run").textContent = e.message;
  }
}

export async function initTrain() {
  buildForm(await get("/ui/api/train/form"));
  await refresh();
  if (timer === null) timer = setInterval(() => { if (!$("tab-train").hidden) refresh(); }, 1500);
}
