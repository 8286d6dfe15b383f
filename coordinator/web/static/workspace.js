/* bridgestat workspace: the only script. Submits the catalogue choice when it changes and
   polls a study run's progress until it ends; the pages work without it (buttons, reload). */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("select.autosubmit").forEach(function (select) {
    select.addEventListener("change", function () { if (select.value) select.form.submit(); });
  });
  var table = document.getElementById("progress");
  var state = document.getElementById("run-state");
  if (!table || !state || state.dataset.state !== "running") return;
  var poll = function () {
    fetch(table.dataset.url, {credentials: "same-origin"}).then(function (r) { return r.json(); })
      .then(function (p) {
        p.steps.forEach(function (step) {
          var row = table.querySelector('tr[data-step="' + CSS.escape(step.id) + '"]');
          if (!row) return;
          var word = function (w) { return (p.words && p.words[w]) || w; };
          row.querySelector(".state").textContent = word(step.state);
          row.className = step.state;
          var cells = row.querySelectorAll("td.member");
          p.members.forEach(function (m, i) { if (cells[i]) cells[i].textContent = word(step.members[m] || ""); });
        });
        if (p.state === "running") { setTimeout(poll, 1000); } else { window.location.reload(); }
      }).catch(function () { setTimeout(poll, 3000); });
  };
  setTimeout(poll, 500);
});
