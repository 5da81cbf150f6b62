// "Show the wire": beside each answer, every SSE message as the browser got it.
// For teaching: it needs no second connection and no change on the server. It
// listens to the htmx SSE extension's own events on the page:
// - htmx:sseOpen, when a stream's EventSource opens (again, after a reconnect);
// - htmx:sseBeforeMessage, once per message an sse-swap element takes (the
//   MessageEvent: its name, data and lastEventId);
// - htmx:sseError, when the connection drops;
// and it adds one listener of its own to that same EventSource for `close`,
// which the snippet handles with sse-close, not sse-swap.
// The browser hands a page neither the `retry:` field nor `: ping` comments: the
// panel says so, and `curl -N` shows them.
"use strict";

const WIRE_KEY = "show-wire"; // localStorage: the toggle survives a reload
const WIRE_MAX_ROWS = 200; // rows kept in a panel; older ones are folded into a count
const WIRE_EXCERPT_CHARS = 80; // longer data is folded: an excerpt, the rest on demand
const WIRE_KEPT_CHARS = 2000; // the most of one message's data kept for the panel

// One record per stream element (`.stream`): what it received, and its panel.
const wires = new WeakMap();

function wireOf(stream) {
  let wire = wires.get(stream);
  if (!wire) {
    wire = { opened: null, rows: [], shownFolded: 0, lastId: "", lost: false, source: null, panel: null, frame: 0 };
    wires.set(stream, wire);
  }
  return wire;
}

function showingWire() {
  return document.body.classList.contains("show-wire");
}

// A row: what happened, when (ms since the stream first opened), its id, size, data.
function note(stream, row) {
  const wire = wireOf(stream);
  wire.opened ??= performance.now();
  row.at = performance.now() - wire.opened;
  wire.rows.push(row);
  if (wire.rows.length > WIRE_MAX_ROWS) {
    const gone = wire.rows.shift();
    if (!gone.drawn) {
      wire.shownFolded = (wire.shownFolded ?? 0) + 1; // never drawn: folded all the same
    }
  }
  if (showingWire()) {
    wire.frame ||= requestAnimationFrame(() => draw(stream));
  }
}

function message(event) {
  const data = event.data ?? "";
  return {
    kind: "message",
    name: event.type,
    id: event.lastEventId,
    bytes: new TextEncoder().encode(data).length,
    data: data.slice(0, WIRE_KEPT_CHARS),
    cut: data.length > WIRE_KEPT_CHARS,
  };
}

document.addEventListener("htmx:sseOpen", (event) => {
  const stream = event.target.closest(".stream");
  if (!stream) {
    return;
  }
  const wire = wireOf(stream);
  const source = event.detail.source;
  if (wire.source === source && wire.lost) {
    // The browser reconnected by itself, on the same EventSource: it sent the
    // id of the last event it got, and the server resumes after it.
    // (The browser sends the id of the last event it read; this page's events
    // all have data, so that is the last one shown here.)
    note(stream, { kind: "reconnect", text: `Reconnected: the browser sent Last-Event-ID: ${wire.lastId || "(none)"}` });
  } else if (wire.source) {
    note(stream, { kind: "reconnect", text: `A new connection (htmx made a new EventSource): ${source.url}` });
  } else {
    note(stream, { kind: "open", text: `Connected: GET ${new URL(source.url).pathname}${new URL(source.url).search}` });
  }
  wire.lost = false;
  if (wire.source !== source) {
    wire.source = source;
    source.addEventListener("close", (closing) => {
      wire.lastId = closing.lastEventId || wire.lastId;
      note(stream, message(closing));
    });
  }
});

document.addEventListener("htmx:sseBeforeMessage", (event) => {
  const stream = event.target.closest(".stream");
  if (!stream || event.detail.data === undefined) {
    return; // the browser's own "error" event (a dropped connection) has no data
  }
  wireOf(stream).lastId = event.detail.lastEventId || wireOf(stream).lastId;
  note(stream, message(event.detail));
});

