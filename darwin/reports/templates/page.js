// The report's own script (the only one besides Plotly's; the page's CSP names both by hash).
// It draws the figures from the JSON spec, sends a click on a candidate to its section, and
// sorts tables. It reads run data only as JSON and writes it only as text.
(function () {
  "use strict";
  function show(id) {
    var el = document.getElementById(id);
    if (!el) return;
    document.querySelectorAll(".picked").forEach(function (e) { e.classList.remove("picked"); });
    el.classList.add("picked");
    el.querySelectorAll("details.open-on-pick").forEach(function (d) { d.open = true; });
    if (location.hash !== "#" + id) history.replaceState(null, "", "#" + id);
    el.scrollIntoView({block: "start"});
  }
  var spec = document.getElementById("darwin-figures");
  var figures = spec ? JSON.parse(spec.textContent) : {};
  Object.keys(figures).forEach(function (name) {
    var div = document.getElementById("plot-" + name);
    if (!div || typeof Plotly === "undefined") return;
    var fig = figures[name];
    Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
    div.on("plotly_click", function (ev) {
      var p = ev && ev.points && ev.points[0];
      if (p && typeof p.customdata === "string") show(p.customdata);
    });
    if (fig.family) highlightFamily(div, fig.family);
  });

  // The lineage: hovering a node keeps its ancestors and descendants bright, dims the rest.
  function highlightFamily(div, parents) {
    var children = {};
    Object.keys(parents).forEach(function (c) {
      parents[c].forEach(function (p) { (children[p] = children[p] || []).push(c); });
    });
    function walk(start, edges, seen) {
      var todo = [start];
      while (todo.length) {
        var id = todo.pop();
        if (seen[id]) continue;
        seen[id] = true;
        (edges[id] || []).forEach(function (n) { todo.push(n); });
      }
      return seen;
    }
    var nodes = [];
    div.data.forEach(function (t, i) { if (Array.isArray(t.customdata)) nodes.push(i); });
    function paint(kin) {
      var opacity = nodes.map(function (i) {
        return div.data[i].customdata.map(function (id) { return !kin || kin[id] ? 1 : 0.15; });
      });
      Plotly.restyle(div, {"marker.opacity": opacity}, nodes);
    }
    div.on("plotly_hover", function (ev) {
      var p = ev && ev.points && ev.points[0];
      if (!p || typeof p.customdata !== "string") return;
      var kin = walk(p.customdata, parents, {});
      Object.assign(kin, walk(p.customdata, children, {}));
      paint(kin);
    });
    div.on("plotly_unhover", function () { paint(null); });
  }
  window.addEventListener("hashchange", function () { show(location.hash.slice(1)); });
  if (location.hash.length > 1) show(location.hash.slice(1));

  // Sortable tables: click a header; numbers sort by their data-v value, the rest as text.
  function key(cell) {
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    if (v !== null) return v === "" ? Infinity : parseFloat(v);
    return cell.textContent.trim().toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.title = "sort by " + th.textContent;
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var down = th.getAttribute("aria-sort") === "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var c = typeof x === "number" && typeof y === "number"
            ? (x === y ? 0 : (x < y ? -1 : 1))  // an empty cell is Infinity
            : String(x).localeCompare(String(y));
          return down ? -c : c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
