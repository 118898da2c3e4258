// Small behaviours htmx leaves to the page; no inline scripts, so a strict CSP can hold.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (event.detail.successful && form.matches && form.matches("form[data-reset-on-success]")) {
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
