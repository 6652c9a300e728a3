// Drawing answers for a person: prediction bars, the image heat map, highlighted text tokens, and the
// per-frame / per-band bars of an audio explanation. Each function fills the element it is given.

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function percent(probability) {
  const value = probability * 100;
  return `${value >= 10 ? value.toFixed(1) : value >= 0.01 ? value.toFixed(2) : value.toExponential(1)}%`;
}

export function milliseconds(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// {label: probability}, highest first (the handlers' answer) → a list of labelled bars.
export function predictionBars(prediction) {
  const list = element("ol", {className: "bars", "aria-label": "top labels, most likely first"});
  for (const [label, probability] of Object.entries(prediction)) {
    const fill = element("span", {className: "fill"});
    fill.style.width = `${Math.max(0, Math.min(1, probability)) * 100}%`;
    list.append(element("li", {"data-label": label, "data-probability": probability},
      element("span", {className: "label", text: label}),
      element("span", {className: "bar", "aria-hidden": "true"}, fill),
      element("span", {className: "value", text: percent(probability)})));
  }
  return list;
}

// An error as TorchServe or the handler answered it: its status, type and message, word for word.
export function errorBox(error) {
  return element("div", {className: "error", role: "alert"},
    element("strong", {className: "error-title", text: `${error.status || "no answer"} ${error.type}`}),
    element("p", {className: "error-message", text: error.message}));
}

// Evidence for the target in green, against it in red (the colours of Captum's image heat map, which
// the handler's heatmap_png uses), transparency growing with |attribution|.
const FOR = [0, 150, 60];
const AGAINST = [215, 30, 30];

function strength(value, largest) {
  return largest > 0 ? Math.min(1, Math.abs(value) / largest) : 0;
}

function largestMagnitude(values) {
  return values.reduce((largest, value) => Math.max(largest, Math.abs(value)), 0);
}

export function signedColour(value, largest, opacity = 1) {
  const [r, g, b] = value >= 0 ? FOR : AGAINST;
  return `rgba(${r}, ${g}, ${b}, ${(opacity * strength(value, largest)).toFixed(3)})`;
}

// Where the model's input lies in the picture: torchvision's Resize(resize) scales the shorter side to
// `resize`, then CenterCrop(crop) keeps the centre. The attribution grid covers that square only.
export function modelInputRegion(width, height, preprocess) {
  const resize = Array.isArray(preprocess.resize) ? null : preprocess.resize;
  const crop = Array.isArray(preprocess.crop) ? preprocess.crop : [preprocess.crop, preprocess.crop];
  // Resize([h, w]) stretches to that size: the crop is then a share of each side.
  const scaleX = resize ? resize / Math.min(width, height) : preprocess.resize[1] / width;
  const scaleY = resize ? resize / Math.min(width, height) : preprocess.resize[0] / height;
  const regionWidth = Math.min(width, crop[1] / scaleX);
  const regionHeight = Math.min(height, crop[0] / scaleY);
  return {x: (width - regionWidth) / 2, y: (height - regionHeight) / 2, width: regionWidth, height: regionHeight};
}

// The picture on one canvas, the attribution grid over the model's input region on another stacked on it.
export function imageHeatMap(container, bitmap, explanation, preprocess, opacity) {
  const box = 360;
  const scale = Math.min(box / bitmap.width, box / bitmap.height, 8);
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const picture = element("canvas", {className: "picture", width, height});
  const context = picture.getContext("2d");
  context.imageSmoothingEnabled = scale < 1;  // a small picture enlarged stays sharp, as the model saw pixels
  context.drawImage(bitmap, 0, 0, width, height);
  const overlay = element("canvas", {className: "heat-map", width, height, "data-target": explanation.target,
    role: "img", "aria-label": `attributions for ${explanation.target}: green for, red against`});
  const region = modelInputRegion(bitmap.width, bitmap.height, preprocess);
  const rows = explanation.attributions.length;
  const columns = rows ? explanation.attributions[0].length : 0;
  const largest = largestMagnitude(explanation.attributions.flat());
  const draw = overlay.getContext("2d");
  const cellWidth = (region.width * scale) / columns;
  const cellHeight = (region.height * scale) / rows;
  explanation.attributions.forEach((row, r) => row.forEach((value, c) => {
    draw.fillStyle = signedColour(value, largest, opacity);
    // Cells rounded outwards to whole pixels, so that neighbours leave no seam between them.
    const x = Math.floor(region.x * scale + c * cellWidth);
    const y = Math.floor(region.y * scale + r * cellHeight);
    draw.fillRect(x, y, Math.ceil(region.x * scale + (c + 1) * cellWidth) - x, Math.ceil(region.y * scale + (r + 1) * cellHeight) - y);
  }));
  if (region.width < bitmap.width - 0.5 || region.height < bitmap.height - 0.5) {
    draw.setLineDash([4, 3]);
    draw.strokeStyle = "rgba(0, 0, 0, 0.7)";
    draw.strokeRect(region.x * scale + 0.5, region.y * scale + 0.5, region.width * scale - 1, region.height * scale - 1);
  }
  const stack = element("div", {className: "heat-map-stack"}, picture, overlay);
  stack.style.width = `${width}px`;
  stack.style.height = `${height}px`;
  container.replaceChildren(stack);
  return overlay;
}

// Python's str indices (the handler's offsets) count code points; JavaScript's count UTF-16 units.
// Array.from splits a string into code points, so its indices are Python's.
//
// Byte-level BPE can split one character into several tokens (an emoji's four UTF-8 bytes: up to four
// tokens, each with that character's offsets), or share a character between two tokens. Overlapping
// tokens are drawn as one span whose attribution is theirs summed (attributions add up: that is their
// completeness), listing each token in its title; every other token is a span of its own.
export function tokenGroups(tokens) {
  const ordered = tokens.map((token, index) => ({...token, index})).sort((a, b) => a.start - b.start || a.end - b.end);
  const groups = [];
  for (const token of ordered) {
    const last = groups[groups.length - 1];
    if (last && token.start < last.end) {
      last.members.push(token);
      last.end = Math.max(last.end, token.end);
      last.attribution += token.attribution;
    } else {
      groups.push({start: token.start, end: token.end, attribution: token.attribution, members: [token]});
    }
  }
  return groups;
}

export function highlightedText(text, tokens) {
  const characters = Array.from(text);
  const groups = tokenGroups(tokens);
  const largest = largestMagnitude(groups.map((group) => group.attribution));
  const paragraph = element("p", {className: "highlighted-text"});
  let position = 0;
  for (const group of groups) {
    if (group.start > position) paragraph.append(characters.slice(position, group.start).join(""));
    const title = group.members.map((token) => `${JSON.stringify(token.token)}: ${token.attribution}`).join("\n");
    const span = element("span", {className: "token", "data-start": group.start, "data-end": group.end,
      "data-attribution": group.attribution, "data-token-indices": group.members.map((token) => token.index).join(" "),
      title: group.members.length > 1 ? `${group.members.length} tokens, ${group.attribution.toFixed(6)} in all\n${title}` : title,
      tabindex: "0"}, characters.slice(group.start, group.end).join(""));
    span.style.backgroundColor = signedColour(group.attribution, largest, 0.85);
    paragraph.append(span);
    position = group.end;
  }
  if (position < characters.length) paragraph.append(characters.slice(position).join(""));
  return paragraph;
}

// The spans with the most weight either way, for reading without hovering.
export function strongestTokens(text, tokens, count = 5) {
  const characters = Array.from(text);
  const byWeight = tokenGroups(tokens).sort((a, b) => b.attribution - a.attribution);
  const describe = (group) => `${JSON.stringify(characters.slice(group.start, group.end).join(""))} ` +
    `${group.attribution >= 0 ? "+" : ""}${group.attribution.toFixed(3)}`;
  const positive = byWeight.filter((group) => group.attribution > 0).slice(0, count).map(describe);
  const negative = byWeight.filter((group) => group.attribution < 0).reverse().slice(0, count).map(describe);
  return element("dl", {className: "strongest"},
    element("dt", {text: "most for"}), element("dd", {text: positive.join(", ") || "none"}),
    element("dt", {text: "most against"}), element("dd", {text: negative.join(", ") || "none"}));
}

// A diverging bar chart: one bar per value from a zero line, `forColour` above (or right of) it,
// `againstColour` below (or left). Horizontal: values along x (time); vertical: along y, first at the bottom.
export function divergingBars(values, {horizontal, width, height, forColour, againstColour, label, axis}) {
  const canvas = element("canvas", {className: "diverging-bars", width, height, role: "img", "aria-label": label,
    "data-count": values.length});
  const context = canvas.getContext("2d");
  const largest = largestMagnitude(values) || 1;
  const margin = 4;
  context.fillStyle = "#f6f7f9";
  context.fillRect(0, 0, width, height);
  const along = horizontal ? width : height;
  const across = (horizontal ? height : width) - 2 * margin;
  const step = along / Math.max(1, values.length);
  values.forEach((value, i) => {
    const length = (Math.abs(value) / largest) * (across / 2);
    context.fillStyle = value >= 0 ? forColour : againstColour;
    if (horizontal) {
      const x = i * step;
      context.fillRect(x, value >= 0 ? height / 2 - length : height / 2, Math.max(1, step - (step > 3 ? 1 : 0)), length);
    } else {
      const y = height - (i + 1) * step;
      context.fillRect(value >= 0 ? width / 2 : width / 2 - length, y, length, Math.max(1, step - (step > 3 ? 1 : 0)));
    }
  });
  context.strokeStyle = "#555";
  context.beginPath();
  if (horizontal) { context.moveTo(0, height / 2); context.lineTo(width, height / 2); }
  else { context.moveTo(width / 2, 0); context.lineTo(width / 2, height); }
  context.stroke();
  return element("figure", {className: `chart ${horizontal ? "horizontal" : "vertical"}`}, canvas,
    element("figcaption", {text: axis}));
}
