/* Frankly web chat, the customer's page. Every piece of text reaches the page through
   textContent (never innerHTML). The server is the source of truth: the page shows what
   GET /chat/{desk}/messages returns, and the live socket only says "something changed". */
(function () {
  "use strict";

  var body = document.body;
  var desk = body.dataset.desk;
  var base = "/chat/" + encodeURIComponent(desk);
  var T = {};
  try { T = JSON.parse(body.dataset.texts || "{}"); } catch (e) { T = {}; }
  var pageUrl = body.dataset.pageUrl || null;
  var maxFileBytes = Number(body.dataset.maxFileBytes || 10485760);
  var accepted = (body.dataset.acceptedFiles || "").split(",");
  var embedded = body.classList.contains("embedded");
  var parentOrigin = embedded && window.parent !== window ? embedderOrigin() : null;

  var log = document.getElementById("chat-log");
  var main = document.getElementById("chat-main");
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-text");
  var fileInput = document.getElementById("chat-file");
  var errorBox = document.getElementById("chat-error");
  var closeButton = document.getElementById("chat-close");

  var shown = new Map();     // server message id -> <li>
  var lastId = 0;            // newest server message id on the page
  var started = false;       // the visitor has a conversation (so there is a feed to watch)
  var loaded = false;        // the first fetch finished (later desk replies count as new)
  var fetching = false;
  var fetchAgain = false;
  var fetchTimer = null;
  var socket = null;
  var retries = 0;
  var reconnectTimer = null;

  // The origin of the page framing the chat, as the browser reports it (ancestorOrigins, else
  // the referrer), else the page the embed script named. Messages to the parent go only there:
  // postMessage then drops them if the frame has been moved under another site.
  function embedderOrigin() {
    var candidates = [];
    if (location.ancestorOrigins && location.ancestorOrigins.length) {
      candidates.push(location.ancestorOrigins[0]);
    }
    candidates.push(document.referrer, pageUrl);
    for (var i = 0; i < candidates.length; i++) {
      try {
        var origin = candidates[i] ? new URL(candidates[i]).origin : "";
        if (/^https?:\/\//.test(origin)) return origin;
      } catch (e) { /* not a URL: try the next one */ }
    }
    return null;
  }

  function tellParent(type) {
    if (parentOrigin) window.parent.postMessage({ type: type }, parentOrigin);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function newId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b < 16 ? "0" : "") + b.toString(16);
    }).join("");
  }

  function clock(iso) {
    var date = iso ? new Date(iso) : new Date();
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function nearBottom() {
    return main.scrollHeight - main.scrollTop - main.clientHeight < 80;
  }

  function scrollDown() {
    main.scrollTop = main.scrollHeight;
  }

  function showError(message, link, reload) {
    errorBox.textContent = message || "";
    if (reload) {
      errorBox.appendChild(document.createTextNode(" "));
      var button = el("button", "retry", T.reload || "Reload");
      button.type = "button";
      button.addEventListener("click", function () { location.reload(); });
      errorBox.appendChild(button);
    } else if (link) {
      errorBox.appendChild(document.createTextNode(" "));
      var a = el("a", "", T.open_tab || "Open");
      a.href = link;
      a.target = "_blank";
      a.rel = "noopener";
      errorBox.appendChild(a);
    }
    errorBox.hidden = !message;
  }

  function api(method, path, payload, isForm) {
    var headers = { "X-Frankly-Widget": "1", "Accept": "application/json" };
    var options = { method: method, headers: headers, credentials: "same-origin" };
    if (payload !== undefined) {
      if (isForm) {
        options.body = payload;
      } else {
        headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(payload);
      }
    }
    return fetch(base + path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data || {} };
      });
    });
  }

  // Rendering ---------------------------------------------------------------------------------

  function fileList(files) {
    var box = el("div", "files");
    files.forEach(function (file) {
      var link = el("a", "file");
      link.href = file.url;
      link.target = "_blank";
      link.rel = "noopener";
      if (/^image\//.test(file.content_type)) {
        var img = el("img");
        img.src = file.url;
        img.alt = file.filename;
        link.appendChild(img);
      } else {
        link.textContent = file.filename + " (" + Math.max(1, Math.round(file.size / 1024)) + " KB)";
        link.setAttribute("download", file.filename);
      }
      box.appendChild(link);
    });
    return box;
  }

  function messageItem(author, text, files) {
    var li = el("li", "msg " + (author === "visitor" ? "mine" : "desk"));
    li.appendChild(el("span", "who", author === "visitor" ? T.you : T.desk));
    if (text) li.appendChild(el("div", "body", text));
    if (files && files.length) li.appendChild(fileList(files));
    return li;
  }

  function render(message) {
    if (shown.has(message.id)) return;
    var stick = nearBottom();
    var li = messageItem(message.author, message.text, message.attachments);
    li.dataset.messageId = String(message.id);
    var time = el("time", "meta", clock(message.created_at));
    time.dateTime = message.created_at;
    li.appendChild(time);
    var firstPending = log.querySelector("li.pending");
    log.insertBefore(li, firstPending);
    shown.set(message.id, li);
    lastId = Math.max(lastId, message.id);
    body.classList.add("has-messages");
    if (message.author === "desk" && loaded) tellParent("frankly:reply");
    if (stick || message.author === "visitor") scrollDown();
  }

  function pendingItem(text, files) {
    var li = messageItem("visitor", text, []);
    li.classList.add("pending");
    if (files) li.appendChild(el("div", "files", files));
    li.appendChild(el("span", "meta", T.sending));
    log.appendChild(li);
    body.classList.add("has-messages");
    scrollDown();
    return li;
  }

  function markFailed(li, detail, retry) {
    li.classList.add("failed");
    var meta = li.querySelector(".meta");
    meta.textContent = T.failed + (detail ? " " + detail : "");
    if (retry) {
      var button = el("button", "retry", T.retry);
      button.type = "button";
      button.addEventListener("click", function () {
        li.classList.remove("failed");
        meta.textContent = T.sending;
        retry();
      });
      meta.appendChild(button);
    }
  }

  // Reading -----------------------------------------------------------------------------------

  function fetchNew() {
    if (fetching) { fetchAgain = true; return; }
    fetching = true;
    api("GET", "/messages?after=" + lastId).then(function (result) {
      if (!result.ok) return;
      result.data.messages.forEach(render);
      if (result.data.more) fetchAgain = true;
      if (result.data.started && !started) { started = true; connect(); }
    }).catch(function () { /* offline: the next nudge or poll fetches again */ }).then(function () {
      fetching = false;
      loaded = true;
      if (fetchAgain) { fetchAgain = false; fetchNew(); }
    });
  }

  function scheduleFetch() {
    if (fetchTimer) return;
    fetchTimer = setTimeout(function () { fetchTimer = null; fetchNew(); }, 50);
  }

  // Live feed: a nudge to refetch; reconnects with backoff and jitter -------------------------

  function connect() {
    if (socket || !started) return;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + base + "/ws");
    socket = ws;
    ws.addEventListener("message", function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "ready") {
        retries = 0;
        body.dataset.live = "open";
        scheduleFetch();  // anything between the last fetch and subscribing
      } else if (message.type === "changed") {
        scheduleFetch();
      }
    });
    ws.addEventListener("close", function (event) {
      socket = null;
      body.dataset.live = "closed";
      if (event.code === 4401 || event.code === 4403) return;  // reload needed / not allowed
      // 4429 (too many tabs) backs off like any drop; 4408 (idle) reconnects shortly.
      var delay = Math.min(30000, 500 * Math.pow(2, retries++));
      clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(connect, delay / 2 + Math.random() * delay / 2);
    });
  }

  // Writing -----------------------------------------------------------------------------------

  function handleWrite(result, li, retry, restore) {
    if (result.ok) {
      li.remove();
      showError("");
      render(result.data.message);
      if (!started) { started = true; connect(); }
      return;
    }
    var detail = result.data.detail || ("HTTP " + result.status);
    if (result.status === 429 || result.status >= 500) {
      markFailed(li, detail, retry);
    } else {
      li.remove();
      if (restore) restore();
      if (result.status === 403 && result.data.error === "reload_needed") {
        showError(detail, null, true);  // the session cookie is stale: a reload mints a new one
      } else if (result.status === 403 && /cookie/.test(detail)) {
        showError(T.cookies, location.pathname);
      } else {
        showError(detail);
      }
    }
  }

  function sendText(text, id, li) {
    li = li || pendingItem(text);
    var payload = { id: id, text: text };
    if (!started && pageUrl) payload.page_url = pageUrl;
    api("POST", "/messages", payload).then(function (result) {
      handleWrite(result, li, function () { sendText(text, id, li); }, function () {
        if (!input.value) input.value = text;
      });
    }, function () {
      markFailed(li, T.network, function () { sendText(text, id, li); });
    });
  }

  function sendFile(file, caption, id, li) {
    li = li || pendingItem(caption, file.name);
    var data = new FormData();
    data.append("id", id);
    data.append("text", caption);
    if (!started && pageUrl) data.append("page_url", pageUrl);
    data.append("file", file, file.name);
    api("POST", "/attachments", data, true).then(function (result) {
      handleWrite(result, li, function () { sendFile(file, caption, id, li); }, function () {
        if (!input.value) input.value = caption;
      });
    }, function () {
      markFailed(li, T.network, function () { sendFile(file, caption, id, li); });
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";  // a second click finds nothing to send: no double messages
    showError("");
    sendText(text, newId());
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file) return;
    if (file.size > maxFileBytes) { showError(T.too_big); return; }
    if (file.type && accepted.indexOf(file.type) < 0) { showError(T.bad_type); return; }
    var caption = input.value.trim();
    input.value = "";
    showError("");
    sendFile(file, caption, newId());
  });

  if (closeButton) {
    closeButton.addEventListener("click", function () {
      tellParent("frankly:close");
    });
  }

  // A slow poll while the socket is down, and a catch-up when the tab becomes visible.
  setInterval(function () {
    if (!socket || socket.readyState !== WebSocket.OPEN) fetchNew();
  }, 15000);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") fetchNew();
  });

  fetchNew();
  input.focus();
})();
