// Chat: images and videos per turn (picked, dropped or pasted; large images resized here before upload; videos
// go as they are, under the server's media limits), the reply streamed from /v1/chat/completions, rendered as
// safe Markdown; per image its model size and tokens and the grounding boxes drawn (/ui/api/inspect).
import { get, post, streamChat } from "./api.js";
import { addBox } from "./draw.js";
import { renderMarkdown } from "./markdown.js";

const MAX_SIDE = 1600;          // longer images are resized in the browser before upload
const MAX_UPLOAD = 2 * 2 ** 20; // and so are those over 2 MB as files
const $ = id => document.getElementById(id);

let models = [];
let pending = [];   // attachments of the next turn: {kind: "image" | "video", url, width, height, note}
let turns = [];     // [{role, content, images: [{kind, url, width, height, frame, caption}]}]

function kb(bytes) { return bytes > 2 ** 20 ? (bytes / 2 ** 20).toFixed(1) + " MB" : Math.round(bytes / 1024) + " KB"; }

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// The file as a data: URL, resized to MAX_SIDE when larger; a file the browser cannot decode is sent as it is
// (the server then says what is wrong with it).
async function prepareImage(file) {
  const original = await readAsDataURL(file);
  let bitmap;
  try { bitmap = await createImageBitmap(file); }
  catch (e) { return { kind: "image", url: original, width: 0, height: 0, note: `${file.name}: ${kb(file.size)}, not decoded by the browser; sent as is` }; }
  const { width, height } = bitmap;
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  if (scale === 1 && file.size <= MAX_UPLOAD) {
    return { kind: "image", url: original, width, height, note: `${width}×${height}, ${kb(file.size)}` };
  }
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const url = canvas.toDataURL("image/jpeg", 0.9);
  const bytes = Math.round((url.length - url.indexOf(",") - 1) * 3 / 4);
  return { kind: "image", url, width: canvas.width, height: canvas.height,
           note: `${width}×${height}, ${kb(file.size)} → resized to ${canvas.width}×${canvas.height}, ${kb(bytes)}` };
}

// A video is sent as it is (the server samples its frames by the family's rules and applies its limits).
async function prepareVideo(file) {
  return { kind: "video", url: await readAsDataURL(file), width: 0, height: 0, note: `${file.name}: video, ${kb(file.size)}` };
}

async function addFiles(files) {
  for (const file of files) {
    if (file.type.startsWith("video/")) pending.push(await prepareVideo(file));
    else if (file.type.startsWith("image/") || file.type === "") pending.push(await prepareImage(file));
  }
  showPending();
}

function preview(item) {
  const el = document.createElement(item.kind === "video" ? "video" : "img");
  el.src = item.url;
  if (item.kind === "video") { el.muted = true; el.controls = true; } else el.alt = "image";
  return el;
}

function showPending() {
  const box = $("attachments");
  box.replaceChildren();
  pending.forEach((image, k) => {
    const item = document.createElement("figure");
    const img = preview(image);
    const caption = document.createElement("figcaption");
    caption.textContent = image.note;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove";
    remove.onclick = () => { pending.splice(k, 1); showPending(); };
    item.append(img, caption, remove);
    box.append(item);
  });
}

function message(role) {
  const div = document.createElement("div");
  div.className = "message " + role;
  $("history").append(div);
  return div;
}

function showTurn(turn) {
  const div = message(turn.role);
  if (turn.images && turn.images.length) {
    const row = document.createElement("div");
    row.className = "images";
    for (const image of turn.images) {
      const figure = document.createElement("figure");
      image.frame = document.createElement("div");
      image.frame.className = "boxed";
      image.frame.append(preview(image));
      image.caption = document.createElement("figcaption");
      image.caption.textContent = image.note;
      figure.append(image.frame, image.caption);
      row.append(figure);
    }
    div.append(row);
  }
  const text = document.createElement("div");
  text.className = "text";
  if (turn.role === "user") text.textContent = turn.content;
  div.append(text);
  return text;
}

