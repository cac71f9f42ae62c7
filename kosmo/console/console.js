// KosmoConnect console: plain JavaScript over the public HTTP API and the websocket stream
// (docs/http-api.md). No build step, nothing from another host.
//
// Rules:
// - The sign-in mode and the text limit come from GET /api/v1/console-config.
// - Every error shown is the API's problem `detail` (or its title), next to the control that
//   caused it; a failed request never blanks the page.
// - Statuses only move forward: an answer or event older than what is shown (a lower rank)
//   does not replace it, so the order in which the POST answer and stream events arrive does
//   not matter.
// - The stream reconnects with ?since=<last event_id>, so nothing is missed. An API key cannot
//   be sent on a browser websocket (keys travel only in the Authorization header), so with a
//   key the open conversation is polled instead.

const DEMO_USERS = [
  ["11111111-1111-1111-1111-111111111111", "Demo Wanderer (wanderer)"],
  ["22222222-2222-2222-2222-222222222222", "Demo Guardian (guardian)"],
  ["33333333-3333-3333-3333-333333333333", "Demo Sanctuary (sanctuary)"],
  ["44444444-4444-4444-4444-444444444444", "Demo Free (free)"],
  ["55555555-5555-5555-5555-555555555555", "Demo Canceled (lapsed)"],
];
const RANK = { pending: 0, queued: 1, transmitted: 2, delivered: 3, failed: 3, expired: 3,
               canceled: 3, received: 3 };
const NODE_ID = /^![0-9a-fA-F]{8}$/;
const encoder = new TextEncoder();
const $ = (id) => document.getElementById(id);

const state = {
  mode: "jwt", maxBytes: 200, credential: null,
  conversations: new Map(),   // node_id -> {node_id, last_message, updated_at}
  node: null,                 // the open conversation
  messages: new Map(),        // message_id -> message, of the open conversation
  lastEventId: null, socket: null, poll: null,
};

