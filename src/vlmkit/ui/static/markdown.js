// Model output as Markdown, built as DOM nodes whose text is always set with textContent: nothing in a reply
// is ever parsed as HTML, so no markup or script from a reply can run. Covers what replies use: paragraphs,
// headings, lists, fenced code, inline code, bold and italics.

function inline(parent, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    let node;
    if (token.startsWith("`")) { node = document.createElement("code"); node.textContent = token.slice(1, -1); }
    else if (token.startsWith("**")) { node = document.createElement("strong"); node.textContent = token.slice(2, -2); }
    else { node = document.createElement("em"); node.textContent = token.slice(1, -1); }
    parent.append(node);
    last = match.index + token.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

export function renderMarkdown(text) {
  const root = document.createElement("div");
  root.className = "markdown";
  const lines = text.split("\n");
  let list = null, paragraph = null;
  const close = () => { list = null; paragraph = null; };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      close();
      const pre = document.createElement("pre");
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      pre.textContent = code.join("\n");
      root.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    const item = line.match(/^\s*(?:[-*+]|\d+[.)])\s+(.*)$/);
    if (!line.trim()) { close(); continue; }
    if (heading) {
      close();
      const h = document.createElement("h" + (heading[1].length + 2));
      inline(h, heading[2]);
      root.append(h);
    } else if (item) {
      paragraph = null;
      if (!list) { list = document.createElement(/^\s*\d/.test(line) ? "ol" : "ul"); root.append(list); }
      const li = document.createElement("li");
      inline(li, item[1]);
      list.append(li);
    } else {
      list = null;
      if (paragraph) paragraph.append(document.createElement("br"));
      else { paragraph = document.createElement("p"); root.append(paragraph); }
      inline(paragraph, line);
    }
  }
  return root;
}
