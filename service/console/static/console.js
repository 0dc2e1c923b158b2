// Times are rendered in UTC by the server; show them in the browser's zone, UTC on hover.
"use strict";
function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(at.getTime())) el.textContent = at.toLocaleString();
  }
}
document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:afterSettle", (event) => localTimes(event.target));

// Charts: the page carries the history endpoint's answer (data-history, HTML-escaped JSON, so
// no inline script is needed under the CSP); each chart's points are exactly its buckets.
const COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];
window.consoleCharts = {};
function chartWidth(el) { return Math.max(240, el.clientWidth || el.parentElement.clientWidth || 300); }
function drawCharts(root) {
  if (typeof uPlot === "undefined") return;
  for (const box of root.querySelectorAll("[data-history]")) {
    const history = JSON.parse(box.getAttribute("data-history"));
    const xs = history.buckets.map((b) => Date.parse(b.start) / 1000);
    for (const el of box.querySelectorAll("[data-chart]")) {
      el.textContent = "";
      let series, data;
      if (el.dataset.chart === "battery") {
        series = [{}, { label: "min", stroke: COLOURS[2] }, { label: "average", stroke: COLOURS[0], width: 2 },
                  { label: "max", stroke: COLOURS[1] }];
        data = [xs, ...["battery_min", "battery_avg", "battery_max"].map((k) => history.buckets.map((b) => b[k]))];
      } else if (el.dataset.chart === "seen") {
        series = [{}, { label: "devices seen", stroke: COLOURS[0], width: 2 }];
        data = [xs, history.buckets.map((b) => b.devices_seen)];
      } else {
        const keys = Object.keys(history.buckets[0].status_counts)
          .filter((k) => history.buckets.some((b) => b.status_counts[k] > 0));
        series = [{}, ...keys.map((k, i) => ({ label: k, stroke: COLOURS[i % COLOURS.length] }))];
        data = [xs, ...keys.map((k) => history.buckets.map((b) => b.status_counts[k]))];
      }
      // The x axis spans the range asked for (from, to), not just the buckets that have data.
      const span = [Date.parse(history.from) / 1000, Date.parse(history.to) / 1000];
      const scales = { x: { time: true, range: () => span } };
      const chart = new uPlot({ width: chartWidth(el), height: 200, series, scales }, data, el);
      el.setAttribute("data-points", String(xs.length));
      window.consoleCharts[el.id] = chart;
    }
  }
}
document.addEventListener("DOMContentLoaded", () => drawCharts(document));
window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(window.consoleCharts)) {
    const el = document.getElementById(id);
    if (el) chart.setSize({ width: chartWidth(el), height: 200 });
  }
});

// Live overview: every event of the log (the API's stream, served to the session) refreshes the
// counts once the summary's next snapshot is due; polling (htmx, every few seconds) goes on
// regardless, so the page stays current when the stream is closed or never opens.
function startLive() {
  const box = document.querySelector("[data-live]");
  if (!box || typeof EventSource === "undefined") return;
  const settle = Number(box.dataset.settleSeconds || "5") * 1000 + 500;
  let pending = null;
  const source = new EventSource(box.dataset.live);
  source.onopen = () => { document.body.dataset.live = "open"; };
  source.onerror = () => { document.body.dataset.live = "polling"; };
  source.onmessage = () => {
    window.consoleLiveEvents = (window.consoleLiveEvents || 0) + 1;
    if (pending !== null) return;
    pending = setTimeout(() => {
      pending = null;
      document.body.dispatchEvent(new CustomEvent("telemetry-event"));
    }, settle);
  };
}
document.addEventListener("DOMContentLoaded", startLive);
document.addEventListener("htmx:afterSettle", (event) => drawCharts(event.target));
