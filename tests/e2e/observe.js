// Installed by the browser tests before any of the page's own scripts run
// (page.add_init_script). It writes down what the person sees and when, so a
// test can ask afterwards "did the answer grow in steps?" or "was `undefined`
// ever shown?" without racing the stream with polls.
//
// window.e2e.timeline: one entry each time the thought line, the answer or
//   the error line changes, with their text at that moment (textContent), and
//   the answer as rendered on screen (answerShown, innerText).
// window.e2e.sse: the SSE extension's own events (open, error, close and
//   why), and htmx's swap errors, in order.
"use strict";

window.e2e = { timeline: [], sse: [] };

// The parts of the latest turn a person reads. The answer is the streaming div
// first (`.answer-live`, Markdown rendered as it streams; `.answer-text` with
// --plain-stream); after the final swap it is the final answer's exact text
// (kept hidden for the Copy button, next to the Markdown rendering).
const LATEST_TURN = "#response-container > article.turn:last-of-type";
const WATCHED = {
  thought: ".thoughts",
  answer: ".answer-live, .answer-text",
  error: "[role=alert]",
};

function find(selector) {
  const turn = document.querySelector(LATEST_TURN);
  return turn === null ? null : turn.querySelector(selector);
}

function textOf(selector) {
  const element = find(selector);
  return element === null ? null : element.textContent;
}

// How the answer looks on screen: innerText follows CSS (white-space, hidden
// elements), unlike textContent. null while no answer text is visible.
function answerAsShown() {
  const element = find(WATCHED.answer);
  return element !== null && element.checkVisibility() ? element.innerText : null;
}

function recordIfChanged() {
  const now = {};
  for (const [part, selector] of Object.entries(WATCHED)) {
    now[part] = textOf(selector);
  }
  now.answerShown = answerAsShown();
  const timeline = window.e2e.timeline;
  const last = timeline[timeline.length - 1];
  if (last && Object.keys(now).every((part) => last[part] === now[part])) {
    return;
  }
  timeline.push({ t: performance.now(), ...now });
}

// Each SSE event is its own task, so the observer's callback (a microtask)
// sees every swap separately: one timeline entry per visible change.
new MutationObserver(recordIfChanged).observe(document, {
  childList: true,
  subtree: true,
  characterData: true,
});

for (const name of [
  "htmx:sseOpen",
  "htmx:sseError",
  "htmx:sseClose",
  "htmx:swapError",
  "htmx:oobErrorNoTarget",
]) {
  document.addEventListener(name, (event) => {
    const detail = event.detail || {};
    window.e2e.sse.push({ t: performance.now(), name, type: detail.type || null });
  });
}