function showError(text) {
  const div = message("error");
  div.textContent = text;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const turn of turns) {
    if (turn.role === "user") {
      const parts = turn.images.map(m => m.kind === "video" ? { type: "video_url", video_url: { url: m.url } }
                                                            : { type: "image_url", image_url: { url: m.url } });
      if (turn.content) parts.push({ type: "text", text: turn.content });
      messages.push({ role: "user", content: parts });
    } else {
      messages.push({ role: "assistant", content: turn.content });
    }
  }
  const body = { model: $("model").value, messages, max_tokens: Number($("max-tokens").value) || undefined,
                 temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

function tokens(n) { return n === null || n === undefined ? "" : `, ${n} tokens`; }

// Per image the size and tokens the model saw, per video its tokens; the reply's boxes drawn on their image.
async function inspect(body, reply) {
  const info = await post("/ui/api/inspect", { ...body, reply });
  const media = turns.flatMap(t => t.images || []);
  const images = media.filter(m => m.kind === "image");
  info.images.forEach((seen, k) => {
    const image = images[k];
    if (image && image.caption) {
      const size = seen.model ? ` ${seen.model[1]}×${seen.model[0]}` : "";
      image.caption.textContent = `${image.note}; model sees${size}${tokens(seen.tokens)}`;
    }
  });
  (info.videos || []).forEach((seen, k) => {
    const video = media.filter(m => m.kind === "video")[k];
    if (video && video.caption) video.caption.textContent = `${video.note}; model sees${tokens(seen.tokens)}`;
  });
  info.boxes.forEach((box, k) => {
    const image = images[box.image_id];
    if (image) addBox(image.frame, box, image.width || size(image).width, image.height || size(image).height, k);
  });
}

function size(image) {
  const img = image.frame.querySelector("img");
  return { width: img.naturalWidth, height: img.naturalHeight };
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text && !pending.length) return;
  const turn = { role: "user", content: text, images: pending };
  pending = [];
  showPending();
  $("prompt").value = "";
  turns.push(turn);
  showTurn(turn);
  const body = requestBody();
  const target = message("assistant");
  target.classList.add("streaming");
  $("send").disabled = true;
  try {
    const reply = await streamChat(body, (delta, whole) => target.replaceChildren(renderMarkdown(whole)));
    target.classList.remove("streaming");
    target.replaceChildren(renderMarkdown(reply));
    turns.push({ role: "assistant", content: reply, images: [] });
    if (body.messages.some(m => Array.isArray(m.content) && m.content.some(p => p.type !== "text"))) {
      await inspect(body, reply);
    }
  } catch (e) {
    target.remove();
    turns.pop();  // the turn was refused: it stays on screen with the error, not in the conversation
    showError(e.message);
  } finally {
    $("send").disabled = false;
  }
}

function showModels(info) {
  models = info.models;
  $("files").accept = models.some(m => m.video) ? "image/*,video/*" : "image/*";
  $("model").replaceChildren(...models.map(m => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.adapter ? `${m.name} (adapter)` : m.name;
    return option;
  }));
}

// Chat with a model the server has just loaded (a run's checkpoint, from the Train tab).
export async function chatWith(name) {
  showModels(await get("/ui/api/info"));
  $("model").value = name;
  location.hash = "#chat";
}

export function initChat(info) {
  showModels(info);
  $("send").onclick = send;
  $("prompt").onkeydown = e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); };
  $("files").onchange = e => { addFiles([...e.target.files]); e.target.value = ""; };
  $("clear").onclick = () => { turns = []; pending = []; showPending(); $("history").replaceChildren(); };
  const compose = $("compose");
  compose.ondragover = e => { e.preventDefault(); compose.classList.add("dropping"); };
  compose.ondragleave = () => compose.classList.remove("dropping");
  compose.ondrop = e => { e.preventDefault(); compose.classList.remove("dropping"); addFiles([...e.dataTransfer.files]); };
  document.addEventListener("paste", e => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
}
