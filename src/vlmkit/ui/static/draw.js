// Boxes on images and line plots, drawn from numbers only (labels are set with textContent).

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080"];

// An <img> in a frame with labelled boxes; `boxes` in pixels of an image `width` x `height`.
export function boxedImage(src, width, height, boxes = []) {
  const frame = document.createElement("div");
  frame.className = "boxed";
  const img = document.createElement("img");
  img.src = src;
  img.alt = `image ${width}x${height}`;
  frame.append(img);
  boxes.forEach((box, k) => addBox(frame, box, width, height, k));
  return frame;
}

export function addBox(frame, { bbox, ref }, width, height, k = 0) {
  const [x1, y1, x2, y2] = bbox;
  const div = document.createElement("div");
  div.className = "box";
  div.style.left = (100 * x1 / width) + "%";
  div.style.top = (100 * y1 / height) + "%";
  div.style.width = (100 * (x2 - x1) / width) + "%";
  div.style.height = (100 * (y2 - y1) / height) + "%";
  div.style.borderColor = COLOURS[k % COLOURS.length];
  const label = document.createElement("span");
  label.textContent = ref || `box ${k + 1}`;
  label.style.background = COLOURS[k % COLOURS.length];
  div.append(label);
  frame.append(div);
}

// Series [{name, points: [[x, y], ...]}] as lines on a canvas, each with its own y range (loss and lr differ).
export function plot(canvas, series, title) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#333";
  ctx.fillText(title, pad, 14);
  const xs = series.flatMap(s => s.points.map(p => p[0]));
  if (!xs.length) { ctx.fillText("no points yet", pad, h / 2); return; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  series.forEach((s, k) => {
    if (!s.points.length) return;
    const ys = s.points.map(p => p[1]);
    const y0 = Math.min(...ys), y1 = Math.max(...ys);
    const span = y1 - y0 || Math.abs(y1) || 1;
    ctx.strokeStyle = COLOURS[k % COLOURS.length];
    ctx.fillStyle = ctx.strokeStyle;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => {
      const px = pad + (w - 2 * pad) * (x - x0) / (x1 - x0);
      const py = h - pad - (h - 2 * pad) * (y - y0 + (y1 === y0 ? span / 2 : 0)) / span;
      if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      ctx.fillRect(px - 2, py - 2, 4, 4);
    });
    ctx.stroke();
    ctx.fillText(`${s.name} ${ys[ys.length - 1].toPrecision(4)}`, pad + 150 * k, h - 8);
  });
}
