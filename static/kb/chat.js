// Asking and answers (issue 15): Enter sends, the states while an answer is on its way, copy
// buttons, and what a screen reader is told. Plain script, no inline code (strict CSP).
(() => {
  "use strict";

  // --- Telling screen readers, once ------------------------------------------------------------
  // One polite live region of our own, made on first use (a body swap removes it, so it is
  // made again). A region filled in the moment it is added is often not read: wait a moment.
  // What arrives while one announcement waits joins it, in order ("Found 3 passages. Writing…").
  let pending = [];
  let timer = null;
  const announce = (text) => {
    text = (text || "").replace(/\s+/g, " ").trim();
    if (!text) return;
    pending.push(text);
    if (timer) return;
    let region = document.getElementById("chat-live");
    const fresh = !region;
    if (fresh) {
      region = document.createElement("div");
      region.id = "chat-live";
      region.className = "visually-hidden";
      region.setAttribute("role", "status");
      region.setAttribute("aria-live", "polite");
      region.setAttribute("aria-atomic", "true");
      document.body.appendChild(region);
    }
    region.textContent = "";
    timer = window.setTimeout(() => {
      timer = null;
      const target = document.getElementById("chat-live") || region;
      target.textContent = pending.join(" ");
      pending = [];
    }, fresh ? 150 : 50);
  };
  window.kbAnnounce = announce;

  // --- Enter sends, Shift+Enter adds a line -------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    const box = event.target;
    if (event.key !== "Enter" || !box.matches || !box.matches("form.ask textarea")) return;
    // Composing with an input method (Japanese, Chinese…): Enter picks the word, it does not send.
    if (event.isComposing || event.keyCode === 229) return;
    if (event.shiftKey || event.altKey) return;
    event.preventDefault();
    const form = box.form;
    if (!form || form.querySelector("button[type=submit]:disabled")) return; // already asking
    form.requestSubmit();
  });

  // An error under the box goes as soon as there is something to send.
  document.addEventListener("input", (event) => {
    const box = event.target;
    if (!box.matches || !box.matches("form.ask textarea") || !box.value.trim()) return;
    const error = box.form && box.form.querySelector("#ask-error");
    if (error) error.textContent = "";
  });

  // --- Searching… (the question's POST), with Stop ---------------------------------------------
  const askForm = (event) => {
    const elt = event.detail && event.detail.elt;
    return elt && elt.matches && elt.matches("form.ask") ? elt : null;
  };
  const askIdle = (form, status) => {
    const stop = form.querySelector("[data-ask-stop]");
    if (stop) stop.hidden = true;
    const line = form.querySelector("[data-ask-status]");
    if (line) line.textContent = status || "";
  };
  document.addEventListener("htmx:beforeRequest", (event) => {
    const form = askForm(event);
    if (!form) return;
    const stop = form.querySelector("[data-ask-stop]");
    if (stop) stop.hidden = false;
    const line = form.querySelector("[data-ask-status]");
    if (line) line.textContent = "Searching…";
    announce("Searching…");
  });
  document.addEventListener("htmx:afterRequest", (event) => {
    const form = askForm(event);
    if (!form) return;
    askIdle(form);
    // A refusal (422) is "successful" to htmx (swapped into #ask-error): only a 2xx is an ask.
    const status = event.detail.xhr ? event.detail.xhr.status : 0;
    if (!event.detail.successful || status < 200 || status > 299) return;
    const error = form.querySelector("#ask-error");
    if (error) error.textContent = "";
    // A follow-up lands at the end of the conversation: bring its question into view.
    if (form.getAttribute("hx-target") === "#messages") {
      const last = document.querySelector("#messages > article.message:last-of-type");
      if (last) last.scrollIntoView({ block: "start" });
    }
  });
  document.addEventListener("click", (event) => {
    const stop = event.target.closest && event.target.closest("[data-ask-stop]");
    if (stop && stop.form) {
      htmx.trigger(stop.form, "htmx:abort");
      askIdle(stop.form, "Stopped.");
      announce("Stopped.");
      const submit = stop.form.querySelector("button[type=submit]");
      if (submit) submit.disabled = false;
      return;
    }
    const stopAnswer = event.target.closest && event.target.closest("[data-stop-answer]");
    if (stopAnswer) {
      const article = stopAnswer.closest("article.message");
      const state = article && article.querySelector("[data-answer-state] .state");
      if (state) state.textContent = "Stopping…";
      announce("Stopping.");
    }
  });

  // --- Found N passages → Writing… with the seconds it has waited --------------------------------
  const tick = () => {
    document.querySelectorAll("[data-answer-state]").forEach((line) => {
      const state = line.querySelector(".state");
      const elapsed = line.querySelector(".elapsed");
      if (!state || !elapsed) return;
      const seconds = Math.floor((Date.now() - Number(line.dataset.since || Date.now())) / 1000);
      elapsed.textContent = state.textContent.trim() ? `${seconds} s` : "";
    });
  };
  window.setInterval(tick, 1000);

  document.addEventListener("htmx:sseMessage", (event) => {
    if (event.detail.type !== "state") return;
    const line = event.target.closest && event.target.closest("[data-answer-state]");
    if (line) {
      line.dataset.since = line.dataset.since || String(Date.now());
      tick();
    }
    announce(event.target.textContent);
  });
  // The final answer replaces the streaming one: read it out once, from the HTML it arrives in.
  document.addEventListener("htmx:sseBeforeMessage", (event) => {
    if (event.detail.type !== "done") return;
    const doc = new DOMParser().parseFromString(event.detail.data, "text/html");
    const parts = ["Answer finished."];
    doc.querySelectorAll(".answer, .extractive .quote, p.error").forEach((el) => parts.push(el.textContent));
    const sources = doc.querySelectorAll("ol.sources li").length;
    if (sources) parts.push(`${sources} passage${sources === 1 ? "" : "s"} listed below.`);
    announce(parts.join(" "));
  });

  // --- Copy buttons -----------------------------------------------------------------------------
  const copyText = async (text) => {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    // Plain http on an intranet has no navigator.clipboard: the older way still works there.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("copy refused");
  };
  document.addEventListener("click", async (event) => {
    const button = event.target.closest && event.target.closest("[data-copy], [data-copy-code]");
    if (!button) return;
    const source = button.hasAttribute("data-copy-code")
      ? button.parentElement.querySelector("pre")
      : document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    try {
      await copyText(source.innerText.trim());
      button.textContent = "Copied";
      announce("Copied");
    } catch (err) {
      button.textContent = "Copy failed";
      announce("Copy failed: select the text and copy it yourself.");
    }
    window.setTimeout(() => { button.textContent = label; }, 2000);
  });

  const setUp = (root) => {
    if (!root.querySelectorAll) return;
    const within = (selector) => [
      ...(root.matches && root.matches(selector) ? [root] : []), ...root.querySelectorAll(selector),
    ];
    within("[data-copy]").forEach((button) => { button.hidden = false; });
    within(".answer:not(.streaming) pre").forEach((pre) => {
      if (pre.parentElement.classList.contains("code-block")) return;
      const wrap = document.createElement("div");
      wrap.className = "code-block";
      pre.replaceWith(wrap);
      wrap.appendChild(pre);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary copy-code";
      button.setAttribute("data-copy-code", "");
      button.textContent = "Copy code";
      wrap.insertBefore(button, pre);
    });
    within("[data-answer-state]").forEach((line) => {
      if (line.dataset.since) return;
      line.dataset.since = String(Date.now());
      const found = line.querySelector(".found");
      if (found && found.textContent.trim()) announce(found.textContent);
    });
    // A renamed conversation: its title is the page's, and focus goes back to it.
    if (root.id === "conversation-head") {
      const title = root.querySelector("h1");
      if (title) {
        document.title = `${title.textContent.trim()} · kb`;
        title.focus();
        announce("Renamed.");
      }
    }
    // The sidebar's search results.
    if (root.id === "conversation-list" && root.dataset.query !== undefined) {
      const n = Number(root.dataset.count || 0);
      announce(`${n} conversation${n === 1 ? "" : "s"} found.`);
    }
    if (root === document.body) {
      // "New conversation" leads here: the question box is where the reader types next.
      if (location.hash === "#ask") focusAsk();
    }
    watchAskHeight();
  };

  const focusAsk = () => {
    const box = document.querySelector("#ask textarea");
    if (box && document.activeElement !== box) box.focus();
  };
  window.addEventListener("hashchange", () => { if (location.hash === "#ask") focusAsk(); });

  // The sticky ask box must never hide the end of the last answer: the page keeps its height
  // as scroll padding (kb.css), so what is scrolled or tabbed to stops above it.
  let observed = null;
  const observer = "ResizeObserver" in window ? new ResizeObserver((entries) => {
    for (const entry of entries) {
      document.documentElement.style.setProperty("--ask-height", `${Math.ceil(entry.target.offsetHeight)}px`);
    }
  }) : null;
  const watchAskHeight = () => {
    const form = document.querySelector("form.ask.card");
    if (!observer || !form || form === observed) return;
    if (observed) observer.unobserve(observed);
    observer.observe(form);
    observed = form;
  };

  // Now, not on DOMContentLoaded: htmx (loaded before this file) sends the page's first
  // htmx:load on that event, before a listener added then would hear it.
  if (window.htmx) htmx.onLoad(setUp);
  else document.addEventListener("DOMContentLoaded", () => setUp(document.body));
})();
