// Enhancements only: every page reads and every form works without this file.
document.addEventListener("DOMContentLoaded", () => {
  // A metric chosen from the list redraws the chart at once (the Show button does it without JS).
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  // Archiving cannot be undone from here: ask first.
  for (const form of document.querySelectorAll('form[data-action="archive"]')) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm("Archive this version? It can no longer be promoted or rolled back to.")) {
        event.preventDefault();
      }
    });
  }
});
