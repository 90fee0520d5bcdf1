// A dependency-free renderer for the node's OpenAPI document (nothing is fetched from outside).
(function () {
  "use strict";
  const main = document.getElementById("api");
  const filter = document.getElementById("filter");
  let spec = null;

  const el = (tag, attrs, ...kids) => {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v; else n.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid == null) continue;
      n.appendChild(typeof kid === "string" ? document.createTextNode(kid) : kid);
    }
    return n;
  };

  const resolve = (schema) => {
    let s = schema || {};
    let hops = 0;
    while (s.$ref && hops++ < 20) {
      s = spec.components.schemas[s.$ref.split("/").pop()] || {};
    }
    return s;
  };

  // A readable, example-like sketch of a schema: {"field": "string (3-30)", ...}
  const sketch = (schema, depth) => {
    const s = resolve(schema);
    if (depth > 4) return "...";
    if (s.anyOf) return s.anyOf.map((x) => sketch(x, depth + 1)).join(" | ");
    if (s.enum) return s.enum.map((x) => JSON.stringify(x)).join(" | ");
    if (s.type === "object" || s.properties) {
      const out = {};
      const req = new Set(s.required || []);
      for (const [k, v] of Object.entries(s.properties || {})) {
        out[k + (req.has(k) ? "" : "?")] = sketch(v, depth + 1);
      }
      return out;
    }
    if (s.type === "array") return [sketch(s.items, depth + 1)];
    let t = s.type || "any";
    const bits = [];
    if (s.format) bits.push(s.format);
    if (s.minLength != null || s.maxLength != null) bits.push(`${s.minLength ?? 0}-${s.maxLength ?? "*"} chars`);
    if (s.minimum != null || s.maximum != null) bits.push(`${s.minimum ?? ""}..${s.maximum ?? ""}`);
    if (s.pattern) bits.push(`/${s.pattern}/`);
    return bits.length ? `${t} (${bits.join(", ")})` : t;
  };

  const schemaBlock = (schema) => el("pre", {}, JSON.stringify(sketch(schema, 0), null, 2));

  const operation = (path, method, op) => {
    const secured = (op.security || []).some((s) => Object.keys(s).length);
    const optional = (op.security || []).some((s) => !Object.keys(s).length);
    const body = el("div", { class: "body" });
    if (op.description) body.appendChild(el("p", {}, op.description));
    if (op.parameters && op.parameters.length) {
      body.appendChild(el("h4", {}, "Parameters"));
      body.appendChild(el("table", {},
        el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema")),
        op.parameters.map((p) => el("tr", {},
          el("td", {}, el("code", {}, p.name + (p.required ? "" : "?"))),
          el("td", {}, p.in),
          el("td", {}, el("code", {}, JSON.stringify(sketch(p.schema, 0))))))));
    }
    if (op.requestBody) {
      body.appendChild(el("h4", {}, "Request body (application/json)"));
      body.appendChild(schemaBlock(op.requestBody.content["application/json"].schema));
    }
    body.appendChild(el("h4", {}, "Responses"));
    for (const [status, r] of Object.entries(op.responses || {})) {
      body.appendChild(el("div", {}, el("strong", {}, status + " "), r.description || ""));
      const c = r.content && r.content["application/json"];
      if (c && Number(status) < 400) body.appendChild(schemaBlock(c.schema));
    }
    return el("details", { class: "op", "data-search": `${method} ${path} ${op.summary} ${(op.tags || []).join(" ")}`.toLowerCase() },
      el("summary", {},
        el("span", { class: `m ${method.toUpperCase()}` }, method.toUpperCase()),
        el("span", { class: "path" }, path),
        el("span", { class: "sum" }, op.summary || ""),
        el("span", { class: "lock" }, secured ? (optional ? "token optional" : "token required") : "")),
      body);
  };

  const render = () => {
    main.textContent = "";
    const byTag = new Map();
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const tag = (op.tags && op.tags[0]) || "other";
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(path, method, op));
      }
    }
    if (spec.info && spec.info.description) main.appendChild(el("p", {}, spec.info.description));
    for (const [tag, ops] of byTag) {
      main.appendChild(el("section", { "data-tag": tag }, el("h2", {}, tag), ops));
    }
    applyFilter();
  };

  const applyFilter = () => {
    const q = filter.value.trim().toLowerCase();
    for (const section of main.querySelectorAll("section")) {
      let shown = 0;
      for (const op of section.querySelectorAll("details.op")) {
        const hit = !q || op.dataset.search.includes(q);
        op.style.display = hit ? "" : "none";
        if (hit) shown++;
      }
      section.style.display = shown ? "" : "none";
    }
  };

  filter.addEventListener("input", applyFilter);
  fetch(window.AGORA_SPEC_URL)
    .then((r) => r.json())
    .then((s) => { spec = s; render(); })
    .catch((e) => { main.textContent = "Could not load the specification: " + e; });
})();
