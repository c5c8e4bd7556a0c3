// Live progress on the task list and on a running task's page; auto-submit for filters.
// Everything works without it; it only saves reloading by hand.
(function () {
  "use strict";
  const POLL_MS = 3000;

  function badgeClass(row) { return row.deleting ? "deleting" : row.phase.toLowerCase(); }

  function updateList(table) {
    fetch(table.dataset.poll, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((rows) => {
        const byKey = new Map(rows.map((r) => [r.key, r]));
        const shown = Array.from(table.querySelectorAll("tbody tr[data-key]"));
        const same = shown.length === rows.length && shown.every((tr) => byKey.has(tr.dataset.key));
        if (!same) { if (!table.contains(document.activeElement)) location.reload(); return; }
        for (const tr of shown) {
          const row = byKey.get(tr.dataset.key);
          const phase = tr.querySelector('[data-field="phase"]');
          phase.textContent = row.deleting ? "Deleting" : row.phase;
          phase.className = "badge " + badgeClass(row);
          tr.querySelector('[data-field="overall"]').textContent = row.overallText;
          const progress = tr.querySelector('[data-field="progress"]');
          if (row.progress.total) {
            const pct = (100 * row.progress.done) / row.progress.total;
            progress.innerHTML = '<div class="meter" role="progressbar"><span></span></div><span class="small"></span>';
            progress.querySelector(".meter span").style.width = pct + "%";
            progress.querySelector(".meter").setAttribute("aria-valuenow", row.progress.done);
            progress.querySelector(".meter").setAttribute("aria-valuemax", row.progress.total);
            progress.querySelector(".small").textContent = row.progress.text;
          }
          const box = tr.querySelector('input[type="checkbox"]');
          if (box) box.disabled = row.phase !== "Completed";
        }
      })
      .catch(() => {})
      .finally(() => setTimeout(() => updateList(table), POLL_MS));
  }

  function watchTask(el) {
    fetch(el.dataset.refresh, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((d) => {
        if (d.row && (d.row.phase !== "Evaluating" || d.row.progress.done !== window.__done)) {
          if (window.__done !== undefined) location.reload();
          window.__done = d.row.progress.done;
        }
      })
      .catch(() => {})
      .finally(() => setTimeout(() => watchTask(el), POLL_MS));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.querySelector("table[data-poll]");
    if (table) setTimeout(() => updateList(table), POLL_MS);
    const running = document.querySelector("[data-refresh]");
    if (running) watchTask(running);
    for (const radio of document.querySelectorAll("[data-autosubmit]")) {
      radio.addEventListener("change", () => radio.form.submit());
    }
    const compare = document.getElementById("compare-form");
    if (compare) {
      compare.addEventListener("submit", (event) => {
        const n = compare.querySelectorAll('input[name="t"]:checked').length;
        if (n < 2 || n > 4) { event.preventDefault(); alert("Select 2 to 4 completed tasks to compare."); }
      });
    }
  });
})();