class ApiProblem extends Error {
  constructor(status, body) {
    super(body?.detail || body?.title || `the gateway answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.credential) {
    if (state.mode === "header" && !isKey(state.credential)) headers["X-User-ID"] = state.credential;
    else headers["Authorization"] = `Bearer ${state.credential}`;
  }
  if (options.json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method: options.method || "GET", headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined });
  } catch (error) {
    throw new ApiProblem(0, { detail: "the gateway cannot be reached" });
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiProblem(response.status, body);
  return body;
}

const isKey = (credential) => credential.startsWith("kosmo_sk_");

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit",
                                                      second: "2-digit" }) : "";
}

function statusText(message) {
  if (message.status === "failed") return `failed: ${message.reason || "unknown"}`;
  return message.status;
}

// Sign in and the account.

async function start() {
  try {
    const config = await api("/api/v1/console-config");
    state.mode = config.auth_mode;
    state.maxBytes = config.max_text_bytes;
  } catch (error) {
    $("signin-problem").textContent = error.message;
  }
  const select = $("user");
  for (const [id, name] of DEMO_USERS) select.append(el("option", { value: id }, name));
  select.append(el("option", { value: "" }, "Another id (type it below)"));
  select.addEventListener("change", () => {
    $("user-id").value = select.value;
    if (!select.value) $("user-id").focus();
  });
  $("user-id").value = select.value;
  $(state.mode === "header" ? "header-mode" : "jwt-mode").hidden = false;
  $("signin-form").addEventListener("submit", (event) => { event.preventDefault(); signIn(); });
  $("new-form").addEventListener("submit", (event) => { event.preventDefault(); newConversation(); });
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("message").addEventListener("input", count);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  count();
}

async function signIn() {
  const credential = (state.mode === "header" ? $("user-id").value : $("token").value).trim();
  $("signin-problem").textContent = "";
  if (!credential) {
    $("signin-problem").textContent = state.mode === "header" ? "choose or type a user id"
                                                             : "paste a token or an API key";
    return;
  }
  const previous = state.credential;
  state.credential = credential;
  let me;
  try {
    me = await api("/api/v1/me");
  } catch (error) {
    state.credential = previous;
    $("signin-problem").textContent = error.message;
    return;
  }
  closeStream();
  state.conversations.clear();
  state.messages.clear();
  state.node = null;
  state.lastEventId = null;
  showAccount(me);
  $("app").hidden = false;
  $("thread-title").textContent = "No conversation open";
  $("composer").hidden = true;
  $("messages").replaceChildren();
  openStream();
  await loadConversations();
}

function showAccount(me) {
  $("account").hidden = false;
  $("who").textContent = `Signed in as ${me.user_id}`;
  const scope = { any: "may message any node", whitelist: `may message ${me.whitelist.join(", ")}`,
                  receive_only: "can receive replies but not send" }[me.scope];
  const lapsed = me.subscription && !["active", "trialing"].includes(me.subscription.status)
    ? ` (subscription ${me.subscription.status})` : "";
  $("plan").textContent = `Plan: ${me.plan ?? "none"}${lapsed}; ${scope}`;
  showQuota(me.quota);
}

function showQuota(quota) {
  const meter = $("quota");
  if (!quota) {
    meter.max = 1; meter.value = 0;
    $("quota-text").textContent = "no quota";
  } else if (quota.limit === null) {
    meter.max = 1; meter.value = 0;
    $("quota-text").textContent = `${quota.used} used, unlimited`;
  } else {
    meter.max = Math.max(quota.limit, 1); meter.value = quota.used;
    $("quota-text").textContent =
      `${quota.used} of ${quota.limit} used, ${quota.remaining} left until ` +
      new Date(quota.resets_at).toLocaleDateString();
  }
}

// Conversations.

async function loadConversations() {
  try {
    const page = await api("/api/v1/messages/conversations?limit=200");
    state.conversations.clear();
    for (const item of page.conversations) state.conversations.set(item.node_id, item);
    renderConversations();
  } catch (error) {
    $("node-problem").textContent = error.message;
  }
}

function renderConversations() {
  const items = [...state.conversations.values()].sort((a, b) =>
    b.updated_at.localeCompare(a.updated_at) || b.node_id.localeCompare(a.node_id));
  $("conversations").replaceChildren(...items.map((item) => {
    const last = item.last_message;
    const who = last ? (last.direction === "outbound" ? "You: " : "") + last.text : "";
    return el("li", {}, el("button", {
      type: "button", "aria-current": item.node_id === state.node ? "true" : "false",
      onclick: () => openConversation(item.node_id),
    }, el("span", { class: "node" }, item.node_id), el("span", { class: "last" }, who)));
  }));
}

function noteInConversations(message) {
  const known = state.conversations.get(message.node_id);
  if (!known || known.updated_at <= message.created_at) {
    state.conversations.set(message.node_id, { node_id: message.node_id,
      last_message: message, updated_at: message.created_at });
  } else if (known.last_message?.message_id === message.message_id) {
    known.last_message = message;
  }
  renderConversations();
}

function newConversation() {
  const node = $("node").value.trim();
  $("node-problem").textContent = "";
  if (!NODE_ID.test(node)) {
    $("node-problem").textContent = "a node id is ! followed by 8 hex digits, e.g. !a1b2c3d4";
    return;
  }
  openConversation(node.toLowerCase());
  $("message").focus();
}

async function openConversation(node) {
  state.node = node;
  state.messages.clear();
  $("thread-title").textContent = `Conversation with ${node}`;
  $("composer").hidden = false;
  $("problem").textContent = "";
  renderConversations();
  renderThread();
  await refreshThread();
  startPolling();
}

async function refreshThread() {
  const node = state.node;
  let cursor = null;
  try {
    do {
      const query = `limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const page = await api(`/api/v1/messages/conversations/${encodeURIComponent(node)}?${query}`);
      if (state.node !== node) return;
      for (const message of page.messages) merge(message);
      cursor = page.next_cursor;
    } while (cursor);
  } catch (error) {
    $("problem").textContent = error.message;
  }
  renderThread();
}

