/* Frankly web chat launcher, for a merchant's own site:
     <script src="https://frankly.example.com/widget/DESK.js" async></script>
   Optional attributes: data-label="Chat with us", data-position="left".
   It adds a button (in a shadow root, so the site's CSS cannot restyle it) that opens the chat
   page in an iframe. Styles are set through the CSSOM, which a strict site CSP allows. */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.src) return;
  var src = new URL(script.src, location.href);
  var match = /\/widget\/([^/]+)\.js$/.exec(src.pathname);
  if (!match) return;
  var desk = decodeURIComponent(match[1]);
  var origin = src.origin;
  var loaded = (window.__franklyChat = window.__franklyChat || {});
  if (loaded[desk]) return;  // the snippet was pasted twice
  loaded[desk] = true;

  var russian = /^ru\b/i.test(navigator.language || "");
  var label = script.getAttribute("data-label") || (russian ? "Чат" : "Chat");
  var side = script.getAttribute("data-position") === "left" ? "left" : "right";

  var host = document.createElement("div");
  host.setAttribute("data-frankly-chat", desk);
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;

  function style(node, rules) {
    Object.keys(rules).forEach(function (key) { node.style[key] = rules[key]; });
    return node;
  }

  var button = style(document.createElement("button"), {
    position: "fixed", bottom: "20px", zIndex: "2147483000", padding: "12px 18px",
    borderRadius: "24px", border: "0", background: "#2457d6", color: "#fff",
    font: "600 15px/1.2 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)", cursor: "pointer"
  });
  button.style[side] = "20px";
  button.type = "button";
  button.id = "frankly-chat-launcher";
  button.textContent = label;
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-haspopup", "dialog");

  var badge = style(document.createElement("span"), {
    display: "none", width: "10px", height: "10px", borderRadius: "5px",
    background: "#ffbf47", marginLeft: "8px", verticalAlign: "middle"
  });
  badge.setAttribute("aria-hidden", "true");
  button.appendChild(badge);

  var frame = null;
  var open = false;

  function createFrame() {
    frame = style(document.createElement("iframe"), {
      position: "fixed", bottom: "76px", zIndex: "2147483000", border: "1px solid #dde1e6",
      borderRadius: "10px", background: "#fff", boxShadow: "0 8px 28px rgba(0,0,0,.25)",
      width: "min(380px, calc(100vw - 24px))", height: "min(560px, calc(100vh - 100px))",
      display: "none"
    });
    frame.style[side] = "12px";
    frame.id = "frankly-chat-frame";
    frame.title = label;
    var page = location.origin + location.pathname;
    frame.src = origin + "/chat/" + encodeURIComponent(desk) + "?embed=1&page=" +
      encodeURIComponent(page);
    root.appendChild(frame);
  }

  function setOpen(value) {
    open = value;
    if (open && !frame) createFrame();
    if (frame) frame.style.display = open ? "block" : "none";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      badge.style.display = "none";
      frame.focus();
    } else {
      button.focus();
    }
  }

  button.addEventListener("click", function () { setOpen(!open); });

  window.addEventListener("message", function (event) {
    if (event.origin !== origin || !frame || event.source !== frame.contentWindow) return;
    var data = event.data;
    if (!data || typeof data.type !== "string") return;
    if (data.type === "frankly:close" && open) setOpen(false);
    if (data.type === "frankly:reply" && !open) badge.style.display = "inline-block";
  });

  root.appendChild(button);
  function attach() { document.body.appendChild(host); }
  if (document.body) attach(); else document.addEventListener("DOMContentLoaded", attach);
})();
