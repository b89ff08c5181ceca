// Staff dashboard charts (Chart.js from npm). Data comes from json_script blocks in the page;
// the traffic blob is re-rendered every 30 s by htmx and the charts are updated in place.
(function () {
  "use strict";
  const charts = {};

  function readJson(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function lineChart(id, labels, datasets, yTitle) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets.forEach((set, i) => { set.data = datasets[i].data; });
      charts[id].update("none");
      return;
    }
    charts[id] = new Chart(canvas, {
      type: "line",
      data: { labels: labels, datasets: datasets.map((set) => Object.assign({ tension: 0.2, pointRadius: 0, spanGaps: false }, set)) },
      options: {
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: { y: { beginAtZero: true, title: { display: true, text: yTitle } } },
      },
    });
  }

  function renderTraffic() {
    const s = readJson("traffic-series");
    if (!s) return;
    const hasTraffic = s.requests_per_s.some((v) => v > 0);
    const box = document.getElementById("traffic-charts");
    if (box) box.hidden = !hasTraffic;
    if (!hasTraffic) return;
    lineChart("chart-rps", s.labels, [{ label: "Requests/s", data: s.requests_per_s, borderColor: "#0b5cad" }], "requests/s");
    lineChart("chart-tps", s.labels, [{ label: "Tokens/s", data: s.tokens_per_s, borderColor: "#1a7f37" }], "tokens/s");
    lineChart("chart-errors", s.labels, [{ label: "Error rate %", data: s.error_rate, borderColor: "#b42318" }], "% of requests");
    lineChart("chart-latency", s.labels, [
      { label: "p50 latency (ms)", data: s.p50_ms, borderColor: "#0b5cad" },
      { label: "p99 latency (ms)", data: s.p99_ms, borderColor: "#8250df", borderDash: [6, 3] },
    ], "ms");
  }

  function renderRevenue() {
    document.querySelectorAll('canvas[data-chart="revenue"]').forEach((canvas) => {
      const d = readJson(canvas.dataset.source);
      if (!d) return;
      new Chart(canvas, {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "Paid (" + d.currency + ")", data: d.paid.map(Number), backgroundColor: "#1a7f37" },
            { label: "Open (" + d.currency + ")", data: d.open.map(Number), backgroundColor: "#d4a72c" },
          ],
        },
        options: {
          maintainAspectRatio: false,
          animation: false,
          scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: d.currency } } },
        },
      });
    });
  }

  function renderEconomics() {
    const d = readJson("economics-chart");
    if (!d) return;
    const base = { maintainAspectRatio: false, animation: false };
    const money = document.querySelector('canvas[data-chart="economics-money"]');
    if (money) {
      new Chart(money, {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "Revenue (" + d.currency + ")", data: d.revenue.map(Number), backgroundColor: "#1a7f37" },
            { label: "Cost (" + d.currency + ")", data: d.cost.map(Number), backgroundColor: "#b42318" },
          ],
        },
        options: Object.assign({ scales: { y: { beginAtZero: true, title: { display: true, text: d.currency } } } }, base),
      });
    }
    const hours = document.querySelector('canvas[data-chart="economics-hours"]');
    if (hours) {
      new Chart(hours, {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "Starting", data: d.starting, backgroundColor: "#d4a72c" },
            { label: "Busy", data: d.busy, backgroundColor: "#0b5cad" },
            { label: "Idle", data: d.idle, backgroundColor: "#9cc3e8" },
            { label: "Draining", data: d.draining, backgroundColor: "#8250df" },
          ],
        },
        options: Object.assign({ scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "GPU-hours" } } } }, base),
      });
    }
  }

  const TIER_COLOURS = { priority: "#8250df", default: "#0b5cad", flex: "#1a7f37", batch: "#d4a72c" };

  function barChart(id, labels, datasets, yTitle, stacked) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets.forEach((set, i) => { set.data = datasets[i].data; });
      charts[id].update("none");
      return;
    }
    charts[id] = new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: {
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: stacked }, y: { stacked: stacked, beginAtZero: true, title: { display: true, text: yTitle } } },
      },
    });
  }

  function renderQueues() {
    const d = readJson("queues-chart");
    if (!d) return;
    const waiting = d.tiers.some((t) => d.depth[t].some((v) => v > 0));
    const box = document.getElementById("queues-charts");
    if (box) box.hidden = !waiting;
    if (!waiting) return;
    barChart("chart-queue-depth", d.labels, d.tiers.map((t) => ({ label: t, data: d.depth[t], backgroundColor: TIER_COLOURS[t] })), "requests waiting", true);
    barChart("chart-queue-wait", d.labels, d.tiers.map((t) => ({ label: t + " oldest wait (s)", data: d.oldest_s[t], backgroundColor: TIER_COLOURS[t] })), "seconds", false);
  }

  document.addEventListener("DOMContentLoaded", () => { renderRevenue(); renderTraffic(); renderEconomics(); renderQueues(); });
  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target && event.detail.target.id === "traffic-data") renderTraffic();
    if (event.detail.target && event.detail.target.id === "queues-data") renderQueues();
  });
})();
