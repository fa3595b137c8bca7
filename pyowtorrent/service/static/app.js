// The upload service's page: upload .zip datasets (a file input or drag-and-drop, a progress bar) and
// list the datasets with their magnet links, .torrent downloads and seeding figures, refreshed live.
//
// Plain JavaScript, no build step, no framework.  Every string from the service is put in the page as
// text (textContent), never as HTML; links are set only to magnet: and http(s): URLs.  The token is
// kept in sessionStorage (this tab only) and sent as a bearer header, never in a URL.
"use strict";

(function () {
  const TOKEN_KEY = "pyowtorrent.token";
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  const els = {
    app: $("app"),
    token: $("token"),
    forget: $("forget-token"),
    form: $("upload-form"),
    file: $("file"),
    dropzone: $("dropzone"),
    replace: $("replace"),
    uploadButton: $("upload-button"),
    progressBox: $("progress-box"),
    progressLabel: $("progress-label"),
    progress: $("progress"),
    percent: $("percent"),
    cancel: $("cancel"),
    uploadStatus: $("upload-status"),
    listStatus: $("list-status"),
    actionStatus: $("action-status"),
    table: $("table-wrap"),
    rows: $("rows"),
    empty: $("empty"),
    receivingBox: $("receiving-box"),
    receiving: $("receiving"),
  };

  // -- the token ---------------------------------------------------------------------------

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return ""; // storage refused (a privacy setting): the field alone holds it
    }
  }

  function token() {
    return els.token.value.trim();
  }

  function keepToken() {
    try {
      if (token()) sessionStorage.setItem(TOKEN_KEY, token());
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* not kept: it stays in the field */
    }
  }

  // Headers for a request; the token only when asked for (writes, and reads of a private service).
  function headers(withToken) {
    const h = { Accept: "application/json" };
    if (withToken && token()) h.Authorization = "Bearer " + token();
    return h;
  }

  function tokenIsSendable() {
    // A header value is Latin-1 text without control characters.
    return /^[\x20-\x7e\xa0-\xff]*$/.test(token());
  }

  // -- formatting ----------------------------------------------------------------------------

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

  function bytes(n) {
    if (typeof n !== "number" || !isFinite(n) || n < 0) return "?";
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + UNITS[i];
  }

  function rate(n) {
    return bytes(n) + "/s";
  }

  function count(n) {
    return typeof n === "number" && isFinite(n) ? String(n) : "?";
  }

  function text(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  function setText(el, value) {
    const t = text(value);
    if (el.textContent !== t) el.textContent = t;
  }

  function setAttr(el, name, value) {
    if (value === null || value === undefined) {
      if (el.hasAttribute(name)) el.removeAttribute(name);
    } else if (el.getAttribute(name) !== value) {
      el.setAttribute(name, value);
    }
  }

  // ``url`` if it is one of ``schemes`` (magnet:, http:, https:); otherwise null, and no link is made.
  function safeUrl(url, schemes) {
    if (typeof url !== "string") return null;
    try {
      const parsed = new URL(url, document.baseURI);
      return schemes.includes(parsed.protocol) ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function el(tag, className, content) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (content !== undefined) e.textContent = content;
    return e;
  }

  // -- answers from the service --------------------------------------------------------------

  function parseJson(body) {
    try {
      return JSON.parse(body);
    } catch (e) {
      return null;
    }
  }

  // A sentence for a refused request: the service's own message, and what to do about it.
  function refusal(status, doc, statusText, what) {
    const message = doc && typeof doc.error === "string" ? doc.error : statusText || "no explanation given";
    const code = doc && typeof doc.code === "string" ? doc.code : "";
    if (status === 401) {
      return what + " needs a token (401): enter your upload token above. The service says: " + message;
    }
    if (status === 403 && code === "token_refused") {
      return what + " was refused (403): " + message + ". Check the token above.";
    }
    return what + " was refused (" + status + "): " + message;
  }

  // -- messages under the upload form ------------------------------------------------------------

  function clearMessages() {
    els.uploadStatus.replaceChildren();
  }

  function message(kind, words) {
    const p = el("p", "message " + kind, words);
    p.dataset.kind = kind;
    els.uploadStatus.append(p);
    return p;
  }

  // -- uploads ---------------------------------------------------------------------------------

  const queue = [];
  let current = null; // the XMLHttpRequest under way

  function setProgress(fraction, label) {
    const pct = Math.max(0, Math.min(100, Math.floor(fraction * 100)));
    els.progress.value = pct;
    setText(els.percent, pct + "%");
    setAttr(els.progress, "aria-valuetext", pct + "%");
    if (label !== undefined) setText(els.progressLabel, label);
  }

  function enqueue(files) {
    const list = Array.from(files || []);
    if (list.length === 0) return;
    if (current === null && queue.length === 0) clearMessages();
    for (const f of list) queue.push(f);
    if (current === null) next();
  }

  function next() {
    const file = queue.shift();
    if (file === undefined) {
      current = null;
      els.progressBox.hidden = true;
      els.uploadButton.disabled = false;
      els.form.reset(); // the file chosen and "replace": the token is outside the form, kept
      return;
    }
    uploadOne(file).then(next);
  }

  function uploadOne(file) {
    const name = file.name;
    if (!/\.zip$/i.test(name)) {
      message("error", name + " is not a .zip: the service takes .zip datasets only.");
      return Promise.resolve();
    }
    if (!tokenIsSendable()) {
      message("error", "The token holds characters a header cannot carry: check it.");
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      current = xhr;
      const left = queue.length ? " (" + queue.length + " more waiting)" : "";
      els.uploadButton.disabled = true;
      els.progressBox.hidden = false;
      setProgress(0, "Uploading " + name + left);
      xhr.open("POST", "uploads" + (els.replace.checked ? "?replace=1" : ""));
      const h = headers(true);
      for (const k of Object.keys(h)) xhr.setRequestHeader(k, h[k]);
      xhr.upload.onprogress = (e) => {
        if (!e.lengthComputable || e.total === 0) return;
        if (e.loaded >= e.total) {
          setProgress(1, "Sent " + name + ": the service is checking the zip and making its torrent");
        } else {
          setProgress(e.loaded / e.total);
        }
      };
      const done = () => {
        current = null;
        resolve();
      };
      xhr.onload = () => {
        const doc = parseJson(xhr.responseText);
        if (xhr.status === 201 && doc && typeof doc.name === "string") {
          setProgress(1);
          const what = (doc.replaced ? "Replaced " : "Published ") + doc.name + " (" + bytes(doc.size) + ")";
          if (doc.error) message("error", what + ", but it is not seeding: " + doc.error);
          else message("ok", what + ": it is seeding now.");
          refresh();
        } else {
          message("error", refusal(xhr.status, doc, xhr.statusText, "The upload of " + name));
        }
        done();
      };
      xhr.onerror = () => {
        message(
          "error",
          "The upload of " + name + " failed: the connection to the service ended before it answered" +
            " (the service may have stopped, or refused the file without reading it all)."
        );
        done();
      };
      xhr.onabort = () => {
        message("error", "The upload of " + name + " was cancelled: nothing was published.");
        done();
      };
      const form = new FormData();
      form.append("file", file, name);
      xhr.send(form);
    });
  }

  // -- drag and drop -----------------------------------------------------------------------------

  function hasFiles(e) {
    return !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  }

  let dragDepth = 0;
  els.dropzone.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth += 1;
    els.dropzone.classList.add("dragover");
  });
  els.dropzone.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    els.dropzone.classList.add("dragover");
  });
  els.dropzone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) els.dropzone.classList.remove("dragover");
  });
  els.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    dragDepth = 0;
    els.dropzone.classList.remove("dragover");
    if (e.dataTransfer) enqueue(e.dataTransfer.files);
  });
  // A file dropped beside the zone is not opened by the browser in place of the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (hasFiles(e)) e.preventDefault();
    });
  }

  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (els.file.files.length === 0) {
      clearMessages();
      message("error", "Choose a .zip file first (or drag one onto the box).");
      return;
    }
    enqueue(els.file.files);
  });

  els.cancel.addEventListener("click", () => {
    queue.length = 0;
    if (current !== null) current.abort();
  });

  // -- the list ----------------------------------------------------------------------------------

  let privateReads = false; // learned from a 401 on the list: reads need the token too
  const rows = new Map(); // dataset name -> its row's elements

  function makeRow(name) {
    const tr = el("tr");
    const r = { tr: tr };
    const nameCell = el("th");
    nameCell.scope = "row";
    r.name = el("span", "name", name);
    r.detail = el("span", "detail");
    nameCell.append(r.name, r.detail);
    r.size = el("td", "num size");
    r.state = el("td", "state");
    r.stateName = el("span", "state-name");
    r.error = el("span", "error-text");
    r.state.append(r.stateName, r.error);
    r.peers = el("td", "num peers");
    r.swarm = el("td", "num swarm");
    r.rate = el("td", "num rate");
    r.uploaded = el("td", "num uploaded");
    const links = el("td", "links");
    r.magnet = el("a", "magnet", "Magnet");
    r.torrent = el("a", "torrent", ".torrent");
    r.copy = el("button", "copy", "Copy magnet");
    r.copy.type = "button";
    r.copy.setAttribute("aria-label", "Copy the magnet link of " + name);
    r.magnet.setAttribute("aria-label", "Magnet link of " + name);
    r.torrent.setAttribute("aria-label", "The .torrent of " + name);
    links.append(r.magnet, " ", r.torrent, " ", r.copy);
    const actions = el("td", "actions");
    r.del = el("button", "delete", "Delete");
    r.del.type = "button";
    r.del.setAttribute("aria-label", "Delete " + name);
    actions.append(r.del);
    tr.append(nameCell, r.size, r.state, r.peers, r.swarm, r.rate, r.uploaded, links, actions);
    // The labels narrow screens show beside each figure (the table's head is hidden there).
    const labels = ["Size", "State", "Peers", "Seeders / leechers", "Upload rate", "Uploaded"];
    [r.size, r.state, r.peers, r.swarm, r.rate, r.uploaded].forEach((cell, i) => (cell.dataset.label = labels[i]));
    r.copy.addEventListener("click", () => copyMagnet(r));
    r.del.addEventListener("click", () => remove(name));
    r.torrent.addEventListener("click", (e) => {
      if (privateReads && token()) {
        e.preventDefault();
        downloadWithToken(r.torrent.href, name + ".torrent");
      }
    });
    return r;
  }

  function updateRow(r, d) {
    const tr = r.tr;
    setAttr(tr, "data-name", text(d.name));
    setAttr(tr, "data-info-hash", text(d.info_hash));
    const added = typeof d.added === "string" ? d.added.replace("T", " ").replace("+00:00", " UTC") : "";
    setText(r.detail, "added " + added);
    setAttr(r.detail, "title", "info-hash " + text(d.info_hash) + "\nSHA-256 " + text(d.sha256));
    setText(r.size, bytes(d.size));
    setAttr(r.size, "title", count(d.size) + " bytes");
    let state = text(d.state);
    if (state === "checking" && d.size > 0) state += " " + Math.floor((100 * d.checked_bytes) / d.size) + "%";
    setText(r.stateName, state);
    setAttr(r.state, "data-state", text(d.state));
    setText(r.error, d.error ? ": " + d.error : "");
    r.state.classList.toggle("has-error", !!d.error);
    setText(r.peers, count(d.peers));
    const swarm = d.swarm || {};
    setText(r.swarm, count(swarm.seeders) + " / " + count(swarm.leechers));
    setText(r.rate, rate(d.upload_rate));
    setText(r.uploaded, bytes(d.uploaded));
    setAttr(r.magnet, "href", safeUrl(d.magnet, ["magnet:"]));
    setAttr(r.torrent, "href", safeUrl(d.torrent_url, ["http:", "https:"]));
    setAttr(r.torrent, "download", text(d.name) + ".torrent");
    r.copy.disabled = safeUrl(d.magnet, ["magnet:"]) === null;
  }

  function render(doc) {
    const uploads = Array.isArray(doc.uploads) ? doc.uploads : [];
    const seen = new Set();
    uploads.forEach((d, i) => {
      if (!d || typeof d.name !== "string" || seen.has(d.name)) return;
      seen.add(d.name);
      let r = rows.get(d.name);
      if (r === undefined) {
        r = makeRow(d.name);
        rows.set(d.name, r);
      }
      updateRow(r, d);
      // Moved only when out of place: a node moved loses the focus it holds.
      if (els.rows.children[i] !== r.tr) els.rows.insertBefore(r.tr, els.rows.children[i] || null);
    });
    for (const [name, r] of rows) {
      if (!seen.has(name)) {
        r.tr.remove();
        rows.delete(name);
      }
    }
    els.empty.hidden = rows.size > 0;
    els.table.hidden = rows.size === 0;
    const receiving = Array.isArray(doc.receiving) ? doc.receiving : [];
    const items = receiving
      .filter((x) => x && typeof x.name === "string")
      .map((x) => el("li", null, x.name + ": " + bytes(x.received) + " received so far"));
    els.receiving.replaceChildren(...items);
    els.receivingBox.hidden = items.length === 0;
  }

  let timer = null;
  let refreshing = null;

  // Fetch the list and show it; one request at a time, the next poll scheduled when it ends.
  function refresh() {
    if (refreshing !== null) return refreshing;
    clearTimeout(timer);
    refreshing = fetchList()
      .catch(() => {
        setText(els.listStatus, "Cannot reach the service: retrying every few seconds.");
      })
      .finally(() => {
        refreshing = null;
        if (!document.hidden) timer = setTimeout(refresh, POLL_MS);
      });
    return refreshing;
  }

  async function fetchList() {
    const withToken = privateReads && tokenIsSendable();
    const resp = await fetch("uploads", { headers: headers(withToken), cache: "no-store" });
    const doc = parseJson(await resp.text());
    if (resp.status === 401 && !privateReads) {
      privateReads = true; // this service's reads need a token: ask again with it
      if (token()) return fetchList();
    }
    if (!resp.ok || doc === null) {
      setText(els.listStatus, refusal(resp.status, doc, resp.statusText, "Listing the datasets"));
      return;
    }
    setText(els.listStatus, "");
    render(doc);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });

  // -- per-dataset actions ---------------------------------------------------------------------

  // The outcome of a delete or a download, on its own line (the list's refreshes leave it alone).
  function action(kind, words) {
    els.actionStatus.className = "action-status " + kind;
    els.actionStatus.dataset.kind = kind;
    setText(els.actionStatus, words);
  }

  async function copyMagnet(r) {
    const magnet = safeUrl(r.magnet.getAttribute("href"), ["magnet:"]);
    if (magnet === null) return;
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(magnet);
        copied = true;
      }
    } catch (e) {
      copied = false;
    }
    if (!copied) {
      // Plain http on another host is no secure context: the old way, through a selected text area.
      const area = el("textarea");
      area.value = magnet;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      try {
        copied = document.execCommand("copy");
      } catch (e) {
        copied = false;
      }
      area.remove();
    }
    setText(r.copy, copied ? "Copied" : "Copy failed");
    setTimeout(() => setText(r.copy, "Copy magnet"), 1500);
  }

  async function remove(name) {
    const sure = window.confirm(
      "Delete " + name + "?\n\nThe service stops seeding it and removes the file and its torrent: its magnet link" +
        " and .torrent stop working here."
    );
    if (!sure) return;
    if (!tokenIsSendable()) {
      action("error", "The token holds characters a header cannot carry: check it.");
      return;
    }
    try {
      const resp = await fetch("uploads/" + encodeURIComponent(name), { method: "DELETE", headers: headers(true) });
      const doc = parseJson(await resp.text());
      if (resp.ok) action("ok", "Deleted " + name + ".");
      else action("error", refusal(resp.status, doc, resp.statusText, "Deleting " + name));
    } catch (e) {
      action("error", "Deleting " + name + " failed: the service cannot be reached.");
    }
    refresh();
  }

  // A .torrent of a service whose reads need the token: fetched with it, then saved from memory.
  async function downloadWithToken(url, filename) {
    try {
      const resp = await fetch(url, { headers: { Authorization: "Bearer " + token() } });
      if (!resp.ok) {
        const doc = parseJson(await resp.text());
        action("error", refusal(resp.status, doc, resp.statusText, "Downloading " + filename));
        return;
      }
      const blobUrl = URL.createObjectURL(await resp.blob());
      const a = el("a");
      a.href = blobUrl;
      a.download = filename;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
    } catch (e) {
      action("error", "Downloading " + filename + " failed: the service cannot be reached.");
    }
  }

  // -- start -----------------------------------------------------------------------------------

  els.token.value = storedToken();
  els.token.addEventListener("input", () => {
    keepToken();
    if (privateReads) refresh();
  });
  els.forget.addEventListener("click", () => {
    els.token.value = "";
    keepToken();
    els.token.focus();
  });
  els.app.hidden = false;
  refresh();
})();
