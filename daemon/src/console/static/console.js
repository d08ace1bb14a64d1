// frontdesk console: live updates without reloading. The server names a conversation that
// changed (server-sent events); the inbox list or the open conversation's history is fetched
// again as HTML the server rendered. Everything works without this file, by reloading.
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) {
    return;
  }
  const source = new EventSource("/events");
  // Tells assistive technology nothing; tells a page test that live updates are connected.
  source.addEventListener("open", function () {
    document.documentElement.dataset.live = "open";
  });
  // One fetch at a time; a change announced meanwhile fetches once more afterwards.
  let busy = false;
  let again = false;
  async function refresh(url) {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const response = await fetch(url, { credentials: "same-origin" });
        if (response.ok) {
          live.innerHTML = await response.text();
        }
      } while (again);
    } finally {
      busy = false;
    }
  }
  source.addEventListener("change", function (event) {
    if (live.dataset.live === "inbox") {
      refresh("/inbox/list");
    } else if (live.dataset.live === event.data || event.data === "*") {
      refresh(window.location.pathname + "/history");
    }
  });
})();
