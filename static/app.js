// The page's only JavaScript: htmx does the streaming, this does the manners.

// The browser's EventSource fires its own "error" event whenever a connection
// drops, and it carries no data. Our listener for the server's `error` event
// would pass that to htmx, whose swap then throws (a TypeError and an
// htmx:swapError on every drop). Only events the server sent have data.
document.addEventListener("htmx:sseBeforeMessage", (event) => {
  if (event.detail.data === undefined) {
    event.preventDefault();
  }
});

// A stream replaced by a newer prompt: ask the server to stop it now. It cannot
// tell that from a dropped connection, and would let the model write on for
// the grace period, for nobody.
document.addEventListener("htmx:sseClose", (event) => {
  const stop = event.target.querySelector(".stop");
  if (event.detail.type === "nodeReplaced" && stop) {
    fetch(stop.getAttribute("hx-post"), { method: "POST" });
  }
});

// When a stream ends: the Stop button goes, the answer is no longer busy, and
// the status line says how it ended (read out once by screen readers).
document.addEventListener("htmx:sseClose", (event) => {
  const stream = event.target.closest(".stream");
  if (!stream || event.detail.type !== "message") {
    return; // replaced by a newer prompt: nothing to announce
  }
  stream.querySelector(".stop")?.remove();
  stream.querySelector("[aria-busy]")?.setAttribute("aria-busy", "false");
  const failed = stream.querySelector(".error")?.textContent.trim();
  stream.querySelector(".status").textContent = failed ? "Stopped by an error." : "Done.";
});

// Follow the growing answer, unless the person scrolled up to read.
let following = true;
window.addEventListener("scroll", () => {
  const fromBottom = document.documentElement.scrollHeight - window.innerHeight - window.scrollY;
  following = fromBottom < 80;
});
document.addEventListener("htmx:sseMessage", () => {
  if (following) {
    window.scrollTo({ top: document.documentElement.scrollHeight });
  }
});

// Ctrl+Enter (or Cmd+Enter) in the prompt submits the form.
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.form) {
    event.preventDefault();
    event.target.form.requestSubmit();
  }
});

// Copy buttons in a final answer: the whole answer, or one code block.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) {
    return;
  }
  const source = button.dataset.copy === "answer"
    ? button.closest(".final-container").querySelector(".answer-source")
    : button.parentElement.querySelector("code");
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});
