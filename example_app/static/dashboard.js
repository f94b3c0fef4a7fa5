// The example dashboard refreshes itself: fetch the server-rendered fragment, swap it in.
// Without JavaScript the page still shows everything (and reloads itself, see <noscript>).
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const announcer = document.getElementById("announcer");
  const pause = document.getElementById("pause");
  const connection = document.getElementById("connection");
  const source = live.dataset.src;
  const every = Math.max(250, Number(live.dataset.refresh) || 1500);
  let paused = false;
  let busy = false;
  let lastHtml = null;

  function announce() {
    // Only the latest status change is announced, and only when it differs: a whole table
    // read out every second would drown a screen reader.
    const latest = live.querySelector("[data-announce]");
    const text = latest ? latest.textContent.trim() : "";
    if (announcer && text && announcer.textContent !== text) {
      announcer.textContent = text;
    }
  }

  function showConnection(message) {
    if (!connection) {
      return;
    }
    connection.textContent = message;
    connection.hidden = !message;
  }

  async function refresh() {
    if (paused || busy || document.hidden) {
      return;
    }
    busy = true;
    try {
      const response = await fetch(source, {
        headers: { Accept: "text/html" },
        cache: "no-store",
      });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const html = await response.text();
      showConnection("");
      if (html !== lastHtml) {
        const first = lastHtml === null;
        lastHtml = html;
        live.setAttribute("aria-busy", "true");
        live.innerHTML = html;
        live.removeAttribute("aria-busy");
        if (!first) {
          announce();
        }
      }
    } catch (error) {
      showConnection("Updates interrupted; retrying.");
    } finally {
      busy = false;
    }
  }

  if (pause) {
    pause.hidden = false;
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume updates" : "Pause updates";
      if (!paused) {
        refresh();
      }
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
  window.setInterval(refresh, every);
  refresh();
})();
