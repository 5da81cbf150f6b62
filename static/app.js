// The page's only JavaScript: htmx does the rest.

// The browser's EventSource fires its own "error" event whenever a connection
// drops, and it carries no data. Our listener for the server's `error` event
// would swap that in as "undefined". Only events the server sent have data.
document.addEventListener("htmx:sseBeforeMessage", (event) => {
  if (event.detail.data === undefined) {
    event.preventDefault();
  }
});
