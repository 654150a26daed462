// blipcap's search page: GET /v1/search for captions, GET /v1/thumbnail/{id} for the pictures.
// Pictures are fetched with the API key (an <img src> could not send it) and shown from blob URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 24;
const grid = $("grid");
const statusLine = $("status");
const viewer = $("viewer");
let current = { q: "", next: null, shown: 0, editable: false };
let opened = null; // the result shown in the viewer, and the button that opened it

function say(text) {
  statusLine.textContent = text;
}

function headers() {
  const key = $("api-key").value;
  return key ? { Authorization: "Bearer " + key } : {};
}

function needKey() {
  $("key-field").hidden = false;
  $("api-key").focus();
  say("This server needs an API key: enter it above, then search again.");
}

async function search(q, offset) {
  const url = `/v1/search?q=${encodeURIComponent(q)}&limit=${PAGE}&offset=${offset}`;
  let response, body;
  try {
    response = await fetch(url, { headers: headers() });
    body = await response.json().catch(() => null);
  } catch (err) {
    return say(`Could not reach the server (${err.message}).`);
  }
  if (response.status === 401) return needKey();
  if (!response.ok) return say((body && body.error) || `HTTP ${response.status}`);
  current = { q, next: body.next_offset, shown: offset + body.results.length, editable: !!body.editable };
  const first = body.results.map(addResult)[0];
  $("more").hidden = body.next_offset === null;
  if (!current.shown) {
    say(`No images match “${q}”. Try other words: what is in the picture, a colour, a place.`);
  } else {
    const more = body.next_offset === null ? "" : " (more below)";
    say(`${current.shown} image${current.shown === 1 ? "" : "s"} match “${q}”${more}.`);
  }
  if (offset && first) first.querySelector(".open").focus(); // keyboard users continue where the new page starts
}

function addResult(hit) {
  const li = $("result").content.firstElementChild.cloneNode(true);
  const img = li.querySelector(".thumb");
  img.alt = hit.caption;
  img.width = 320;
  img.height = 240;
  li.querySelector(".snippet").innerHTML = hit.snippet; // escaped by the server; only <mark> is markup
  li.querySelector(".name").textContent = hit.path.split(/[\\/]/).pop();
  li.querySelector(".open").addEventListener("click", (e) => show(hit, e.currentTarget));
  grid.append(li);
  picture(img, hit.thumbnail);
  return li;
}

async function picture(img, url) {
  try {
    const response = await fetch(url, { headers: headers() });
    if (response.status === 401) return needKey();
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      img.title = (body && body.error) || `HTTP ${response.status}`;
      img.classList.add("missing");
      return;
    }
    img.src = URL.createObjectURL(await response.blob());
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  } catch (err) {
    img.title = err.message;
  }
}

function show(hit, button) {
  opened = { hit, button };
  const img = $("viewer-image");
  img.removeAttribute("src");
  img.alt = hit.caption;
  $("viewer-caption").textContent = hit.caption;
  $("viewer-path").textContent = hit.path;
  $("edit").hidden = true;
  $("edit-open").hidden = !current.editable;
  $("copy").textContent = "Copy alt text";
  viewer.showModal();
  $("copy").focus();
  picture(img, hit.image);
}

async function copyAltText() {
  const text = opened.hit.caption;
  let copied = false;
  try {
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch (err) {
    // without clipboard permission (plain http on another host), fall back to a selection copy
    const area = document.createElement("textarea");
    area.value = text;
    viewer.append(area);
    area.select();
    copied = document.execCommand("copy");
    area.remove();
    $("copy").focus();
  }
  $("copy").textContent = copied ? "Copied" : "Copy failed";
  say(copied ? `Copied alt text: ${text}` : "Could not copy: select the caption and copy it.");
}

async function saveEdit(e) {
  e.preventDefault();
  const caption = $("edit-text").value.trim();
  if (!caption) return;
  const response = await fetch(`/v1/captions/${opened.hit.id}`, {
    method: "PUT", headers: { ...headers(), "Content-Type": "application/json" }, body: JSON.stringify({ caption }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) return say((body && body.error) || `HTTP ${response.status}`);
  opened.hit.caption = body.caption;
  $("viewer-caption").textContent = body.caption;
  $("viewer-image").alt = body.caption;
  const li = opened.button.closest(".result");
  li.querySelector(".snippet").textContent = body.caption;
  li.querySelector(".thumb").alt = body.caption;
  $("edit").hidden = true;
  say(`Saved the caption: ${body.caption}`);
}

function run(q) {
  grid.replaceChildren();
  $("more").hidden = true;
  const url = new URL(location.href);
  url.searchParams.set("q", q);
  history.replaceState(null, "", url);
  if (!q.trim()) return say("Type some words to search for.");
  say("Searching…");
  search(q, 0);
}

$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("q").value);
});
$("more").addEventListener("click", () => search(current.q, current.next));
$("copy").addEventListener("click", copyAltText);
$("close").addEventListener("click", () => viewer.close());
$("edit-open").addEventListener("click", () => {
  $("edit").hidden = false;
  $("edit-text").value = opened.hit.caption;
  $("edit-text").focus();
});
$("edit").addEventListener("submit", saveEdit);
viewer.addEventListener("close", () => opened && opened.button.focus()); // back where the user was
viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); }); // the backdrop

fetch("/readyz").then((r) => r.json()).then((body) => { $("caption-link").hidden = !body.model; }).catch(() => {});
const start = new URLSearchParams(location.search).get("q");
if (start) {
  $("q").value = start;
  run(start);
}
