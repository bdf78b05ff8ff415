// The agent desk: lists chats live (server-sent events), shows one, sends the agent's actions
// through the sandbox's control API, which calls the bot's hookpoints as Omnidesk would.
// Text is always set with textContent; only markdown the server rendered (escaped first) is HTML.
"use strict";

const TYPING_PAUSE_MS = 2500;
const chats = new Map();
const tickets = new Map();
let selected = null; // {kind: "chat"|"ticket", id}
let typing = { chatId: null, timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "html") node.innerHTML = value; // server-rendered, escaped markdown only
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function time(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: "not JSON: " + response.status }; }
  if (!response.ok) throw new Error((data && data.error) || ("HTTP " + response.status));
  return data;
}

function showHookpoint(label, result) {
  const box = $("last-hookpoint");
  box.hidden = false;
  const ok = result.hookpoint_error == null && result.hookpoint_status >= 200 && result.hookpoint_status < 300;
  box.className = "hookpoint " + (ok ? "ok" : "failed");
  box.dataset.ok = ok ? "true" : "false";
  box.textContent = label + ": " + (result.hookpoint_error
    ? "failed: " + result.hookpoint_error
    : "hookpoint answered " + result.hookpoint_status + " " + (result.hookpoint_body || "").slice(0, 300));
}

function showError(label, error) {
  const box = $("last-hookpoint");
  box.hidden = false;
  box.className = "hookpoint failed";
  box.dataset.ok = "false";
  box.textContent = label + " failed: " + error.message;
}

// ---- rendering --------------------------------------------------------------------------

function chatPreview(chat) {
  const last = chat.messages[chat.messages.length - 1];
  return last ? last.text.split("\n")[0].slice(0, 80) : "(no message)";
}

function renderLists() {
  const lists = { waiting: $("list-waiting"), active: $("list-active"), ended: $("list-ended") };
  const counts = { waiting: 0, active: 0, ended: 0 };
  for (const list of Object.values(lists)) list.replaceChildren();
  const ordered = [...chats.values()].sort((a, b) => b.updated_at - a.updated_at);
  for (const chat of ordered) {
    counts[chat.status] += 1;
    const isSelected = selected && selected.kind === "chat" && selected.id === chat.chat_session_id;
    lists[chat.status].append(el("li", {
      class: isSelected ? "selected" : "",
      "data-testid": "chat-item",
      "data-chat-id": chat.chat_session_id,
      onclick: () => select("chat", chat.chat_session_id),
    },
      el("div", { class: "title", text: (chat.customer_name || chat.email_address || chat.phone_number || chat.chat_session_id) }),
      el("div", { class: "preview", text: (chat.customer_typing ? "typing... " : "") + chatPreview(chat) })));
  }
  for (const [status, count] of Object.entries(counts)) $("count-" + status).textContent = count;
  const ticketList = $("ticket-list");
  ticketList.replaceChildren();
  for (const ticket of [...tickets.values()].reverse()) {
    ticketList.append(el("li", {
      class: selected && selected.kind === "ticket" && selected.id === ticket.ticket_id ? "selected" : "",
      "data-testid": "ticket-item",
      "data-ticket-id": String(ticket.ticket_id),
      onclick: () => select("ticket", ticket.ticket_id),
    }, el("div", { class: "title", text: "#" + ticket.ticket_id + " " + ticket.subject }),
       el("div", { class: "preview", text: ticket.from || "(no sender)" })));
  }
  $("count-tickets").textContent = tickets.size;
}

function actionText(action) {
  const f = action.fields;
  if (action.kind === "reply") return f.message;
  if (action.kind === "typing") return f.Typing === "true" ? "(typing...)" : "(stopped typing)";
  if (action.kind === "upload") return "sent file " + f.file;
  if (action.kind === "end") return "stopped the chat";
  return action.kind;
}