function merge(message) {
  if (message.node_id !== state.node) return false;
  const known = state.messages.get(message.message_id);
  if (known && RANK[known.status] > RANK[message.status]) return false;
  state.messages.set(message.message_id, message);
  return true;
}

function renderThread() {
  const list = $("messages");
  const items = [...state.messages.values()].sort((a, b) =>
    a.created_at.localeCompare(b.created_at) || a.message_id.localeCompare(b.message_id));
  list.replaceChildren(...items.map(bubble));
  list.scrollTop = list.scrollHeight;
}

function bubble(message) {
  const meta = el("span", { class: "meta" });
  if (message.direction === "outbound") {
    meta.append(el("span", { class: `status ${message.status}`, "data-status": message.status },
                   statusText(message)));
    if (message.queue_position !== null && message.queue_position !== undefined)
      meta.append(` · queue position ${message.queue_position}`);
    if (message.estimated_transmit_at && RANK[message.status] < RANK.transmitted)
      meta.append(` · expected on air ${time(message.estimated_transmit_at)}`);
    if (message.queue_position !== null && message.queue_position !== undefined)
      meta.append(el("button", { type: "button", class: "secondary",
        "aria-label": `Cancel message: ${message.text}`,
        onclick: () => cancel(message.message_id) }, "Cancel"));
  } else {
    meta.append(`reply · ${time(message.created_at)}`);
  }
  return el("li", { class: `bubble ${message.direction}`, "data-message-id": message.message_id },
            message.text, meta);
}

// Sending and canceling.

function count() {
  const bytes = encoder.encode($("message").value).length;
  const counter = $("counter");
  counter.textContent = `${bytes} / ${state.maxBytes} bytes`;
  counter.classList.toggle("over", bytes > state.maxBytes);
  $("message").setAttribute("aria-invalid", bytes > state.maxBytes ? "true" : "false");
  return bytes;
}

async function send() {
  const text = $("message").value;
  const button = $("send");
  $("problem").textContent = "";
  if (!state.node || button.disabled) return;
  if (!text.trim()) { $("problem").textContent = "write a message first"; return; }
  button.disabled = true;
  try {
    const answer = await api("/api/v1/messages", { method: "POST",
      json: { target_node_id: state.node, text } });
    const { quota, ...message } = answer;
    if (quota) showQuota(quota);
    merge(message);
    noteInConversations(message);
    renderThread();
    $("message").value = "";
    count();
  } catch (error) {
    $("problem").textContent = error.message;
    if (error.body?.quota) showQuota(error.body.quota);
  } finally {
    button.disabled = false;
  }
}

async function cancel(messageId) {
  $("problem").textContent = "";
  try {
    const message = await api(`/api/v1/messages/${messageId}`, { method: "DELETE" });
    merge(message);
    renderThread();
    const me = await api("/api/v1/me");
    showQuota(me.quota);
  } catch (error) {
    $("problem").textContent = error.message;
  }
}

// Live updates.

function openStream() {
  if (isKey(state.credential)) {
    $("stream-state").textContent = "API key: updates every 5 s";
    return;
  }
  const param = state.mode === "header" ? "user_id" : "token";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let url = `${scheme}://${location.host}/api/v1/stream?${param}=${encodeURIComponent(state.credential)}`;
  if (state.lastEventId) url += `&since=${state.lastEventId}`;
  const socket = new WebSocket(url);
  const credential = state.credential;
  state.socket = socket;
  socket.addEventListener("open", () => { $("stream-state").textContent = "live"; });
  socket.addEventListener("message", (frame) => {
    const event = JSON.parse(frame.data);
    state.lastEventId = event.event_id;
    noteInConversations(event.message);
    if (merge(event.message)) renderThread();
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket || state.credential !== credential) return;
    $("stream-state").textContent = "reconnecting…";
    setTimeout(() => { if (state.socket === socket) openStream(); }, 2000);
  });
}

function closeStream() {
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close(1000);
  clearInterval(state.poll);
  state.poll = null;
}

function startPolling() {
  clearInterval(state.poll);
  if (isKey(state.credential)) state.poll = setInterval(refreshThread, 5000);
}

start();
