// Frankly live updates: one WebSocket per tab that resumes from the last event id it saw.
// Plain script, no build step, no inline code (strict CSP). The page listens for:
//   frankly:event  {detail: {type, id, topic, kind, data, created_at}}
//   frankly:resync {detail: {type, id}}   events were lost: reload what is on screen
//   frankly:live   {detail: {state: "open" | "closed", code?}}
// and may call window.FranklyLive.setTopics([...]), .reconnectNow(), .lastEventId().
(function () {
  "use strict";

  var STORAGE_KEY = "frankly.live.lastEventId";
  var BASE_DELAY_MS = 500;
  var MAX_DELAY_MS = 10000;
  var SILENCE_MS = 50000; // the server pings every ~20 s; this much silence means a dead link
  var SIGNED_OUT = 4401;
  var REMEMBERED = 500; // recent ids kept to drop an event delivered twice around a reconnect

  var socket = null;
  var topics = [];
  var attempt = 0;
  var retryTimer = null;
  var silenceTimer = null;
  var state = null;
  var stopped = false;
  var memoryLastId = null; // when sessionStorage is unavailable
  var recent = [];
  var recentSet = new Set();

  function validId(value) {
    var n = typeof value === "number" ? value : Number(value);
    return value !== null && value !== "" && Number.isSafeInteger(n) && n >= 0 ? n : null;
  }

  function lastEventId() {
    try {
      var stored = validId(window.sessionStorage.getItem(STORAGE_KEY));
      return stored === null ? memoryLastId : stored;
    } catch (e) {
      return memoryLastId;
    }
  }

  function setLastEventId(id) {
    memoryLastId = id;
    try { window.sessionStorage.setItem(STORAGE_KEY, String(id)); } catch (e) { /* private mode */ }
  }

  function remember(id) {
    recentSet.add(id);
    recent.push(id);
    if (recent.length > REMEMBERED) recentSet.delete(recent.shift());
  }

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  function setState(next, code) {
    if (state === next) return;
    state = next;
    emit("frankly:live", code === undefined ? { state: next } : { state: next, code: code });
  }

  function normalise(list) {
    var seen = {};
    var out = [];
    (list || []).forEach(function (topic) {
      topic = String(topic).trim();
      if (topic && !seen[topic]) { seen[topic] = true; out.push(topic); }
    });
    return out;
  }

  function socketUrl() {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + "/ws";
  }

  function sendSubscribe() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: "subscribe", topics: topics, last_event_id: lastEventId() }));
  }

  function armSilenceTimer(ws) {
    clearTimeout(silenceTimer);
    silenceTimer = setTimeout(function () { drop(ws, undefined); }, SILENCE_MS);
  }

  // Forget a socket at once (its close handshake may take long on a dead link) and retry.
  function drop(ws, code) {
    if (socket !== ws) return;
    socket = null;
    clearTimeout(silenceTimer);
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch (e) { /* already closed */ }
    setState("closed", code);
    if (code === SIGNED_OUT) {
      stopped = true; // signing in again loads a new page; reconnectNow() also resumes
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (stopped || retryTimer !== null) return;
    var ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, attempt));
    attempt += 1;
    var delay = ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
    retryTimer = setTimeout(function () { retryTimer = null; connect(); }, delay);
  }

  function handle(message) {
    if (!message || typeof message !== "object") return;
    if (message.type === "event") {
      var id = validId(message.id);
      if (id !== null) {
        if (recentSet.has(id)) return;
        remember(id);
        var last = lastEventId();
        if (last === null || id > last) setLastEventId(id);
      }
      emit("frankly:event", message);
    } else if (message.type === "resync") {
      var position = validId(message.id);
      if (position !== null) setLastEventId(position);
      emit("frankly:resync", message);
    } else if (message.type === "subscribed") {
      // A tab that has seen no event yet resumes from where its first stream began.
      var start = validId(message.position);
      if (start !== null && lastEventId() === null) setLastEventId(start);
    } else if (message.type === "error" && window.console) {
      window.console.warn("Frankly live:", message.message);
    }
  }

  function connect() {
    if (socket || stopped) return;
    clearTimeout(retryTimer);
    retryTimer = null;
    var ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.onopen = function () {
      attempt = 0;
      setState("open");
      armSilenceTimer(ws);
      sendSubscribe();
    };
    ws.onmessage = function (frame) {
      armSilenceTimer(ws);
      var message;
      try { message = JSON.parse(frame.data); } catch (e) { return; }
      handle(message);
    };
    ws.onclose = function (closed) { drop(ws, closed.code); };
    ws.onerror = function () { /* a close event follows */ };
  }

  function setTopics(list) {
    topics = normalise(list);
    sendSubscribe();
  }

  function reconnectNow() {
    stopped = false;
    attempt = 0;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) {
      var old = socket;
      socket = null;
      clearTimeout(silenceTimer);
      old.onopen = old.onmessage = old.onclose = old.onerror = null;
      try { old.close(); } catch (e) { /* already closed */ }
    }
    connect();
  }

  function start() {
    var body = document.body;
    topics = normalise(((body && body.dataset.liveTopics) || "").split(/\s+/));
    // A page may say which event its content is current to; never go back from what we saw.
    var pageId = validId(body && body.dataset.liveLastEventId);
    var stored = lastEventId();
    if (pageId !== null && (stored === null || pageId > stored)) setLastEventId(pageId);
    connect();
  }

  window.FranklyLive = { setTopics: setTopics, reconnectNow: reconnectNow, lastEventId: lastEventId };

  window.addEventListener("online", function () { if (!socket) reconnectNow(); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && !socket && !stopped) reconnectNow();
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
