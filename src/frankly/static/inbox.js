// Frankly inbox behaviour: toasts, keyboard navigation, Ctrl+Enter to send, live refreshes.
// No inline script anywhere (strict CSP); htmx does the requests.
(function () {
  "use strict";

  function toast(message, ok) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.className = "toast" + (ok ? " ok" : "");
    box.hidden = false;
    clearTimeout(box._timer);
    box._timer = setTimeout(function () { box.hidden = true; }, ok ? 3000 : 7000);
  }
  window.FranklyToast = toast;

  document.addEventListener("frankly:toast", function (event) {
    var detail = event.detail;
    toast(typeof detail === "string" ? detail : (detail && detail.value) || "Done", true);
  });

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var message = "Something went wrong (" + xhr.status + ")";
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.detail) message = body.detail;
    } catch (e) { /* not JSON */ }
    if (xhr.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
    toast(message, false);
  });
  document.addEventListener("htmx:sendError", function () { toast("Network error: not sent. Try again.", false); });

  // Keyboard: j/k move through the list, Enter opens, Ctrl/Cmd+Enter sends the focused reply.
  function listLinks() { return Array.prototype.slice.call(document.querySelectorAll("#conv-list a[data-conversation-id]")); }
  function typing(target) { return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT" || target.isContentEditable); }
  document.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && event.target.tagName === "TEXTAREA") {
      var form = event.target.form;
      if (form) {
        event.preventDefault();
        var button = form.querySelector("button[type=submit]");
        if (!button || !button.disabled) form.requestSubmit ? form.requestSubmit() : form.submit();
      }
      return;
    }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    var links = listLinks();
    if (!links.length) return;
    var current = links.findIndex(function (a) { return a.classList.contains("selected"); });
    if (current < 0) current = links.findIndex(function (a) { return a.getAttribute("aria-current") === "true"; });
    if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      var next = event.key === "j" ? Math.min(links.length - 1, current + 1) : Math.max(0, current - 1);
      links.forEach(function (a) { a.classList.remove("selected"); });
      links[next].classList.add("selected");
      links[next].focus();
    } else if (event.key === "Enter" && current >= 0 && document.activeElement === document.body) {
      window.location.href = links[current].href;
    }
  });

  // Live updates: refresh the list, and the open conversation unless the agent is mid-edit.
  var pending = {};
  function refresh(id, delay) {
    clearTimeout(pending[id]);
    pending[id] = setTimeout(function () {
      var el = document.getElementById(id);
      if (el && window.htmx) window.htmx.trigger(el, "refresh");
    }, delay || 150);
  }
  function editing() {
    var text = document.getElementById("draft-text");
    var reply = document.getElementById("reply-text");
    var dirty = text && text.value !== text.dataset.original;
    return dirty || (reply && reply.value.trim() !== "");
  }
  document.addEventListener("frankly:event", function (event) {
    var e = event.detail || {};
    var me = document.body.dataset.agentId;
    // My own claim (focusing the draft) must not reload the pane under my cursor.
    if (e.kind === "conversation.claimed" && e.data && String(e.data.agent_id) === me) return;
    if (e.topic === "inbox") refresh("conversation-list", 300);
    var pane = document.getElementById("conversation-pane");
    var open = pane && pane.dataset.conversationId;
    // The assistant's draft as it is written: replace the text in place, no reload.
    if (e.kind === "draft.delta" && e.data) {
      var box = document.getElementById("streaming-text");
      if (box && box.dataset.draftId === String(e.data.draft_id)) {
        box.textContent = e.data.text;
        return;
      }
    }
    if (open && e.topic === "conversation:" + open) {
      if (editing()) {
        // Never reload under the agent's cursor: keep the edit, and block sending if someone
        // else took the conversation (they must take over again, which reloads the pane).
        if (e.kind === "message.new") toast("The customer wrote again; your edit is kept.", false);
        if (e.kind === "conversation.claimed") {
          toast((e.data.agent_name || "Someone") + " is replying now. Take over to send.", false);
          document.querySelectorAll("#draft-panel button").forEach(function (b) { b.disabled = true; });
        }
      } else {
        refresh("conversation-pane", 100);
      }
    }
  });
  document.addEventListener("frankly:resync", function () { refresh("conversation-list", 10); refresh("conversation-pane", 10); });
  document.addEventListener("frankly:live", function (event) {
    var badge = document.getElementById("live-state");
    if (!badge) return;
    var state = (event.detail && event.detail.state) || "closed";
    badge.dataset.state = state;
    badge.textContent = state === "open" ? "live" : "reconnecting…";
  });
})();
