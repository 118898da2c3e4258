// Small behaviours htmx leaves to the page; no inline scripts, so a strict CSP can hold.
// Only a 2xx empties the form: htmx counts a 422 refusal as successful too (it swaps the reason
// in), and a refused question must stay in its box.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  const status = event.detail.xhr ? event.detail.xhr.status : 0;
  const accepted = event.detail.successful && status >= 200 && status < 300;
  if (accepted && form.matches && form.matches("form[data-reset-on-success]")) {
    form.reset();
    form.querySelectorAll("[data-dropzone-count]").forEach((el) => { el.textContent = ""; });
  }
});
// A citation opens its passage: bring the highlighted one into view.
document.addEventListener("DOMContentLoaded", () => {
  const hit = document.querySelector(".passage-hit");
  if (hit) {
    hit.scrollIntoView({ block: "center" });
    hit.focus({ preventScroll: true });
  }
});
// Drag and drop onto an upload form: the dropped files become the file input's selection.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-dropzone]").forEach((zone) => {
    const input = zone.querySelector("input[type=file]");
    const count = zone.querySelector("[data-dropzone-count]");
    const show = () => {
      if (count) count.textContent = input.files.length ? `${input.files.length} file(s) chosen` : "";
    };
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("dragging")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      show();
    });
  });
});

// --- Page shell (issue 15): request errors said plainly, skip links, the phone menu -----------

// A request htmx made failed: say so in the page's live region, in words a person can act on.
// Never the URL, the host or a server detail: operators find those in the log.
(() => {
  const MESSAGES = {
    0: "Couldn't reach kb. Check your connection and try again.",
    400: "kb couldn't accept that. Check what you entered and try again.",
    401: "Your session has ended. Reload the page and sign in again.",
    403: "That isn't allowed, or your session has ended. Reload the page and try again.",
    404: "That is no longer there, or you can no longer see it. Reload the page.",
    409: "Someone changed this in the meantime. Reload the page and try again.",
    413: "That is too large for kb to accept.",
    429: "kb is busy. Wait a moment and try again.",
    502: "kb isn't answering right now. Try again in a moment.",
    503: "kb isn't answering right now. Try again in a moment.",
    504: "kb took too long to answer. Try again in a moment.",
  };
  const SERVER = "Something went wrong in kb. Try again; if it keeps happening, tell your kb administrator.";

  function messageFor(status) {
    if (status in MESSAGES) return MESSAGES[status];
    return status >= 500 ? SERVER : MESSAGES[400];
  }

  function region() { return document.getElementById("kb-alerts"); }

  function clear() {
    const box = region();
    if (box) box.replaceChildren();
  }

  // One message at a time: a poll failing every two seconds must not stack them up.
  function show(text) {
    const box = region();
    if (!box) return;
    const toast = document.createElement("div");
    toast.className = "toast";
    const p = document.createElement("p");
    p.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "secondary";
    close.textContent = "Dismiss";
    close.addEventListener("click", clear);
    toast.append(p, close);
    box.replaceChildren(toast);
  }

  // Other scripts may say something the same way: window.kb.alert("…").
  window.kb = Object.assign(window.kb || {}, { alert: show, clearAlert: clear });

  // An element inside [data-own-errors] shows its own errors; leave those alone.
  const owned = (event) => {
    const elt = event.detail && event.detail.elt;
    return Boolean(elt && elt.closest && elt.closest("[data-own-errors]"));
  };
  document.addEventListener("htmx:responseError", (event) => {
    if (owned(event)) return;
    const xhr = event.detail.xhr;
    show(messageFor(xhr ? xhr.status : 0));
  });
  ["htmx:sendError", "htmx:timeout"].forEach((name) => document.addEventListener(name, (event) => {
    if (!owned(event)) show(MESSAGES[0]);
  }));
  document.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful && !owned(event)) clear();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && region() && region().firstChild) clear();
  });
})();

// Skip links: a page with a question box gets a second one to it; following either moves the
// keyboard focus there, not only the scroll position.
document.addEventListener("DOMContentLoaded", () => {
  const links = document.querySelector(".skip-links");
  const ask = document.getElementById("id_question");
  if (links && ask && !links.querySelector('a[href="#id_question"]')) {
    const a = document.createElement("a");
    a.className = "skip-link";
    a.href = "#id_question";
    a.textContent = "Skip to the question box";
    links.append(a);
  }
  if (links) {
    links.addEventListener("click", (event) => {
      const a = event.target.closest("a[href^='#']");
      const target = a && document.getElementById(a.getAttribute("href").slice(1));
      if (!target) return;
      event.preventDefault();
      if (!target.matches("a, button, input, select, textarea, [tabindex]")) target.setAttribute("tabindex", "-1");
      target.focus();
      target.scrollIntoView({ block: "start" });
    });
  }
});

// The phone menu (a <details>): Escape closes it and gives focus back to its button; so does
// a click anywhere else on the page.
document.addEventListener("DOMContentLoaded", () => {
  const menu = document.querySelector(".topbar .menu");
  if (!menu) return;
  menu.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && menu.open) {
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", (event) => {
    if (menu.open && !menu.contains(event.target)) menu.open = false;
  });
});

// A box that scrolls sideways (code, a wide table) must be reachable by keyboard to scroll it.
(() => {
  const SCROLLERS = "pre, .table-wrap, .answer table, table.documents";
  function focusable(root) {
    (root || document).querySelectorAll(SCROLLERS).forEach((el) => {
      if (el.hasAttribute("tabindex") || el.scrollWidth <= el.clientWidth + 1) return;
      if (el.querySelector("a[href], button, input, select, textarea, [tabindex]")) return;
      el.setAttribute("tabindex", "0");
    });
  }
  document.addEventListener("DOMContentLoaded", () => focusable(document));
  document.addEventListener("htmx:afterSettle", (event) => focusable(event.detail.elt));
  window.addEventListener("resize", () => focusable(document));
})();
