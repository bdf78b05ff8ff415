// The customer's side of the chat: talks to Rasa's socket.io channel (wrapped by
// rasa-omnidesk's OmnideskInput) and shows the bot's and the agent's messages.
//
// The page is served from its own origin. Rasa's socket.io server does no CORS
// handling (cors_allowed_origins=[]), so the browser can't use the HTTP
// long-polling transport across origins; the websocket transport has no such
// check, so the page uses websocket only. The upload route is plain HTTP and
// needs `rasa run --cors` to allow this page's origin.
(function () {
  "use strict";

  var params = new URLSearchParams(window.location.search);
  var server = (params.get("server") || window.location.protocol + "//" + window.location.hostname + ":5005").replace(/\/+$/, "");
  var STORAGE_KEY = "omnidesk-example-session-id";
  var TYPING_IDLE_MS = 2500;

  var messages = document.querySelector("[data-testid=messages]");
  var form = document.querySelector("[data-testid=composer]");
  var input = document.querySelector("[data-testid=message-input]");
  var fileInput = document.querySelector("[data-testid=file-input]");
  var statusLabel = document.querySelector("[data-testid=connection-status]");
  var typingBox = document.querySelector("[data-testid=agent-typing]");
  var typingName = document.querySelector("[data-testid=agent-typing-name]");
  var notice = document.querySelector("[data-testid=notice]");

  var sessionId = params.get("session") || window.localStorage.getItem(STORAGE_KEY);
  var lastAgentName = null;
  // Given by the connector when a handoff starts; the upload route needs it.
  var customerToken = null;
  var typingSent = false;
  var typingTimer = null;

  var socket = io(server, { transports: ["websocket"], path: "/socket.io" });

  function setStatus(text) {
    statusLabel.textContent = text;
    statusLabel.dataset.state = text;
  }

  function showNotice(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  function scrollDown() {
    messages.scrollTop = messages.scrollHeight;
  }

  function addItem(kind, testid) {
    var item = document.createElement("li");
    item.className = "message " + kind;
    item.dataset.testid = testid;
    item.dataset.kind = kind;
    messages.appendChild(item);
    return item;
  }

  function addSender(item, agent) {
    var sender = document.createElement("div");
    sender.className = "sender";
    sender.dataset.testid = "agent-sender";
    if (agent.picture) {
      var picture = document.createElement("img");
      picture.src = agent.picture;
      picture.alt = "";
      picture.dataset.testid = "agent-picture";
      sender.appendChild(picture);
    }
    var name = document.createElement("span");
    name.textContent = agent.name || "Our colleague";
    name.dataset.testid = "agent-name";
    sender.appendChild(name);
    item.appendChild(sender);
  }

  function addText(item, text) {
    var body = document.createElement("div");
    body.className = "text";
    body.dataset.testid = "message-text";
    body.textContent = text;
    item.appendChild(body);
  }

  function addButtons(item, buttons) {
    var row = document.createElement("div");
    row.className = "buttons";
    buttons.forEach(function (button) {
      var element = document.createElement("button");
      element.type = "button";
      element.textContent = button.title;
      element.dataset.testid = "quick-reply";
      element.addEventListener("click", function () {
        Array.prototype.forEach.call(row.querySelectorAll("button"), function (b) { b.disabled = true; });
        send(button.payload, button.title);
      });
      row.appendChild(element);
    });
    item.appendChild(row);
  }

  function addAttachment(item, attachment) {
    var payload = attachment.payload || {};
    var src = payload.src || payload.url;
    if (!src) {
      addText(item, "(an attachment)");
      return;
    }
    if (attachment.type === "image") {
      var image = document.createElement("img");
      image.className = "picture";
      image.src = src;
      image.alt = payload.name || "image";
      image.dataset.testid = "message-image";
      item.appendChild(image);
      return;
    }
    var link = document.createElement("a");
    link.href = src;
    link.textContent = payload.name || src.split("/").pop() || "file";
    link.target = "_blank";
    link.rel = "noopener";
    link.dataset.testid = "message-file";
    item.appendChild(link);
  }

  function showBotMessage(data) {
    if (!data || typeof data !== "object") return;
    var agent = data.agent && typeof data.agent === "object" ? data.agent : null;
    var item = addItem(agent ? "agent" : "bot", agent ? "agent-message" : "bot-message");
    if (agent) {
      lastAgentName = agent.name || lastAgentName;
      addSender(item, agent);
      setTyping(false);
    }
    if (data.text) addText(item, data.text);
    if (data.attachment) addAttachment(item, data.attachment);
    else if (data.image) addAttachment(item, { type: "image", payload: { src: data.image } });
    var buttons = data.quick_replies || data.buttons;
    if (Array.isArray(buttons) && buttons.length) addButtons(item, buttons);
    if (!item.childNodes.length) item.remove();
    scrollDown();
  }

  function setTyping(typing) {
    typingName.textContent = lastAgentName || "Our colleague";
    typingBox.hidden = !typing;
  }

  function emitTyping(event) {
    if (!sessionId || !socket.connected) return;
    socket.emit("customer_event", { event: event, session_id: sessionId });
  }

  function stopTyping() {
    if (typingTimer) window.clearTimeout(typingTimer);
    typingTimer = null;
    if (typingSent) emitTyping("stoppedtyping");
    typingSent = false;
  }

  function send(text, shown) {
    if (!text || !sessionId) return;
    stopTyping();
    var item = addItem("customer", "customer-message");
    addText(item, shown || text);
    scrollDown();
    socket.emit("user_uttered", {
      message: text,
      session_id: sessionId,
      metadata: { url: window.location.href.split("?")[0] },
    });
  }

  socket.on("connect", function () {
    setStatus("connected");
    socket.emit("session_request", { session_id: sessionId });
  });
  socket.on("connect_error", function () { setStatus("cannot reach the chat server"); });
  socket.on("disconnect", function () { setStatus("disconnected"); });
  socket.on("session_confirm", function (confirmed) {
    sessionId = typeof confirmed === "string" ? confirmed : (confirmed && confirmed.session_id) || sessionId;
    window.localStorage.setItem(STORAGE_KEY, sessionId);
    document.body.dataset.sessionId = sessionId;
    setStatus("connected");
  });
  socket.on("bot_uttered", showBotMessage);
  socket.on("omnidesk_customer", function (details) {
    customerToken = details && typeof details.customer_token === "string" ? details.customer_token : null;
  });
  socket.on("agent_typing", function (data) { setTyping(Boolean(data && data.typing)); });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    showNotice("");
    send(text);
  });

  input.addEventListener("input", function () {
    if (!input.value) { stopTyping(); return; }
    if (!typingSent) { emitTyping("startedtyping"); typingSent = true; }
    if (typingTimer) window.clearTimeout(typingTimer);
    typingTimer = window.setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file || !sessionId) return;
    var body = new FormData();
    body.append("sender", sessionId);
    if (customerToken) body.append("token", customerToken);
    body.append("file", file, file.name);
    var item = addItem("customer", "customer-file");
    addText(item, "File: " + file.name);
    scrollDown();
    fetch(server + "/webhooks/omnidesk/upload", { method: "POST", body: body })
      .then(function (answer) {
        if (answer.ok) { item.dataset.state = "sent"; return null; }
        return answer.json().catch(function () { return {}; }).then(function (error) {
          item.dataset.state = "failed";
          showNotice(answer.status === 404
            ? "Files can be sent while you are chatting with one of our colleagues."
            : "The file was not sent: " + (error.message || error.error || ("error " + answer.status)));
        });
      })
      .catch(function () {
        item.dataset.state = "failed";
        showNotice("The file was not sent: the chat server cannot be reached.");
      });
  });
})();
