// The haybale gateway's upload page. It talks only to this gateway's API;
// images are loaded from the URLs the directory hands out.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form"), drop = $("drop"), fileInput = $("file");
  const keyInput = $("apikey"), uploadBtn = $("upload-btn"), progress = $("progress");
  const statusEl = $("status"), result = $("result"), sizesEl = $("sizes");
  const recentEl = $("recent"), recentEmpty = $("recent-empty");
  const LETTERS = ["t", "s", "m", "l"];
  const NAMES = { t: "thumbnail", s: "small", m: "medium", l: "large" };
  let picked = null;
  let current = null;

  keyInput.value = sessionStorage.getItem("haybale-api-key") || "";

  function setStatus(msg, kind) {
    statusEl.textContent = msg;
    statusEl.className = "status" + (kind ? " " + kind : "");
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }

  function authHeaders() {
    const key = keyInput.value.trim();
    sessionStorage.setItem("haybale-api-key", key);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function pick(file) {
    picked = file || null;
    $("picked").textContent = picked ? picked.name + " · " + formatBytes(picked.size) : "";
    uploadBtn.disabled = !picked;
    setStatus("");
  }

  fileInput.addEventListener("change", () => pick(fileInput.files[0]));
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => {
    if (e.dataTransfer && e.dataTransfer.files.length) pick(e.dataTransfer.files[0]);
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!picked) return;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/photos");
    const headers = authHeaders();
    for (const h in headers) xhr.setRequestHeader(h, headers[h]);
    xhr.setRequestHeader("Content-Type", picked.type || "application/octet-stream");
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) progress.value = (100 * ev.loaded) / ev.total;
      if (ev.loaded === ev.total) setStatus("Resizing and storing…");
    });
    xhr.addEventListener("load", () => {
      progress.hidden = true;
      uploadBtn.disabled = false;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201) {
        setStatus("Stored as " + body.id + ".", "ok");
        show(body);
        loadRecent();
      } else {
        setStatus("Upload refused (" + xhr.status + "): " + (body.error || xhr.statusText), "error");
      }
    });
    xhr.addEventListener("error", () => {
      progress.hidden = true;
      uploadBtn.disabled = false;
      setStatus("The upload failed: the gateway could not be reached.", "error");
    });
    progress.value = 0;
    progress.hidden = false;
    uploadBtn.disabled = true;
    setStatus("Uploading " + picked.name + "…");
    xhr.send(picked);
  });

  function show(photo) {
    current = photo;
    result.hidden = false;
    $("result-id").textContent = photo.id;
    const when = photo.uploaded ? new Date(photo.uploaded).toLocaleString() : "";
    $("result-meta").textContent = "Original " + photo.width + " × " + photo.height + " px" + (when ? " · uploaded " + when : "");
    sizesEl.replaceChildren();
    const tpl = $("size-tpl");
    for (const letter of LETTERS) {
      const node = tpl.content.firstElementChild.cloneNode(true);
      const info = (photo.sizes || {})[letter] || {};
      const url = (photo.urls || {})[letter] || "/photos/" + photo.id + "/" + letter;
      node.querySelector(".thumb").href = url;
      const img = node.querySelector("img");
      const webp = (photo.webp_urls || {})[letter];
      const source = node.querySelector("source");
      if (webp) source.srcset = webp; else source.remove();
      img.src = url;
      img.alt = NAMES[letter] + " size of photo " + photo.id;
      node.querySelector(".letter").textContent = letter;
      node.querySelector(".dims").textContent = info.width ? info.width + " × " + info.height : NAMES[letter];
      node.querySelector(".bytes").textContent = info.bytes
        ? formatBytes(info.bytes) + " · " + info.content_type + (info.webp_bytes ? " · WebP " + formatBytes(info.webp_bytes) : "")
        : "";
      const urlInput = node.querySelector(".url");
      urlInput.value = url;
      urlInput.addEventListener("focus", () => urlInput.select());
      sizesEl.appendChild(node);
    }
  }

  $("delete-btn").addEventListener("click", async () => {
    if (!current || !confirm("Delete photo " + current.id + " from every replica?")) return;
    const resp = await fetch("/photos/" + encodeURIComponent(current.id), { method: "DELETE", headers: authHeaders() });
    let body = {};
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    if (resp.ok) {
      setStatus("Deleted " + current.id + ".", "ok");
      result.hidden = true;
      current = null;
      loadRecent();
    } else {
      setStatus("Delete refused (" + resp.status + "): " + (body.error || resp.statusText), "error");
    }
  });

  async function loadRecent() {
    let body;
    try {
      const resp = await fetch("/api/recent", { cache: "no-store", headers: authHeaders() });
      body = await resp.json();
    } catch (_) {
      return;
    }
    if (body.max_upload_bytes) $("limit").textContent = formatBytes(body.max_upload_bytes);
    if (body.api_key_required === false) keyInput.placeholder = "not required by this gateway";
    const photos = body.photos || [];
    recentEmpty.hidden = photos.length > 0;
    recentEl.replaceChildren();
    for (const p of photos) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.title = p.id;
      const pic = document.createElement("picture");
      const webp = (p.webp_urls || {}).t;
      if (webp) {
        const source = document.createElement("source");
        source.type = "image/webp";
        source.srcset = webp;
        pic.appendChild(source);
      }
      const img = document.createElement("img");
      img.src = (p.urls || {}).t || "/photos/" + p.id + "/t";
      img.alt = "thumbnail of " + p.id;
      img.loading = "lazy";
      pic.appendChild(img);
      const cap = document.createElement("span");
      cap.className = "cap";
      cap.textContent = p.width + " × " + p.height;
      b.append(pic, cap);
      b.addEventListener("click", () => { show(p); result.scrollIntoView({ behavior: "smooth" }); });
      li.appendChild(b);
      recentEl.appendChild(li);
    }
  }

  $("refresh-btn").addEventListener("click", loadRecent);
  loadRecent();
})();