function renderChat(chat) {
  $("empty-state").hidden = true;
  $("ticket-view").hidden = true;
  $("chat-view").hidden = false;
  $("chat-title").textContent = chat.customer_name || chat.chat_session_id;
  const meta = ["chat " + chat.chat_session_id, "ticket #" + chat.ticket_id];
  if (chat.email_address) meta.push(chat.email_address);
  if (chat.phone_number) meta.push(chat.phone_number);
  if (chat.url) meta.push("from " + chat.url);
  if (chat.ended) meta.push("ended by " + chat.ended_by);
  $("chat-meta").textContent = meta.join(" \u00b7 ");
  const badge = $("chat-status");
  badge.textContent = chat.status;
  badge.className = "badge " + chat.status;
  const problems = $("numbering-problems");
  problems.hidden = chat.numbering_problems.length === 0;
  problems.textContent = "messageNumber problems: " + chat.numbering_problems.join("; ");

  const items = [];
  for (const ticketId of chat.related_tickets) {
    const ticket = tickets.get(ticketId);
    if (ticket) items.push({ seq: -1, node: el("div", { class: "item transcript", "data-testid": "chat-transcript" },
      el("div", { class: "who", text: "chatbot log #" + ticket.ticket_id + ": " + ticket.subject }),
      el("div", { class: "markdown", html: ticket.html })) });
  }
  for (const m of chat.messages) {
    items.push({ seq: m.seq, node: el("div", { class: "item customer", "data-testid": "customer-message" },
      el("div", { class: "who", text: "customer \u00b7 " + time(m.received_at) + (m.number == null ? "" : " \u00b7 #" + m.number) }),
      el("div", { class: "markdown", html: m.html })) });
  }
  for (const a of chat.attachments) {
    items.push({ seq: a.seq, node: el("div", { class: "item customer", "data-testid": "customer-attachment" },
      el("div", { class: "who", text: "customer file \u00b7 " + time(a.received_at) }),
      el("a", { class: "file", href: "/_sandbox/attachments/" + a.id, download: a.name, text: a.name + " (" + a.size + " bytes)" })) });
  }
  for (const e of chat.events) {
    if (e.name === "startedtyping" || e.name === "stoppedtyping") continue;
    items.push({ seq: e.seq, node: el("div", { class: "item event", "data-testid": "chat-event", text: e.name + " \u00b7 " + time(e.received_at) }) });
  }
  for (const a of chat.agent_actions) {
    if (a.kind === "typing" && a.ok) continue;
    const result = a.hookpoint_error ? "failed: " + a.hookpoint_error
      : "hookpoint " + a.hookpoint_status + " " + (a.hookpoint_body || "").slice(0, 120);
    items.push({ seq: a.seq, node: el("div", { class: "item agent" + (a.ok ? "" : " failed"), "data-testid": "agent-action", "data-kind": a.kind, "data-ok": String(a.ok) },
      el("div", { class: "who", text: (a.fields.name || "agent") + " \u00b7 " + time(a.at) }),
      el("div", { text: actionText(a) }),
      el("div", { class: "result" + (a.ok ? "" : " failed"), "data-testid": "hookpoint-result", text: result })) });
  }
  items.sort((a, b) => a.seq - b.seq);
  const timeline = $("timeline");
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
  timeline.replaceChildren(...items.map((i) => i.node));
  if (atBottom) timeline.scrollTop = timeline.scrollHeight;
  $("customer-typing").hidden = !chat.customer_typing;
  for (const id of ["reply-input", "send-reply", "file-input", "send-file", "end-chat"]) $(id).disabled = chat.ended;
}

function renderTicket(ticket) {
  $("empty-state").hidden = true;
  $("chat-view").hidden = true;
  $("ticket-view").hidden = false;
  $("ticket-title").textContent = "#" + ticket.ticket_id + " " + ticket.subject;
  $("ticket-meta").textContent = [ticket.from || "(no sender)", ticket.brand_id ? "brand " + ticket.brand_id : null, time(ticket.created_at)].filter(Boolean).join(" \u00b7 ");
  $("ticket-body").innerHTML = ticket.html; // escaped and rendered by the server
}

function render() {
  renderLists();
  if (!selected) return;
  if (selected.kind === "chat" && chats.has(selected.id)) renderChat(chats.get(selected.id));
  else if (selected.kind === "ticket" && tickets.has(selected.id)) renderTicket(tickets.get(selected.id));
}

function select(kind, id) {
  if (selected && selected.kind === "chat" && (kind !== "chat" || selected.id !== id)) stopTyping();
  selected = { kind, id };
  $("last-hookpoint").hidden = true;
  render();
}

// ---- live state ------------------------------------------------------------------------

// Live events that arrive while reload() waits for its answers: replayed on top of
// them, so a chat that appears in that moment is not wiped by an older list.
let eventsDuringReload = null;

async function reload() {
  eventsDuringReload = [];
  try {
    const [chatData, ticketData, status] = await Promise.all([
      api("GET", "/_sandbox/chats"), api("GET", "/_sandbox/tickets"), api("GET", "/_sandbox/status")]);
    chats.clear();
    for (const chat of chatData.chats) chats.set(chat.chat_session_id, chat);
    tickets.clear();
    for (const ticket of ticketData.tickets) tickets.set(ticket.ticket_id, ticket);
    showAgents(status.agents_online);
    showProfile(status.agent_name, status.agent_picture);
    for (const event of eventsDuringReload) apply(event);
  } finally {
    eventsDuringReload = null;
  }
  render();
}

