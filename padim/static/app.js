// padim operator page: each picked or dropped image goes to POST /heatmap, which answers the
// heatmap PNG with the score, probability, label, threshold and warnings in X-Padim-* headers.
"use strict";

const drop = document.getElementById("drop");
const picker = document.getElementById("files");
const results = document.getElementById("results");
const keyInput = document.getElementById("api-key");

keyInput.value = sessionStorage.getItem("padim-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("padim-api-key", keyInput.value));

function authHeaders() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function showModel() {
  const target = document.getElementById("model");
  try {
    const response = await fetch("model", { headers: authHeaders() });
    if (!response.ok) throw new Error((await response.json()).detail);
    const info = await response.json();
    // A model file and an export (which has a format, not a training-set size) share the other fields.
    const parts = [info["format"] ? `${info["backbone"]} (${info["format"]} export)` : info["backbone"],
                   `input ${info["input size (h, w)"].join("×")}`];
    if (info["training images"] !== undefined) parts.push(`${info["training images"]} training images`);
    const check = info["whole-image check"];  // absent from models and exports made before it
    target.textContent = `${parts.join(", ")}; calibration: ${info["calibration"]}` +
                         (check ? `; whole-image check: ${check}` : "");
  } catch (err) {
    target.textContent = `model: ${err.message}`;
  }
}

async function inspect(file) {
  const card = element("div", "card");
  card.dataset.filename = file.name;
  card.appendChild(element("h2", "", file.name));
  const status = element("div", "numbers", "scoring…");
  card.appendChild(status);
  results.prepend(card);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("heatmap", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
      throw new Error(`${response.status}: ${detail}`);
    }
    const h = (name) => response.headers.get(`X-Padim-${name}`);
    const label = h("Label");
    status.textContent = "";
    status.appendChild(element("span", `label ${label}`, label));
    status.appendChild(element("span", "score", `score ${Number(h("Score")).toPrecision(4)}`));
    status.appendChild(element("span", "probability", `p(defect) ${Number(h("Probability")).toFixed(3)}`));
    status.appendChild(element("span", "threshold", `threshold ${Number(h("Threshold")).toPrecision(4)}`));
    for (const warning of JSON.parse(h("Warnings") || "[]")) {  // why this score may be off
      card.appendChild(element("div", "warning", `warning: ${warning}`));
    }
    const image = element("img", "heatmap");
    image.alt = `heatmap of ${file.name}`;
    image.src = URL.createObjectURL(await response.blob());
    card.appendChild(image);
    card.dataset.state = "done";
  } catch (err) {
    status.textContent = "";
    status.appendChild(element("span", "error", err.message));
    card.dataset.state = "error";
  }
}

async function inspectAll(files) {
  for (const file of files) await inspect(file);  // one at a time: the newest result on top
}

drop.addEventListener("click", () => picker.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") picker.click(); });
picker.addEventListener("change", () => { inspectAll([...picker.files]); picker.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  inspectAll([...e.dataTransfer.files]);  // the server says which ones are not images
});
keyInput.addEventListener("change", showModel);
showModel();
