// A job's "Live view reconnecting…" notice while the browser's event stream is down.
// htmx's SSE extension reports the stream's errors and openings; the server also swaps the
// notice in and out itself while its own link to the live frames (Redis) is down.
(function () {
  function notice(event) {
    var job = event.target;
    return job && job.querySelector ? job.querySelector(".live-status") : null;
  }
  document.addEventListener("htmx:sseError", function (event) {
    var status = notice(event);
    if (status) status.hidden = false;
  });
  document.addEventListener("htmx:sseOpen", function (event) {
    var status = notice(event);
    if (status && status.dataset.live !== "0") status.hidden = true;
  });
})();