function showAgents(online) {
  $("agents-online").checked = online;
  $("agents-online-label").textContent = online ? "agents online" : "agents offline";
}

function showProfile(name, picture) {
  if (document.activeElement !== $("agent-name")) $("agent-name").value = name;
  if (document.activeElement !== $("agent-picture")) $("agent-picture").value = picture;
  const preview = $("profile-picture-preview");
  preview.hidden = !picture;
  preview.onerror = () => { preview.hidden = true; };
  if (picture) preview.src = picture;
}

function apply(event) {
  if (event.type === "chat") chats.set(event.chat.chat_session_id, event.chat);
  else if (event.type === "chat_dropped") chats.delete(event.chat_session_id);
  else if (event.type === "ticket") tickets.set(event.ticket.ticket_id, event.ticket);
  else if (event.type === "agents") showAgents(event.online);
  else if (event.type === "profile") showProfile(event.name, event.picture);
}

function connect() {
  const source = new EventSource("/_sandbox/events");
  source.addEventListener("hello", () => {
    $("stream-status").textContent = "live";
    $("stream-status").className = "stream live";
    reload().catch((e) => showError("loading", e));
  });
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "reset") {
      chats.clear(); tickets.clear(); selected = null;
      reload().catch((e) => showError("loading", e));
      return;
    }
    if (eventsDuringReload) eventsDuringReload.push(event);
    apply(event);
    render();
  };
  source.onerror = () => {
    $("stream-status").textContent = "reconnecting...";
    $("stream-status").className = "stream";
  };
}

// ---- the agent's actions ----------------------------------------------------------------

function currentChatId() {
  return selected && selected.kind === "chat" ? selected.id : null;
}

async function sendTyping(chatId, value) {
  try {
    const result = await api("POST", "/_sandbox/chats/" + encodeURIComponent(chatId) + "/typing", { typing: value });
    if (result.hookpoint_error || result.hookpoint_status >= 300) showHookpoint("typing", result);
  } catch (e) { showError("typing", e); }
}

function stopTyping() {
  if (!typing.chatId) return Promise.resolve();
  clearTimeout(typing.timer);
  const chatId = typing.chatId;
  typing = { chatId: null, timer: null };
  return sendTyping(chatId, false);
}

function onInput() {
  const chatId = currentChatId();
  if (!chatId || !$("reply-input").value) return;
  if (typing.chatId !== chatId) {
    typing.chatId = chatId;
    sendTyping(chatId, true);
  }
  clearTimeout(typing.timer);
  typing.timer = setTimeout(stopTyping, TYPING_PAUSE_MS);
}

async function sendReply(event) {
  event.preventDefault();
  const chatId = currentChatId();
  const input = $("reply-input");
  const message = input.value.trim();
  if (!chatId || !message) return;
  $("send-reply").disabled = true;
  try {
    await stopTyping();
    const result = await api("POST", "/_sandbox/chats/" + encodeURIComponent(chatId) + "/reply", { message });
    showHookpoint("reply", result);
    input.value = "";
  } catch (e) { showError("reply", e); }
  finally { $("send-reply").disabled = false; }
}

async function sendFile() {
  const chatId = currentChatId();
  const file = $("file-input").files[0];
  if (!chatId) return;
  if (!file) { showError("file", new Error("choose a file first")); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const result = await api("POST", "/_sandbox/chats/" + encodeURIComponent(chatId) + "/upload", form);
    showHookpoint("file", result);
    $("file-input").value = "";
  } catch (e) { showError("file", e); }
}

async function endChat() {
  const chatId = currentChatId();
  if (!chatId) return;
  try {
    await stopTyping();
    showHookpoint("stop chat", await api("POST", "/_sandbox/chats/" + encodeURIComponent(chatId) + "/end"));
  } catch (e) { showError("stop chat", e); }
}

async function saveProfile(event) {
  event.preventDefault();
  try {
    const profile = await api("POST", "/_sandbox/agent-profile", { name: $("agent-name").value, picture: $("agent-picture").value });
    $("profile-status").textContent = "saved";
    showProfile(profile.name, profile.picture);
  } catch (e) { $("profile-status").textContent = e.message; }
}

async function toggleAgents() {
  try {
    const result = await api("POST", "/_sandbox/agents", { online: $("agents-online").checked });
    showAgents(result.agents_online);
  } catch (e) { showError("availability", e); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", sendReply);
  $("reply-input").addEventListener("input", onInput);
  $("reply-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("send-file").addEventListener("click", sendFile);
  $("end-chat").addEventListener("click", endChat);
  $("profile-form").addEventListener("submit", saveProfile);
  $("agents-online").addEventListener("change", toggleAgents);
  connect();
});
