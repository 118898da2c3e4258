// Small behaviours htmx leaves to the page; no inline scripts, so a strict CSP can hold.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (event.detail.successful && form.matches && form.matches("form[data-reset-on-success]")) {
    form.reset();
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
