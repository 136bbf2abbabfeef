// eqflow dashboard: drawing helpers and the registry of per-workflow progress panels.
// Every value from the server is put in the page with textContent or as an SVG attribute,
// never as HTML.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";

  // An HTML element: attrs set as attributes, text (if any) as textContent.
  function h(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) { if (v !== null && v !== undefined) e.setAttribute(k, String(v)); }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function s(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en-US");
      return Math.abs(v) >= 1000 || Math.abs(v) < 0.001 && v !== 0 ? v.toExponential(3) : v.toFixed(4).replace(/\.?0+$/, "");
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  // An axis label: 1.2k, 3.4M, 0.25.
  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    return fmt(Number.isInteger(v) ? v : +v.toPrecision(4));
  }

  function clock(epoch) {
    const d = new Date(epoch * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }

  // A line/area chart. series: [{name, color, values: [y...], area?: bool}], xs: epoch seconds.
  // opts.stacked: areas stacked in order. opts.bars: draw the first series as bars.
  function chart(container, xs, series, opts) {
    opts = opts || {};
    const W = 720, H = opts.height || 200, L = 56, R = 10, T = 10, B = 22;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    if (opts.label) svg.appendChild(s("title", {}, opts.label));
    const n = xs.length;
    const stacks = series.map(() => new Array(n).fill(0));
    let ymax = 0;
    for (let i = 0; i < n; i++) {
      let acc = 0;
      series.forEach((se, k) => {
        const v = Number(se.values[i]) || 0;
        acc = opts.stacked ? acc + v : v;
        stacks[k][i] = acc;
        ymax = Math.max(ymax, acc);
      });
    }
    if (opts.ymin === undefined) ymax = ymax || 1;
    const ymin = opts.ymin !== undefined ? opts.ymin : 0;
    const yTop = opts.ymin !== undefined ? Math.max(...stacks.flat(), ymin + 1e-9) : ymax;
    const x0 = n ? xs[0] : 0, x1 = n > 1 ? xs[n - 1] : x0 + 1;
    const X = (x) => L + (W - L - R) * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
    const Y = (y) => T + (H - T - B) * (1 - (y - ymin) / ((yTop - ymin) || 1));
    // axes
    svg.appendChild(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#c8ced6" }));
    svg.appendChild(s("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#c8ced6" }));
    svg.appendChild(s("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, short(opts.ymin !== undefined ? yTop : ymax)));
    svg.appendChild(s("text", { x: L - 4, y: H - B, "text-anchor": "end" }, short(ymin)));
    if (n) {
      svg.appendChild(s("text", { x: L, y: H - 6 }, clock(x0)));
      svg.appendChild(s("text", { x: W - R, y: H - 6, "text-anchor": "end" }, clock(x1)));
    }
    if (opts.bars && n) {
      const bw = Math.max(1, (W - L - R) / Math.max(n, 1) - 1);
      series[0].values.forEach((v, i) => {
        const x = n === 1 ? L : L + (W - L - R - bw) * (i / (n - 1));
        const y = Y(Number(v) || 0);
        const r = s("rect", { x, y, width: bw, height: Math.max(0, H - B - y), fill: series[0].color });
        r.appendChild(s("title", {}, `${clock(xs[i])}: ${fmt(Number(v))}`));
        svg.appendChild(r);
      });
    } else if (n) {
      // stacked areas drawn from the top series down, so lower ones stay visible
      for (let k = series.length - 1; k >= 0; k--) {
        const top = stacks[k], se = series[k];
        const line = xs.map((x, i) => `${X(x).toFixed(1)},${Y(top[i]).toFixed(1)}`);
        if (opts.stacked || se.area) {
          const base = opts.stacked && k > 0 ? stacks[k - 1] : new Array(n).fill(ymin);
          const back = xs.map((x, i) => `${X(x).toFixed(1)},${Y(base[i]).toFixed(1)}`).reverse();
          svg.appendChild(s("polygon", { points: line.concat(back).join(" "), fill: se.color, "fill-opacity": 0.75 }));
        } else {
          svg.appendChild(s("polyline", { points: line.join(" "), fill: "none", stroke: se.color, "stroke-width": 2 }));
        }
      }
    }
    container.replaceChildren(svg);
    return svg;
  }

  function kv(pairs) {
    const dl = h("dl", { class: "kv" });
    for (const [k, v] of pairs) { dl.appendChild(h("dt", {}, k)); dl.appendChild(h("dd", { "data-key": k }, fmt(v))); }
    return dl;
  }

  // -- the registry ------------------------------------------------------------------------
  // A panel: {name, title, keys: [...], render(body, latest, history)}. The first registered
  // panel whose keys are all in the latest progress event's data draws it; else the generic one.
  // FunSearch, sweeps, ...: eqflowPanels.register({...}) in a script of their own.
  const panels = [];
  const generic = {
    name: "generic", title: "Progress", keys: [],
    render(body, latest) { body.replaceChildren(kv(Object.entries(latest))); },
  };
  function register(panel) { panels.push(panel); }
  function choose(latest) {
    return panels.find((p) => p.keys.every((k) => Object.prototype.hasOwnProperty.call(latest, k))) || generic;
  }

  // Optimizers (Ackley/GPR and any workflow that reports done, target and best): done/target,
  // the best value so far and its history.
  register({
    name: "optimization", title: "Optimization progress", keys: ["done", "target", "best"],
    render(body, latest, history) {
      const done = Number(latest.done) || 0, target = Number(latest.target) || 0;
      const pct = target ? Math.min(100, (100 * done) / target) : 0;
      const bar = h("div", { class: "progressbar", role: "progressbar", "aria-valuenow": done, "aria-valuemax": target });
      bar.appendChild(h("div", { style: null }));
      bar.firstChild.style.width = `${pct.toFixed(1)}%`;
      const pairs = [["done / target", `${fmt(done)} / ${fmt(target)} (${pct.toFixed(1)}%)`], ["best so far", latest.best]];
      for (const [k, v] of Object.entries(latest)) if (!["done", "target", "best"].includes(k)) pairs.push([k, v]);
      const best = history.filter((e) => e.best !== null && e.best !== undefined);
      const plot = h("div", { class: "chart", id: "best-chart" });
      const parts = [bar, kv(pairs)];
      if (best.length) {
        parts.push(h("h4", {}, "Best value so far"), plot);
        chart(plot, best.map((e) => e.at), [{ name: "best", color: "#5b4fc4", values: best.map((e) => e.best) }],
              { height: 160, ymin: Math.min(...best.map((e) => e.best)), label: "best value so far" });
      }
      body.replaceChildren(...parts);
    },
  });

  // FunSearch (eqflow.funsearch.engine): evaluations, programs, the best score and its per-test
  // values, work in flight, cache hits and resets; the best score and the programs over time.
  register({
    name: "funsearch", title: "FunSearch progress", keys: ["evaluated", "programs", "best", "best_scores"],
    render(body, latest, history) {
      const pairs = [["evaluated", latest.evaluated], ["programs", latest.programs], ["best score", latest.best],
                     ["in flight (samples / evaluations)", `${fmt(latest.samples_in_flight)} / ${fmt(latest.evaluations_in_flight)}`],
                     ["cache hits", latest.cache_hits], ["unparsed", latest.unparsed], ["resets", latest.resets]];
      const parts = [kv(pairs)];
      const perTest = latest.best_scores || {};
      if (Object.keys(perTest).length) {
        const table = h("table", { class: "per-test", id: "funsearch-tests" });
        const head = h("tr");
        head.appendChild(h("th", {}, "test"));
        head.appendChild(h("th", {}, "best program's score"));
        table.appendChild(head);
        for (const [test, value] of Object.entries(perTest)) {
          const row = h("tr");
          row.appendChild(h("td", {}, test));
          row.appendChild(h("td", {}, fmt(value)));
          table.appendChild(row);
        }
        parts.push(h("h4", {}, "Per test"), table);
      }
      const scored = history.filter((e) => e.best !== null && e.best !== undefined);
      if (scored.length) {
        const plot = h("div", { class: "chart", id: "funsearch-best-chart" });
        parts.push(h("h4", {}, "Best score so far"), plot);
        chart(plot, scored.map((e) => e.at), [{ name: "best", color: "#5b4fc4", values: scored.map((e) => e.best) }],
              { height: 150, ymin: Math.min(...scored.map((e) => e.best)), label: "best score so far" });
        const counts = h("div", { class: "chart", id: "funsearch-count-chart" });
        parts.push(h("h4", {}, "Evaluations and programs"), counts);
        chart(counts, scored.map((e) => e.at), [
          { name: "evaluated", color: "#2a9d8f", values: scored.map((e) => e.evaluated) },
          { name: "programs", color: "#e76f51", values: scored.map((e) => e.programs) }],
              { height: 150, label: "evaluations and programs" });
      }
      body.replaceChildren(...parts);
    },
  });

  window.eqflowPanels = { register, choose, generic, list: panels };
  window.eqflowUI = { h, s, fmt, short, clock, chart, kv };
})();
