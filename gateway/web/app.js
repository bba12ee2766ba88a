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

  // placeholder paints a photo's ThumbHash (base64, from the upload answer
  // or GET /photos/{id}) as a data URL, or returns "" without one. The
  // decoder follows the published ThumbHash algorithm (internal/thumbhash).
  function placeholder(b64) {
    if (!b64) return "";
    let hash;
    try { hash = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)); } catch (_) { return ""; }
    if (hash.length < 5) return "";
    const { PI, min, max, cos, round } = Math;
    const h24 = hash[0] | (hash[1] << 8) | (hash[2] << 16), h16 = hash[3] | (hash[4] << 8);
    const lDC = (h24 & 63) / 63, pDC = ((h24 >> 6) & 63) / 31.5 - 1, qDC = ((h24 >> 12) & 63) / 31.5 - 1;
    const lScale = ((h24 >> 18) & 31) / 31, hasAlpha = h24 >> 23;
    const pScale = ((h16 >> 3) & 63) / 63, qScale = ((h16 >> 9) & 63) / 63, landscape = h16 >> 15;
    const lxRaw = landscape ? (hasAlpha ? 5 : 7) : h16 & 7, lyRaw = landscape ? h16 & 7 : (hasAlpha ? 5 : 7);
    if (!lxRaw || !lyRaw) return "";
    const lx = max(3, lxRaw), ly = max(3, lyRaw);
    const aDC = hasAlpha ? (hash[5] & 15) / 15 : 1, aScale = (hash[5] >> 4) / 15;
    const start = hasAlpha ? 6 : 5;
    let index = 0;
    const channel = (nx, ny, scale) => {
      const ac = [];
      for (let cy = 0; cy < ny; cy++)
        for (let cx = cy ? 0 : 1; cx * ny < nx * (ny - cy); cx++, index++)
          ac.push((((hash[start + (index >> 1)] >> ((index & 1) << 2)) & 15) / 7.5 - 1) * scale);
      return ac;
    };
    const lAC = channel(lx, ly, lScale), pAC = channel(3, 3, pScale * 1.25), qAC = channel(3, 3, qScale * 1.25);
    const aAC = hasAlpha ? channel(5, 5, aScale) : [];
    const ratio = lxRaw / lyRaw;
    const w = round(ratio > 1 ? 32 : 32 * ratio), h = round(ratio > 1 ? 32 / ratio : 32);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(w, h);
    const fx = [], fy = [];
    for (let y = 0, i = 0; y < h; y++) {
      for (let x = 0; x < w; x++, i += 4) {
        let l = lDC, p = pDC, q = qDC, a = aDC;
        for (let cx = 0, n = max(lx, hasAlpha ? 5 : 3); cx < n; cx++) fx[cx] = cos(PI / w * (x + 0.5) * cx);
        for (let cy = 0, n = max(ly, hasAlpha ? 5 : 3); cy < n; cy++) fy[cy] = cos(PI / h * (y + 0.5) * cy);
        for (let cy = 0, j = 0; cy < ly; cy++)
          for (let cx = cy ? 0 : 1, f2 = fy[cy] * 2; cx * ly < lx * (ly - cy); cx++, j++) l += lAC[j] * fx[cx] * f2;
        for (let cy = 0, j = 0; cy < 3; cy++)
          for (let cx = cy ? 0 : 1, f2 = fy[cy] * 2; cx < 3 - cy; cx++, j++) { p += pAC[j] * fx[cx] * f2; q += qAC[j] * fx[cx] * f2; }
        if (hasAlpha)
          for (let cy = 0, j = 0; cy < 5; cy++)
            for (let cx = cy ? 0 : 1, f2 = fy[cy] * 2; cx < 5 - cy; cx++, j++) a += aAC[j] * fx[cx] * f2;
        const b = l - 2 / 3 * p, r = (3 * l - b + q) / 2, g = r - q;
        out.data[i] = max(0, 255 * min(1, r));
        out.data[i + 1] = max(0, 255 * min(1, g));
        out.data[i + 2] = max(0, 255 * min(1, b));
        out.data[i + 3] = max(0, 255 * min(1, a));
      }
    }
    ctx.putImageData(out, 0, 0);
    return canvas.toDataURL();
  }

  // paint sets img's background to the placeholder until the image loads.
  function paint(img, url) {
    if (!url) return;
    img.style.backgroundImage = "url(" + url + ")";
    img.style.backgroundSize = "cover";
    img.addEventListener("load", () => { img.style.backgroundImage = ""; }, { once: true });
  }

  function show(photo) {
    current = photo;
    result.hidden = false;
    $("result-id").textContent = photo.id;
    const when = photo.uploaded ? new Date(photo.uploaded).toLocaleString() : "";
    $("result-meta").textContent = "Original " + photo.width + " × " + photo.height + " px" + (when ? " · uploaded " + when : "");
    sizesEl.replaceChildren();
    const tpl = $("size-tpl");
    const ph = placeholder(photo.thumbhash);
    for (const letter of LETTERS) {
      const node = tpl.content.firstElementChild.cloneNode(true);
      const info = (photo.sizes || {})[letter] || {};
      const url = (photo.urls || {})[letter] || "/photos/" + photo.id + "/" + letter;
      node.querySelector(".thumb").href = url;
      const img = node.querySelector("img");
      const webp = (photo.webp_urls || {})[letter];
      const source = node.querySelector("source");
      if (webp) source.srcset = webp; else source.remove();
      paint(img, ph);
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
      paint(img, placeholder(p.thumbhash));
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
