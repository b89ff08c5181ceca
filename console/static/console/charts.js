/* Berth console charts: every <canvas data-chart="ID"> is drawn from the JSON in <script id="ID">
   ({"labels": [...], "series": {"model": [values per label]}}) as a stacked bar chart.
   Re-run after htmx swaps new results in. */
(function () {
  "use strict";
  var PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"];

  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    if (!source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    var existing = Chart.getChart(canvas);
    if (existing) existing.destroy();
    var names = Object.keys(data.series);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: names.map(function (name, i) {
          return { label: name, data: data.series[name], backgroundColor: PALETTE[i % PALETTE.length], borderRadius: 2 };
        }),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 10 } },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: "tokens" } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawAll(event.target); });
})();
