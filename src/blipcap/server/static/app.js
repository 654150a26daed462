// blipcap's web page: pick, drop or paste images; each is captioned by POST /v1/caption.
"use strict";

const $ = (id) => document.getElementById(id);
const results = $("results");
const statusLine = $("status");
const cards = [];

function settings() {
  const beams = Math.min(8, Math.max(1, parseInt($("beams").value, 10) || 1));
  const options = { num_beams: beams };
  const prompt = $("prompt").value.trim();
  if (prompt) {
    options.prompt = prompt;
    options.keep_prompt = true; // alt text should read as a whole sentence
  }
  return options;
}

function say(text) {
  statusLine.textContent = text;
}

function addFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  for (const file of files) {
    const card = makeCard(file);
    cards.push(card);
    results.append(card.li);
    caption(card);
  }
  $("redo").hidden = false;
  say(`Captioning ${files.length} image${files.length > 1 ? "s" : ""}…`);
}

function makeCard(file) {
  const li = $("card").content.firstElementChild.cloneNode(true);
  const card = {
    file, li,
    img: li.querySelector(".thumb"),
    name: li.querySelector(".name"),
    text: li.querySelector(".caption"),
    meta: li.querySelector(".meta"),
    copy: li.querySelector(".copy"),
    retry: li.querySelector(".retry"),
    caption: "",
  };
  card.img.addEventListener("error", () => card.img.removeAttribute("src")); // not an image: no broken icon
  card.img.src = URL.createObjectURL(file);
  card.name.textContent = file.name || "pasted image";
  card.copy.addEventListener("click", () => copyAltText(card));
  card.retry.addEventListener("click", () => caption(card));
  return card;
}

async function caption(card) {
  card.li.className = "card pending";
  card.text.textContent = "Captioning…";
  card.meta.textContent = "";
  card.copy.disabled = true;
  card.retry.hidden = true;
  const form = new FormData();
  form.append("image", card.file, card.file.name || "image");
  form.append("options", JSON.stringify(settings()));
  const headers = {};
  const key = $("api-key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  let response, body;
  try {
    response = await fetch("/v1/caption", { method: "POST", body: form, headers });
    body = await response.json().catch(() => null);
  } catch (err) {
    return fail(card, `Could not reach the server (${err.message}).`);
  }
  if (response.status === 401) {
    $("key-field").hidden = false;
    $("api-key").focus();
    return fail(card, "This server needs an API key: enter it above, then choose Try again.");
  }
  const entry = Array.isArray(body) ? body[0] : null;
  if (entry && !entry.error) return done(card, entry);
  const retryAfter = response.headers.get("Retry-After");
  const reason = (entry && entry.error) || (body && body.error) || `HTTP ${response.status}`;
  fail(card, retryAfter ? `${reason} (retry in ${retryAfter} s)` : reason);
}

function done(card, entry) {
  card.caption = entry.generated_text;
  card.li.className = "card done";
  card.text.textContent = entry.generated_text;
  card.img.alt = entry.generated_text;
  card.meta.textContent = typeof entry.score === "number" ? `score ${entry.score.toFixed(3)}` : "";
  card.copy.disabled = false;
  card.copy.hidden = false;
  progress();
}

function fail(card, message) {
  card.li.className = "card error";
  card.text.textContent = message;
  card.copy.hidden = true;
  card.retry.hidden = false;
  progress();
}

function progress() {
  // one summary for the status line; each caption is announced by its own live region
  const count = (state) => cards.filter((c) => c.li.classList.contains(state)).length;
  const [ok, failed, pending] = [count("done"), count("error"), count("pending")];
  const noun = cards.length === 1 ? "image" : "images";
  let text = `Captioned ${ok} of ${cards.length} ${noun}`;
  if (failed) text += `; ${failed} failed`;
  if (pending) text += `; ${pending} in progress`;
  say(text + ".");
}

async function copyAltText(card) {
  let copied = false;
  try {
    await navigator.clipboard.writeText(card.caption);
    copied = true;
  } catch (err) {
    // without clipboard permission (plain http on another host), fall back to a selection copy
    const area = document.createElement("textarea");
    area.value = card.caption;
    document.body.append(area);
    area.select();
    copied = document.execCommand("copy");
    area.remove();
    card.copy.focus();
  }
  card.copy.textContent = copied ? "Copied" : "Copy failed";
  say(copied ? `Copied alt text: ${card.caption}` : "Could not copy: select the caption and copy it.");
  setTimeout(() => { card.copy.textContent = "Copy alt text"; }, 2000);
}

const drop = $("drop");
const picker = $("file");
$("pick").addEventListener("click", () => picker.click());
picker.addEventListener("change", () => {
  addFiles(picker.files);
  picker.value = "";
});
$("redo").addEventListener("click", () => {
  cards.forEach(caption);
  say(`Captioning ${cards.length} image${cards.length > 1 ? "s" : ""} again…`);
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  addFiles(e.dataTransfer.files);
});
// a file dropped beside the zone should not make the browser navigate away from the page
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
document.addEventListener("paste", (e) => addFiles(e.clipboardData && e.clipboardData.files));
$("settings").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field must not reload
// serve --index: the search page is one link away
fetch("/readyz").then((r) => r.json()).then((body) => { $("search-link").hidden = !body.index; }).catch(() => {});
