// eqflow dashboard: subscribes to /dashboard/api/stream (server-sent events) and redraws the
// page in place from each JSON snapshot; the page itself is never reloaded.
"use strict";
(function () {
  const { h, fmt, clock, chart } = window.eqflowUI;
  const COLORS = { queued: "#9aa5b4", running: "#2f7ed8", complete: "#2ca25f", failed: "#d7301f", canceled: "#c9a227" };
  const EVENT_COLORS = { pool_started: "#2ca25f", pool_stopped: "#6b7482", retrain: "#5b4fc4", budget_reached: "#c9a227",
                         finished: "#1d2430", session_started: "#2f7ed8", decision: "#d7301f" };
  // State for tests and for the curious: how many snapshots were drawn since this page loaded.
  const state = window.eqflowDashboard = { loadedAt: Date.now(), updates: 0, expId: null, last: null, source: null };
  const $ = (id) => document.getElementById(id);

  function selectedFromHash() {
    const m = /^#exp=(.*)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function connect() {
    if (state.source) state.source.close();
    const q = state.expId ? `?exp_id=${encodeURIComponent(state.expId)}` : "";
    const es = new EventSource(`/dashboard/api/stream${q}`);
    state.source = es;
    es.onmessage = (msg) => {
      live(true);
      const data = JSON.parse(msg.data);
      drawExperiments(data.experiments || []);
      if (data.snapshot && data.snapshot.exp_id === state.expId) drawSnapshot(data.snapshot);
      state.updates += 1;
      $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`;
    };
    es.addEventListener("problem", (msg) => { live(false, JSON.parse(msg.data).error.message); });
    es.onerror = () => {
      // A stream ends every ~20 s by design and the browser reconnects at once: only a gap
      // longer than a few seconds shows as offline.
      const seen = state.updates;
      setTimeout(() => { if (state.source === es && state.updates === seen) live(false, "reconnecting"); }, 3000);
      if (es.readyState === EventSource.CLOSED) {
        live(false, "offline");
        // Refused (401 after a logout or a token rotation), or the server is gone: look why.
        fetch("/dashboard/api/experiments", { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) location.assign("/dashboard/login");
          else setTimeout(connect, 2000);
        }, () => setTimeout(connect, 2000));
      }
    };
  }

  function live(ok, why) {
    const el = $("live");
    el.className = ok ? "live" : "live off";
    el.textContent = ok ? "live" : (why || "offline");
  }

  function select(expId) {
    state.expId = expId;
    history.replaceState(null, "", expId ? `#exp=${encodeURIComponent(expId)}` : location.pathname);
    $("pick").hidden = !!expId;
    $("experiment").hidden = !expId;
    $("exp-title").textContent = expId || "";
    for (const b of document.querySelectorAll("#experiments button")) b.classList.toggle("selected", b.dataset.expId === expId);
    connect();
  }

  function drawExperiments(list) {
    const ul = $("experiments");
    $("no-experiments").hidden = list.length > 0;
    const items = list.map((e) => {
      const b = h("button", { type: "button", class: e.exp_id === state.expId ? "selected" : "", title: `created ${new Date(e.created_at * 1000).toISOString()}` });
      b.dataset.expId = e.exp_id;
      b.append(h("span", { class: "name" }, e.exp_id), h("span", { class: `badge ${e.status}` }, e.status));
      b.addEventListener("click", () => select(e.exp_id));
      return h("li", {}, null).appendChild(b).parentNode;
    });
    ul.replaceChildren(...items);
    if (!state.expId && list.length && !selectedFromHash()) select(list[0].exp_id);
  }

  function drawSnapshot(snap) {
    state.last = snap;
    const t = snap.tasks;
    for (const k of ["total", "queued", "running", "complete", "failed", "canceled"]) $(`count-${k}`).textContent = fmt(t[k]);
    $("throughput").textContent = fmt(snap.completions_last_minute);
    const st = $("exp-status");
    st.textContent = snap.status || "no experiment row";
    st.className = `badge ${snap.status || ""}`;
    $("query-ms").textContent = fmt(snap.query_ms);
    drawProgress(snap);
    drawTimeline(snap);
    drawPoolsAndEvents(snap);
    drawFailures(snap);
  }

  function drawProgress(snap) {
    const panel = $("progress-panel");
    panel.hidden = !snap.progress;
    if (!snap.progress) return;
    const p = window.eqflowPanels.choose(snap.progress);
    panel.dataset.panel = p.name;
    $("progress-title").textContent = p.title;
    p.render($("progress-body"), snap.progress, snap.progress_history || []);
  }

  function drawTimeline(snap) {
    const pts = snap.timeline.points;
    const xs = pts.map((p) => p.t + snap.timeline.width_s);
    const order = ["complete", "failed", "canceled", "running", "queued"];
    chart($("status-chart"), xs, order.map((k) => ({ name: k, color: COLORS[k], values: pts.map((p) => p[k]) })),
          { stacked: true, height: 220, label: "tasks by status over time" });
    $("status-legend").replaceChildren(...order.map((k) => {
      const sp = h("span", {}, k); sp.style.setProperty("--swatch", COLORS[k]); return sp;
    }));
    chart($("throughput-chart"), xs, [{ name: "per minute", color: "#2ca25f", values: pts.map((p) => p.per_min) }],
          { bars: true, height: 140, label: "completions per minute" });
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    return seconds < 120 ? `${seconds.toFixed(0)} s` : `${(seconds / 60).toFixed(0)} min`;
  }

  function drawPoolsAndEvents(snap) {
    const rows = snap.pools.map((p) => {
      const active = p.status === "running" || p.status === "starting";
      const stale = active && p.heartbeat_age_s > 60;
      const state = p.stop_requested && active ? `${p.status} (stop: ${p.stop_requested})` : p.status;
      const tr = h("tr", { "data-pool": p.label });
      tr.append(h("td", {}, p.label), h("td", {}, p.host || "–"),
                h("td", {}, `${p.launcher} ${p.job_id || (p.pid ? `pid ${p.pid}` : "")}`),
                h("td", { class: "num" }, p.workers),
                h("td", { class: stale ? "num stale" : "num" }, active ? age(p.heartbeat_age_s) : "–"),
                h("td", { class: "num pool-done" }, fmt(p.done)), h("td", {}, stale ? `${state}, no heartbeat` : state));
      return tr;
    });
    document.querySelector("#pools tbody").replaceChildren(...rows);
    const events = snap.events.map((e) => {
      const li = h("li", {});
      const detail = Object.entries(e.data || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
      li.append(h("span", { class: "when" }, clock(e.at)), h("span", { class: "kind" }, e.kind), document.createTextNode(detail));
      return li;
    }).reverse();
    $("events").replaceChildren(...(events.length ? events : [h("li", { class: "muted" }, "None yet.")]));
    const decisions = snap.decisions.map((d) => {
      const li = h("li", {});
      li.append(h("span", { class: "when" }, clock(d.at)), h("span", { class: "kind" }, `type ${d.task_type}: ${d.action}`),
                document.createTextNode(`${d.reason} (queued ${d.queued}, pools ${d.pools})${d.job_id ? ` [${d.job_id}]` : ""}`));
      return li;
    });
    $("decisions").replaceChildren(...(decisions.length ? decisions : [h("li", { class: "muted" }, "None.")]));
    drawEventStrip(snap);
  }

  // The experiment's pool/retrain/... events and the scaling decisions on one time axis.
  function drawEventStrip(snap) {
    const { s } = window.eqflowUI;
    const marks = snap.events.map((e) => ({ at: e.at, kind: e.kind, text: `${clock(e.at)} ${e.kind} ${JSON.stringify(e.data)}` }))
      .concat(snap.decisions.filter((d) => d.action !== "hold").map((d) => ({ at: d.at, kind: "decision", text: `${clock(d.at)} scaling: ${d.action} (${d.reason})` })));
    const kinds = [...new Set(marks.map((m) => m.kind))].sort((a, b) => Object.keys(EVENT_COLORS).indexOf(a) - Object.keys(EVENT_COLORS).indexOf(b));
    const W = 720, L = 110, R = 10, LANE = 16, H = 34 + LANE * Math.max(kinds.length, 1);
    const start = snap.timeline.points.length ? snap.timeline.points[0].t : Math.min(...marks.map((m) => m.at), snap.at);
    const x0 = Math.min(start, ...marks.map((m) => m.at)), x1 = Math.max(snap.at, x0 + 1);
    const X = (x) => L + (W - L - R) * (x - x0) / (x1 - x0);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    svg.appendChild(s("title", {}, "pool, retrain and scaling events over time"));
    kinds.forEach((k, i) => {  // one lane per kind, named at its left
      const y = 12 + LANE * i;
      const name = s("text", { x: L - 8, y: y + 4, "text-anchor": "end" }, k);
      name.style.fill = EVENT_COLORS[k] || "#888";
      svg.append(name, s("line", { x1: L, y1: y, x2: W - R, y2: y, stroke: "#eef0f4" }));
    });
    for (const m of marks) {
      const c = s("circle", { cx: X(m.at), cy: 12 + LANE * kinds.indexOf(m.kind), r: 5, fill: EVENT_COLORS[m.kind] || "#888",
                              class: `mark ${m.kind}` });
      c.appendChild(s("title", {}, m.text));
      svg.appendChild(c);
    }
    const axis = H - 18;
    svg.appendChild(s("line", { x1: L, y1: axis, x2: W - R, y2: axis, stroke: "#c8ced6" }));
    svg.appendChild(s("text", { x: L, y: H - 4 }, clock(x0)));
    svg.appendChild(s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, clock(x1)));
    $("timeline-chart").replaceChildren(svg);
  }

  function drawFailures(snap) {
    $("no-failures").hidden = snap.failures.length > 0;
    $("failures-count").textContent = snap.tasks.failed ? `(${fmt(snap.tasks.failed)}; newest ${snap.failures.length} shown)` : "";
    const open = new Set([...document.querySelectorAll("#failures details[open]")].map((d) => d.dataset.taskId));
    $("failures").replaceChildren(...snap.failures.map((f) => {
      const d = h("details", { "data-task-id": f.task_id });
      if (open.has(String(f.task_id))) d.open = true;
      const first = (f.error.split("\n")[0] || "").slice(0, 140);
      const sum = h("summary", {});
      sum.append(document.createTextNode(`task ${f.task_id} (type ${f.task_type}, ${f.failures} failed runs${f.pool ? `, ${f.pool}` : ""}): `),
                 h("span", { class: "err" }, first + (f.error.length > first.length ? " …" : "")));
      const more = f.error_chars > f.error.length ? `\n… (${fmt(f.error_chars)} characters in all)` : "";
      d.append(sum, h("pre", {}, f.error + more));
      return h("li", {}).appendChild(d).parentNode;
    }));
  }

  state.reconnect = connect;
  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.open === "1") $("logout").hidden = true;
    const wanted = selectedFromHash();
    if (wanted) select(wanted); else connect();
  });
})();
