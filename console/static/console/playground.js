/* The playground: a chat that streams from the gateway (OpenAI-style SSE) with a short-lived key.

   The key comes from the console (POST data-key-url, same origin, CSRF token) and is reused until
   it is about to expire; the chat request goes straight to the gateway (another origin: the gateway
   answers CORS for the console). Model output is only ever inserted with textContent. */
(function () {
  "use strict";

  var root = document.getElementById("playground");
  if (!root) return;
  var form = document.getElementById("chat-form");
  var log = document.getElementById("chat-log");
  var input = document.getElementById("chat-input");
  var modelSelect = document.getElementById("chat-model");
  var sendButton = document.getElementById("chat-send");
  var stopButton = document.getElementById("chat-stop");
  var clearButton = document.getElementById("chat-clear");
  var statusLine = document.getElementById("chat-status");
  var errorBox = document.getElementById("chat-error");
  var usageLast = document.getElementById("usage-last");
  var usageTotal = document.getElementById("usage-total");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  var RENEW_MS = 2 * 60 * 1000;
  var session = null; // {key, expiresAt (ms), gatewayUrl}
  var history = [];
  var totals = { prompt: 0, completion: 0 };
  var controller = null;

  function fmt(n) { return Number(n).toLocaleString(); }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function addMessage(role, text) {
    var empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    var item = document.createElement("div");
    item.className = "chat-msg " + role;
    var who = document.createElement("div");
    who.className = "chat-role";
    who.textContent = role === "user" ? "You" : modelSelect.value;
    var body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return body;
  }

  async function getKey(force) {
    if (!force && session && session.expiresAt - Date.now() > RENEW_MS) return session;
    var response = await fetch(root.dataset.keyUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      credentials: "same-origin",
    });
    var data = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error(data.error || "Could not get a playground key (HTTP " + response.status + ").");
    session = { key: data.key, expiresAt: Date.parse(data.expires_at), gatewayUrl: data.gateway_url };
    return session;
  }

  function explain(status, payload, retryAfter) {
    var error = (payload && payload.error) || {};
    var message = error.message || "";
    if (status === 429) {
      if (error.code === "insufficient_quota") {
        return "Limit reached: " + message + " An owner or billing member can raise the spend limit in Settings; Usage shows what was used.";
      }
      var wait = retryAfter ? " Try again in " + retryAfter + " s." : "";
      return "Rate limit reached (" + (error.code || "rate limit") + "): " + message + wait + " Your plan's limits are listed in Settings.";
    }
    if (status === 404) return "The gateway does not know this model for your organization: " + message + " Pick another model.";
    if (status === 503 && error.code === "model_not_ready") {
      return "The model is starting from zero; this can take a minute or more. Send again shortly. (" + message + ")";
    }
    if (status === 401) return "The playground key was not accepted: " + message + " Reload the page to get a fresh key.";
    if (status === 0) return "Could not reach the gateway at " + (session ? session.gatewayUrl : "?") + ". " + message;
    return "The gateway answered HTTP " + status + (message ? ": " + message : ".");
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
    statusLine.textContent = busy ? "Generating…" : "";
  }

  // Reads an SSE body: "data: {...}" events separated by blank lines, ending with "data: [DONE]".
  async function readStream(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var step = await reader.read();
      if (step.done) break;
      buffer += decoder.decode(step.value, { stream: true });
      var lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (var i = 0; i < lines.length; i++) {
        var line = lines[i];
        if (line.indexOf("data:") !== 0) continue;
        var data = line.slice(5).trim();
        if (data === "[DONE]") return;
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  async function send(text, retried) {
    var key = await getKey(retried);
    controller = new AbortController();
    var response;
    try {
      response = await fetch(key.gatewayUrl.replace(/\/$/, "") + "/chat/completions", {
        method: "POST",
        headers: { Authorization: "Bearer " + key.key, "Content-Type": "application/json" },
        body: JSON.stringify({
          model: modelSelect.value,
          messages: history,
          // Without max_tokens the gateway reserves the model's whole context against the
          // tokens-per-minute quota; a chat turn in the playground needs far less.
          max_tokens: 512,
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: controller.signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error(explain(0, { error: { message: String(err.message || err) } }));
    }
    if (response.status === 401 && !retried) return send(text, true); // key revoked or expired: mint anew
    if (!response.ok) {
      var payload = await response.json().catch(function () { return null; });
      throw new Error(explain(response.status, payload, response.headers.get("retry-after")));
    }
    var target = addMessage("assistant", "");
    target.parentNode.setAttribute("aria-busy", "true");
    var answer = "";
    var usage = null;
    try {
      await readStream(response, function (chunk) {
        if (chunk.error) throw new Error(explain(500, chunk));
        var choice = chunk.choices && chunk.choices[0];
        var delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          answer += delta;
          target.textContent = answer;
          log.scrollTop = log.scrollHeight;
        }
        if (chunk.usage) usage = chunk.usage;
      });
    } finally {
      target.parentNode.removeAttribute("aria-busy");
      history.push({ role: "assistant", content: answer });
    }
    if (usage) {
      totals.prompt += usage.prompt_tokens || 0;
      totals.completion += usage.completion_tokens || 0;
      usageLast.textContent = fmt(usage.prompt_tokens) + " prompt + " + fmt(usage.completion_tokens) + " completion tokens";
      usageTotal.textContent = fmt(totals.prompt + totals.completion) + " tokens (" + fmt(totals.prompt) + " prompt + " + fmt(totals.completion) + " completion)";
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || controller) return;
    clearError();
    history.push({ role: "user", content: text });
    addMessage("user", text);
    input.value = "";
    setBusy(true);
    try {
      await send(text, false);
    } catch (err) {
      if (err.name === "AbortError") {
        statusLine.textContent = "Stopped.";
      } else {
        // Leave the failed turn out of the conversation sent next time.
        if (history.length && history[history.length - 1].role === "user") history.pop();
        showError(err.message);
      }
    } finally {
      controller = null;
      sendButton.disabled = false;
      stopButton.hidden = true;
      if (statusLine.textContent === "Generating…") statusLine.textContent = "";
      input.focus();
    }
  });

  input.addEventListener("keydown", function (event) {
    // Enter sends, Shift+Enter starts a new line (and Ctrl/Cmd+Enter also sends).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", function () {
    if (controller) controller.abort();
  });

  clearButton.addEventListener("click", function () {
    if (controller) controller.abort();
    history = [];
    totals = { prompt: 0, completion: 0 };
    log.textContent = "";
    usageLast.textContent = "—";
    usageTotal.textContent = "—";
    clearError();
    input.focus();
  });
})();
