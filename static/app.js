// The page's only JavaScript: htmx does the streaming, this does the manners.

// Without htmx the form would fall back to a plain page reload and lose the
// prompt. Say why instead: usually the CDN is out of reach and `npm ci` was not run.
document.addEventListener("DOMContentLoaded", () => {
  if (!window.htmx) {
    const note = document.createElement("p");
    note.className = "refusal";
    note.setAttribute("role", "alert");
    note.textContent =
      "htmx did not load, so this page cannot stream. Run `npm ci` once (with internet) " +
      "in the app's folder and restart the server: it then serves htmx itself.";
    document.querySelector("main").prepend(note);
    document.querySelector("form")?.addEventListener("submit", (event) => event.preventDefault());
  }
});

// The browser's EventSource fires its own "error" event whenever a connection
// drops, and it carries no data. Our listener for the server's `error` event
// would pass that to htmx, whose swap then throws (a TypeError and an
// htmx:swapError on every drop). Only events the server sent have data.
document.addEventListener("htmx:sseBeforeMessage", (event) => {
  if (event.detail.data === undefined) {
    event.preventDefault();
  }
});

// A stream opens: say so once, in its status line (a live region).
document.addEventListener("htmx:sseOpen", (event) => {
  const status = event.target.closest(".stream")?.querySelector(".status");
  if (status && !status.textContent) {
    status.textContent = "Generating…";
  }
});

// When a stream closes.
// - Replaced by a newer prompt: ask the server to stop it now. It cannot tell
//   that from a dropped connection, and would let the model write on for the
//   grace period, for nobody.
// - Ended by the server: the Stop button goes, the answer is no longer busy,
//   and the status line says how it ended (read out once by screen readers).
document.addEventListener("htmx:sseClose", (event) => {
  const stream = event.target.closest(".stream");
  const stop = stream?.querySelector(".stop");
  if (event.detail.type === "nodeReplaced") {
    if (stop) {
      fetch(stop.getAttribute("hx-post"), { method: "POST" });
    }
    return;
  }
  if (!stream || event.detail.type !== "message") {
    return;
  }
  stop?.remove();
  stream.querySelector("[aria-busy]")?.setAttribute("aria-busy", "false");
  const failed = stream.querySelector(".error")?.textContent.trim();
  const stopped = stream.querySelector("[data-finish=stopped]");
  stream.querySelector(".status").textContent =
    failed ? "Stopped by an error." : stopped ? "Stopped." : "Done.";
  // The turn has ended: its Regenerate (or Retry) and Edit buttons show.
  const turn = stream.closest(".turn");
  turn?.classList.add("done");
  turn?.classList.toggle("failed", Boolean(failed));
  // Back to the prompt box for the next question, unless the person is elsewhere.
  const active = document.activeElement;
  if (!active || active === document.body || active.matches("button")) {
    promptBox()?.focus();
  }
});

// Follow the growing answer, unless the person scrolled up to read. This is
// done once per frame, just before the browser draws it, never once per event:
// reading the page's height lays the page out, and Chromium lays out a
// paragraph again from its start on each append, so a layout per event grew
// with the square of an answer without line breaks (300 KB in one word froze
// the tab for a minute). Where the window is gets read at that frame, not kept
// from scroll events (they arrive a frame late, and a swap in between would
// pull the person back down), and is measured against the page as it was when
// last followed, before the swaps since then grew it.
// A new prompt is followed from its first event, wherever the window was.
const FOLLOW_SLACK_PX = 80;
let newPrompt = false;
let followedHeight = null; // the page's height when it was last followed
let followFrame = 0;
document.addEventListener("htmx:afterRequest", (event) => {
  if (event.detail.elt.matches("form")) {
    newPrompt = true; // not the Stop button's POST
  }
});
document.addEventListener("htmx:sseMessage", () => {
  followFrame ||= requestAnimationFrame(follow);
});
function follow() {
  followFrame = 0;
  const height = document.documentElement.scrollHeight; // the layout this frame needs anyway
  // The page as last followed, or as it is now if it shrank since (the window
  // then moved up with its end: that is not the person scrolling away).
  const bottom = Math.min(followedHeight ?? height, height);
  const fromBottom = bottom - window.innerHeight - window.scrollY;
  if (newPrompt || fromBottom < FOLLOW_SLACK_PX) {
    window.scrollTo({ top: height });
  }
  newPrompt = false;
  followedHeight = height;
}

// The keyboard, as in other chat apps: Enter sends (so do Ctrl+Enter and
// Cmd+Enter), Shift+Enter makes a new line, Escape stops the answer being written.
const promptBox = () => document.getElementById("prompt");
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target === promptBox() && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    event.target.form.requestSubmit();
  } else if (event.key === "Escape") {
    const stops = document.querySelectorAll(".thread .stop");
    stops[stops.length - 1]?.click();
  }
});

// A prompt the server took: the box empties, ready for the next one. A refused
// one keeps its text, and the refusal shows beside it (the server retargets it).
document.addEventListener("htmx:afterRequest", (event) => {
  // Not `successful`: htmx counts a refusal it swaps in (422, 409…) as one.
  const status = event.detail.xhr?.status ?? 0;
  if (status < 200 || status > 299 || event.detail.elt.matches(".stop")) {
    return;
  }
  const box = promptBox();
  document.getElementById("prompt-error").replaceChildren();
  if (event.detail.elt.matches("form")) {
    box.value = "";
    stopEditing();
    countCharacters();
  }
});

// How much of the prompt's limit is used, shown before it is reached.
function countCharacters() {
  const counter = document.querySelector(".count");
  const box = promptBox();
  if (!counter || !box) {
    return;
  }
  const max = Number(counter.dataset.max);
  counter.textContent = `${box.value.length.toLocaleString()} / ${max.toLocaleString()}`;
  counter.classList.toggle("near-limit", box.value.length > max * 0.9);
}
document.addEventListener("input", (event) => {
  if (event.target === promptBox()) {
    countCharacters();
  }
});

// Edit: the last prompt goes back into the box; sending it replaces that turn.
document.addEventListener("click", (event) => {
  const edit = event.target.closest("button.edit");
  if (edit) {
    const turn = edit.closest(".turn");
    promptBox().value = turn.querySelector(".prompt-text").textContent;
    document.getElementById("replace").value = edit.dataset.edit;
    document.querySelector(".editing").hidden = false;
    countCharacters();
    promptBox().focus();
  } else if (event.target.closest("button.cancel-edit")) {
    stopEditing();
    promptBox().value = "";
    countCharacters();
  }
});
function stopEditing() {
  document.getElementById("replace").value = "";
  document.querySelector(".editing").hidden = true;
}

// Copy buttons in a final answer: the whole answer, or one code block.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) {
    return;
  }
  const source = button.dataset.copy === "answer"
    ? button.closest(".final-container").querySelector(".answer-source")
    : button.closest(".code-block").querySelector("code");
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});
