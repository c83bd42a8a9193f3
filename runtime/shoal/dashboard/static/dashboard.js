// Shoal dashboard: renders the live pages (queues, workers) from the JSON API and refreshes
// them every sampling interval. Plain DOM, no framework, nothing loaded from elsewhere.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const page = document.body.dataset.page;
  const writes = document.body.dataset.writes === "1";
  const intervalMs = Math.max(1000, 1000 * parseFloat(document.body.dataset.interval || "5"));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function td(value, cls) { return el("td", cls ? { class: cls } : {}, value); }

  function rate(x) { return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2); }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + "ms";
    if (seconds < 120) return seconds.toFixed(1) + "s";
    if (seconds < 7200) return (seconds / 60).toFixed(0) + "m";
    return (seconds / 3600).toFixed(1) + "h";
  }

  function when(epochS) {
    if (!epochS) return "-";
    const d = new Date(epochS * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // A sparkline: one SVG path per series (values oldest first), scaled to the largest value.
  function sparkline(series, width, height) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const longest = Math.max(2, ...series.map((s) => s.values.length));
    const top = Math.max(1e-9, ...series.flatMap((s) => s.values));
    const x = (i, n) => width - ((n - 1 - i) * width) / (longest - 1);
    const y = (v) => height - 1.5 - (v / top) * (height - 3);
    for (const s of series) {
      const n = s.values.length;
      if (!n) continue;
      const points = s.values.map((v, i) => `${x(i, n).toFixed(1)},${y(v).toFixed(1)}`);
      if (s.fill) {
        const area = document.createElementNS(SVG, "path");
        area.setAttribute("d", `M${x(0, n).toFixed(1)},${height} L${points.join(" L")} L${width},${height} Z`);
        area.setAttribute("class", s.fill);
        svg.append(area);
      }
      const line = document.createElementNS(SVG, "path");
      line.setAttribute("d", "M" + points.join(" L"));
      line.setAttribute("class", s.cls);
      svg.append(line);
    }
    const title = document.createElementNS(SVG, "title");
    title.textContent = series.map((s) => `${s.label}: ${s.values.length ? rate(s.values[s.values.length - 1]) : "-"}`).join(", ");
    svg.append(title);
    return svg;
  }

  function traceCell(row, text) {
    if (row.trace_url) {
      return el("a", { href: row.trace_url, class: "trace mono", target: "_blank", rel: "noopener", title: "Open the trace" }, text);
    }
    return el("span", { class: "mono" }, text);
  }

  // One path segment: queue names and ids may hold any character, "/" included.
  function taskPath(queue, id) {
    return "/task/" + encodeURIComponent(queue) + "/" + encodeURIComponent(id);
  }

  function queueActions(q) {
    const base = "/queues/" + encodeURIComponent(q.queue) + "/confirm/";
    const toggle = q.paused ? "resume" : "pause";
    return el("span", { class: "row-actions" },
      el("a", { class: "button small secondary", href: base + toggle, "data-action": toggle }, q.paused ? "Resume…" : "Pause…"),
      el("a", { class: "button small danger", href: base + "purge", "data-action": "purge" }, "Purge…"));
  }

  function fill(tbody, rows, columns, empty) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty))]));
  }

  function renderQueues(data) {
    const totals = { waiting: 0, in_flight: 0, delayed: 0, dead: 0, completed_per_s: 0, failed_per_s: 0 };
    const rows = data.map((q) => {
      for (const k of Object.keys(totals)) totals[k] += q[k];
      const h = q.history;
      const throughput = sparkline([
        { label: "completed/s", values: h.map((p) => p.completed_per_s), cls: "ok", fill: "area" },
        { label: "failed/s", values: h.map((p) => p.failed_per_s), cls: "bad" },
      ], 114, 30);
      const backlog = sparkline([
        { label: "waiting", values: h.map((p) => p.waiting), cls: "backlog", fill: "backlog-area" },
      ], 84, 30);
      const name = el("td", { class: "queue" }, el("b", {}, q.queue));
      if (q.paused) name.append(" ", el("span", { class: "pill paused", title: "Accepts messages, starts none until resumed" }, "paused"));
      const row = el("tr", { "data-queue": q.queue, "data-state": q.paused ? "paused" : "active" },
        name,
        td(q.waiting, "num"), td(q.in_flight, "num"), td(q.delayed, "num"),
        el("td", { class: "num" }, q.dead ? el("a", { href: "/dlq/" + encodeURIComponent(q.queue), class: "pill bad" }, q.dead) : "0"),
        td(q.waiting ? age(q.oldest_age_s) : "-", "num"),
        td(rate(q.completed_per_s), "num"), td(rate(q.failed_per_s), "num"),
        td(q.rate_limit || "-", "num rate-limit"),
        el("td", {}, throughput), el("td", {}, backlog));
      if (writes) row.append(el("td", {}, queueActions(q)));
      return row;
    });
    fill(document.querySelector("#queues tbody"), rows, writes ? 12 : 11, "No queues yet: enqueue a task and it shows here.");
    const names = document.getElementById("queue-names");
    if (names) names.replaceChildren(...data.map((q) => el("option", { value: q.queue })));
    for (const [k, v] of Object.entries(totals)) {
      const node = document.querySelector(`[data-total="${k}"]`);
      if (node) node.textContent = k.endsWith("_per_s") ? rate(v) : v.toLocaleString();
    }
  }

  function renderWorkers(data) {
    const workers = data.workers.map((w) => {
      const fraction = w.concurrency ? Math.min(1, w.in_flight / w.concurrency) : 0;
      const bar = el("span", { class: "bar" }, el("span", { class: "fill" }));
      bar.firstChild.style.width = (100 * fraction).toFixed(0) + "%";
      return el("tr", { "data-worker": w.id },
        el("td", { class: "mono" }, w.id), td(w.host || "-"), td(w.queues.join(", ")),
        el("td", {}, el("span", { class: "busy" }, bar, `${w.in_flight} / ${w.concurrency}`)),
        td(w.processed.toLocaleString(), "num"), td(w.leases_lost, "num"), td(age(w.up_s), "num"), td(w.version));
    });
    fill(document.querySelector("#workers tbody"), workers, 8, "No live workers.");
    const running = data.running.map((r) => el("tr", { "data-message": r.id },
      td(r.queue), td(r.task || "-"),
      el("td", { class: "nowrap" }, el("a", { href: taskPath(r.queue, r.id), class: "mono task-link", title: "Status, progress, cancel" }, r.id),
        ...(r.trace_url ? [" ", traceCell(r, "trace")] : [])),
      td(r.attempt ?? "-", "num"), el("td", { class: "mono nowrap" }, r.worker || "-"),
      td(when(r.started_at), "nowrap"), td(when(r.enqueued_at), "nowrap"), td(age(r.lease_left_s), "num")));
    fill(document.querySelector("#running tbody"), running, 8, "Nothing running.");
  }

  // The task page: server-rendered, then its fields refreshed from /api/task/QUEUE/ID.
  function setProgress(progress) {
    const bar = document.querySelector("#progress .bar");
    const fraction = progress && progress.fraction !== null && progress.fraction !== undefined ? progress.fraction : null;
    if (bar) {
      bar.hidden = fraction === null;
      bar.firstElementChild.style.width = (100 * (fraction || 0)).toFixed(0) + "%";
    }
  }

  function renderTask(t) {
    const shown = {
      task: t.task || "(task unknown)",
      state: t.state,
      attempt: t.attempt ?? "-",
      worker: t.worker || "-",
      due_at: t.due_at ? when(t.due_at) : "-",
      progress: t.progress ? t.progress.text : "-",
      cancel_requested: t.cancel_requested ? "asked: its worker stops it at its next heartbeat" : "-",
      reason: t.reason || "-",
      error: t.error || "-",
    };
    for (const node of document.querySelectorAll("[data-field]")) {
      const value = shown[node.dataset.field];
      if (value !== undefined) node.textContent = String(value);
    }
    const error = document.querySelector("[data-field=error]");
    if (error) error.classList.toggle("error", Boolean(t.error));
    const pill = document.getElementById("state");
    if (pill) pill.className = "pill state-" + t.state;
    setProgress(t.progress);
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.hidden = !t.cancellable;
  }

  const taskBox = document.getElementById("task");
  const live = {
    queues: ["/api/queues", renderQueues],
    workers: ["/api/workers", renderWorkers],
    task: taskBox ? [taskBox.dataset.api, renderTask] : null,
  };

  async function refresh() {
    const [url, render] = live[page];
    const stamp = document.getElementById("updated");
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await response.text());
      render(await response.json());
      if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.loaded = "1";
    } catch (err) {
      if (stamp) stamp.textContent = "cannot refresh: " + err.message;
    }
  }

  // progress bars on the server-rendered pages (workflow groups, a task)
  for (const bar of document.querySelectorAll(".fill[data-fraction]")) {
    bar.style.width = (100 * parseFloat(bar.dataset.fraction)).toFixed(0) + "%";
  }

  if (live[page]) {
    refresh();
    setInterval(refresh, intervalMs);
  }
})();
