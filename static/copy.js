// Copy buttons for invoices: where this runs and the clipboard API is there, the buttons show
// (they are hidden otherwise) and copy the text of the element their data-copy names.
(function () {
  "use strict";
  if (!window.isSecureContext || !navigator.clipboard) return;
  document.documentElement.classList.add("can-copy");
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    var source = button && document.getElementById(button.dataset.copy);
    if (!source) return;
    navigator.clipboard.writeText(source.value || source.textContent).then(function () {
      button.textContent = button.dataset.copiedLabel;
    }, function () {
      source.focus();
      source.select(); // the clipboard refused: leave the text selected to copy by hand
      button.textContent = button.dataset.failedLabel;
    });
  });
})();