document.addEventListener("htmx:sseError", (event) => {
  const stream = event.target.closest(".stream");
  const wire = stream && wires.get(stream);
  // A server event named `error` reaches the EventSource's error handler too, as a
  // message with data: that is a message (noted above), not a lost connection.
  if (!wire || wire.lost || event.detail.error?.data !== undefined) {
    return;
  }
  wire.lost = true;
  note(stream, { kind: "lost", text: "Connection lost: the browser will reconnect by itself" });
});

// The panel: an aside after the stream's own parts, drawn at most once a frame.
function draw(stream) {
  const wire = wireOf(stream);
  wire.frame = 0;
  if (!wire.panel) {
    wire.panel = document.createElement("aside");
    wire.panel.className = "wire";
    wire.panel.setAttribute("aria-label", "The wire: this answer's server-sent events");
    const title = document.createElement("h2");
    title.textContent = "The wire";
    const help = document.createElement("p");
    help.className = "wire-help";
    help.textContent =
      "Each message as the browser received it: time since the stream opened, id, event, size, data. " +
      "The retry: field and : ping comments reach the browser too, but it shows them to no page: curl -N shows them.";
    const folded = document.createElement("p");
    folded.className = "wire-folded";
    const list = document.createElement("ol");
    list.className = "wire-list";
    wire.panel.append(title, help, folded, list);
    stream.append(wire.panel);
  }
  const list = wire.panel.querySelector(".wire-list");
  const folded = wire.panel.querySelector(".wire-folded");
  // Follow the newest message, unless the reader scrolled up in the panel.
  const panel = wire.panel;
  const atEnd = panel.scrollHeight - panel.scrollTop - panel.clientHeight < 40;
  // Only the rows not drawn yet are made; the oldest go past the cap. A fast
  // model sends hundreds of messages a second: redrawing all would cost more
  // than the answer itself.
  list.append(...wire.rows.filter((row) => !row.drawn).map(rowElement));
  let dropped = 0;
  while (list.childElementCount > WIRE_MAX_ROWS) {
    list.firstElementChild.remove();
    dropped += 1;
  }
  wire.shownFolded = (wire.shownFolded ?? 0) + dropped;
  folded.textContent = `${wire.shownFolded.toLocaleString()} earlier messages folded away`;
  folded.hidden = !wire.shownFolded;
  if (atEnd) {
    panel.scrollTop = panel.scrollHeight;
  }
}

function rowElement(row) {
  row.drawn = true;
  const item = document.createElement("li");
  item.className = `wire-row wire-${row.kind}`;
  const at = document.createElement("span");
  at.className = "wire-at";
  at.textContent = `+${(row.at / 1000).toFixed(3)} s`;
  item.append(at);
  if (row.kind !== "message") {
    const text = document.createElement("span");
    text.className = "wire-note";
    text.textContent = row.text;
    item.append(text);
    return item;
  }
  item.dataset.event = row.name;
  const id = document.createElement("span");
  id.className = "wire-id";
  id.textContent = `id ${row.id}`;
  const name = document.createElement("code");
  name.className = "wire-name";
  name.textContent = row.name;
  const size = document.createElement("span");
  size.className = "wire-size";
  size.textContent = `${row.bytes.toLocaleString()} B`;
  item.append(id, name, size);
  // textContent, never innerHTML: the data is shown as the characters it is.
  if (row.data.length > WIRE_EXCERPT_CHARS || row.cut) {
    const more = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `${row.data.slice(0, WIRE_EXCERPT_CHARS)}…`;
    const whole = document.createElement("pre");
    whole.textContent = row.cut ? `${row.data}\n… (the rest is not kept here)` : row.data;
    more.append(summary, whole);
    item.append(more);
  } else {
    const data = document.createElement("pre");
    data.className = "wire-data";
    data.textContent = row.data;
    item.append(data);
  }
  return item;
}

// The toggle in the page's header.
function setWire(on) {
  document.body.classList.toggle("show-wire", on);
  localStorage.setItem(WIRE_KEY, on ? "1" : "");
  if (on) {
    document.querySelectorAll(".stream").forEach((stream) => {
      if (wires.has(stream)) {
        draw(stream);
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("show-wire");
  if (!toggle) {
    return;
  }
  toggle.checked = localStorage.getItem(WIRE_KEY) === "1";
  setWire(toggle.checked);
  toggle.addEventListener("change", () => setWire(toggle.checked));
});
