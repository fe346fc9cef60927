// The page: tabs, the API key, and each tab's start. Everything comes from this server: no CDN, no build step.
import { ApiError, get, setKey } from "./api.js";
import { initChat } from "./chat.js";
import { initCompare } from "./compare.js";
import { initData } from "./data.js";
import { initTrain } from "./train.js";

const $ = id => document.getElementById(id);
const started = new Set();

function showTab() {
  const tab = (location.hash || "#chat").slice(1);
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== "tab-" + tab;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.tab === tab);
  if (!started.has(tab) && document.body.dataset.ready) {
    started.add(tab);
    ({ train: initTrain, compare: initCompare }[tab] || (() => {}))();
  }
}

async function start() {
  let info;
  try {
    info = await get("/ui/api/info");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      $("key-form").hidden = false;
      $("key-error").textContent = sessionStorage.getItem("vlmkit-api-key") ? e.message : "This server needs its API key.";
      $("key-input").focus();
      return;
    }
    $("status").textContent = e.message;
    return;
  }
  $("key-form").hidden = true;
  $("status").textContent = info.models.map(m => m.name).join(", ");
  initChat(info);
  initData();
  document.body.dataset.ready = "1";
  showTab();
}

$("key-form").onsubmit = e => {
  e.preventDefault();
  setKey($("key-input").value);
  start();
};
window.addEventListener("hashchange", showTab);
showTab();
start();
