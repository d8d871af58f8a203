/* tongcrm console: the segment condition-tree editor and its live count.
 *
 * Written for tongcrm (Apache-2.0); no library, no build step, nothing fetched but the console's own count.
 * The JSON textarea stays the form's source of truth: the tree edits it, the server only ever reads it, and a
 * browser without JavaScript edits the JSON and counts with the "Count" button instead. Every edit posts the
 * draft to /console/segments/preview (with the session's CSRF token) and shows the count or what is wrong.
 */
(function () {
  "use strict";
  var form = document.getElementById("segment-form");
  var box = document.getElementById("tree-editor");
  var textarea = document.getElementById("definition");
  var configEl = document.getElementById("segment-editor-config");
  if (!form || !box || !textarea || !configEl) return;
  var config = JSON.parse(configEl.textContent);
  var L = config.labels;
  var OPS = config.operators || {};
  var fields = {};
  config.fields.forEach(function (f) { fields[f.field] = f; });
  var csrf = form.querySelector('input[name="csrf_token"]').value;
  var output = document.getElementById("live-count");
  var problems = document.getElementById("draft-problems");
  var warnings = document.getElementById("draft-warnings");
  var LIST_OPS = { "in": 1, "not_in": 1, "has_any": 1, "has_all": 1, "has_none": 1 };
  var DAY_OPS = { "within_days": 1, "not_within_days": 1 };
  var uid = 0;
  var root = null;
  var timer = null;
  var asked = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function nextId(prefix) { uid += 1; return prefix + "-" + uid; }

  /* the document <-> the editor's model: {negate, kind: "group", join, children} | {negate, kind: "leaf", ...} */
  function fromDoc(doc) {
    if (doc && typeof doc === "object" && !Array.isArray(doc)) {
      if ("not" in doc) { var inner = fromDoc(doc.not); inner.negate = !inner.negate; return inner; }
      if (Array.isArray(doc.all) || Array.isArray(doc.any)) {
        var join = Array.isArray(doc.all) ? "all" : "any";
        return { negate: false, kind: "group", join: join, children: doc[join].map(fromDoc) };
      }
      if (typeof doc.field === "string") {
        var params = {};
        Object.keys(doc).forEach(function (k) { if (["field", "op", "value"].indexOf(k) < 0) params[k] = doc[k]; });
        return { negate: false, kind: "leaf", field: doc.field, op: doc.op, value: doc.value, params: params };
      }
    }
    return null;
  }
  function toDoc(node) {
    var out;
    if (node.kind === "group") {
      out = {};
      out[node.join] = node.children.map(toDoc);
    } else {
      out = { field: node.field, op: node.op, value: node.value };
      Object.keys(node.params).forEach(function (k) {
        if (node.params[k] !== "" && node.params[k] !== null && node.params[k] !== undefined) out[k] = node.params[k];
      });
    }
    return node.negate ? { not: out } : out;
  }
  function newLeaf() {
    var f = fields["orders.count"] || config.fields[0];
    return { negate: false, kind: "leaf", field: f.field, op: f.operators[0], value: defaultValue(f, f.operators[0]), params: {} };
  }
  function defaultValue(f, op) {
    if (op === "is_set" || f.type === "bool") return true;
    if (f.unit === "yuan" && !DAY_OPS[op]) return op === "between" ? ["0", "100"] : LIST_OPS[op] ? [] : "100";
    if (op === "between") return f.type === "int" ? [0, 1] : ["", ""];
    if (LIST_OPS[op]) return [];
    if (DAY_OPS[op]) return 30;
    if (f.type === "int") return 1;
    return f.choices && f.choices.length ? f.choices[0] : "";
  }

  /* typed input -> JSON value */
  /* money (f.unit "yuan") stays the text typed: the server reads yuan exactly and names an amount it cannot */
  function typed(f, op, raw) {
    if (f.unit === "yuan" && !DAY_OPS[op]) return raw.trim();
    if (f.type === "int" || DAY_OPS[op]) {
      var n = Number(raw);
      return raw.trim() !== "" && Number.isInteger(n) ? n : raw;
    }
    return raw;
  }

  function valueEditor(node, f) {
    var id = nextId("value");
    var wrap = el("div", { "class": "value" });
    var op = node.op;
    function changed(v) { node.value = v; sync(); }
    if (op === "is_set" || op === "is" || f.type === "bool") {
      var sel = el("select", { id: id });
      [[true, L["seg.ed.yes"]], [false, L["seg.ed.no"]]].forEach(function (pair) {
        var o = el("option", { value: String(pair[0]), text: pair[1] });
        if (node.value === pair[0]) o.selected = true;
        sel.appendChild(o);
      });
      sel.addEventListener("change", function () { changed(sel.value === "true"); });
      wrap.appendChild(el("label", { "for": id, text: L["seg.ed.value"] }));
      wrap.appendChild(sel);
      return wrap;
    }
    if (op === "between") {
      var pair = Array.isArray(node.value) ? node.value.slice(0, 2) : ["", ""];
      [0, 1].forEach(function (i) {
        var pid = nextId("value");
        var input = el("input", { id: pid, type: f.type === "int" && f.unit !== "yuan" ? "number" : "text", value: pair[i] === undefined ? "" : String(pair[i]) });
        if (f.unit === "yuan") { input.setAttribute("inputmode", "decimal"); input.setAttribute("title", L["seg.ed.yuan_hint"]); }
        input.addEventListener("input", function () { pair[i] = typed(f, op, input.value); changed(pair.slice()); });
        wrap.appendChild(el("label", { "for": pid, text: L[i ? "seg.ed.value_high" : "seg.ed.value_low"] }));
        wrap.appendChild(input);
      });
      return wrap;
    }
    if (LIST_OPS[op]) {
      var list = el("input", { id: id, type: "text", value: Array.isArray(node.value) ? node.value.join(", ") : "", "aria-describedby": id + "-hint" });
      list.addEventListener("input", function () {
        changed(list.value.split(/[,，]/).map(function (s) { return s.trim(); }).filter(Boolean).map(function (s) { return typed(f, op, s); }));
      });
      wrap.appendChild(el("label", { "for": id, text: L["seg.ed.value"] }));
      wrap.appendChild(list);
      wrap.appendChild(el("span", { id: id + "-hint", "class": "muted", text: L["seg.ed.list_hint"] }));
      return wrap;
    }
    var input;
    if (f.choices && f.choices.length && (op === "eq" || op === "ne")) {
      input = el("select", { id: id });
      f.choices.forEach(function (c) {
        var o = el("option", { value: c, text: c });
        if (node.value === c) o.selected = true;
        input.appendChild(o);
      });
      input.addEventListener("change", function () { changed(input.value); });
    } else {
      var money = f.unit === "yuan" && !DAY_OPS[op];
      var numeric = (f.type === "int" && !money) || DAY_OPS[op];
      input = el("input", { id: id, type: numeric ? "number" : "text", value: node.value === undefined || node.value === null ? "" : String(node.value) });
      if (money) {
        input.setAttribute("inputmode", "decimal");
        input.setAttribute("placeholder", "299.00");
        input.setAttribute("aria-describedby", id + "-yuan");
      }
      if (f.type === "datetime" && !DAY_OPS[op]) input.setAttribute("placeholder", "2026-11-11T00:00:00+08:00");
      input.addEventListener("input", function () { changed(typed(f, op, input.value)); });
    }
    wrap.appendChild(el("label", { "for": id, text: L["seg.ed.value"] }));
    wrap.appendChild(input);
    if (f.unit === "yuan" && !DAY_OPS[op]) wrap.appendChild(el("span", { id: id + "-yuan", "class": "muted", text: L["seg.ed.yuan_hint"] }));
    return wrap;
  }

  function paramEditors(node, f) {
    var wrap = el("div", { "class": "params" });
    (f.parameters || []).forEach(function (p) {
      var id = nextId("param");
      var numeric = /_days$/.test(p.name);
      var current = node.params[p.name];
      var input = el("input", {
        id: id, type: numeric ? "number" : "text", value: current === undefined || current === null ? "" : String(current),
        title: p.description || p.name
      });
      if (p.required) input.setAttribute("required", "");
      input.addEventListener("input", function () {
        node.params[p.name] = numeric && input.value.trim() !== "" && Number.isInteger(Number(input.value)) ? Number(input.value) : input.value;
        sync();
      });
      wrap.appendChild(el("label", { "for": id, text: p.name + (p.required ? " *" : "") }));
      wrap.appendChild(input);
    });
    return wrap;
  }

  function negateBox(node) {
    var id = nextId("not");
    var box = el("input", { id: id, type: "checkbox" });
    box.checked = !!node.negate;
    box.addEventListener("change", function () { node.negate = box.checked; sync(); });
    return el("span", { "class": "negate" }, [box, el("label", { "for": id, "class": "inline", text: L["seg.ed.negate"] })]);
  }

  function removeButton(parent, node) {
    if (!parent) return null;
    var b = el("button", { type: "button", "class": "secondary small", text: L["seg.ed.remove"] });
    b.addEventListener("click", function () {
      parent.children.splice(parent.children.indexOf(node), 1);
      draw(); sync();
    });
    return b;
  }

  function drawLeaf(node, parent) {
    var f = fields[node.field];
    var li = el("li", { "class": "leaf", "data-field": node.field });
    var fid = nextId("field");
    var fieldSel = el("select", { id: fid });
    var groups = {};
    config.fields.forEach(function (x) {
      var prefix = x.field.split(".")[0];
      if (!groups[prefix]) { groups[prefix] = el("optgroup", { label: prefix }); fieldSel.appendChild(groups[prefix]); }
      var o = el("option", { value: x.field, text: x.field + (x.description ? " — " + x.description : "") });
      if (x.field === node.field) o.selected = true;
      groups[prefix].appendChild(o);
    });
    if (!f) { // a field the catalogue does not offer: keep it as typed, the server names the mistake
      var o = el("option", { value: node.field, text: node.field });
      o.selected = true;
      fieldSel.insertBefore(o, fieldSel.firstChild);
      f = { field: node.field, type: "string", operators: [node.op], parameters: [], choices: [] };
    }
    fieldSel.addEventListener("change", function () {
      var nf = fields[fieldSel.value];
      node.field = nf.field;
      if (nf.operators.indexOf(node.op) < 0) node.op = nf.operators[0];
      node.value = defaultValue(nf, node.op);
      node.params = {};
      draw(); sync();
    });
    var oid = nextId("op");
    var opSel = el("select", { id: oid });
    f.operators.forEach(function (op) {
      var o = el("option", { value: op, text: OPS[op] || op });
      if (op === node.op) o.selected = true;
      opSel.appendChild(o);
    });
    opSel.addEventListener("change", function () { node.op = opSel.value; node.value = defaultValue(f, node.op); draw(); sync(); });
    li.appendChild(el("div", { "class": "row" }, [
      negateBox(node),
      el("div", {}, [el("label", { "for": fid, text: L["seg.ed.field"] }), fieldSel]),
      el("div", {}, [el("label", { "for": oid, text: L["seg.ed.operator"] }), opSel]),
      valueEditor(node, f),
      removeButton(parent, node)
    ]));
    li.appendChild(paramEditors(node, f));
    return li;
  }

  function drawGroup(node, parent) {
    var legendId = nextId("group");
    var fs = el("fieldset", { "class": "group", "aria-labelledby": legendId });
    var jid = nextId("join");
    var join = el("select", { id: jid });
    [["all", L["seg.ed.match_all"]], ["any", L["seg.ed.match_any"]]].forEach(function (pair) {
      var o = el("option", { value: pair[0], text: pair[1] });
      if (pair[0] === node.join) o.selected = true;
      join.appendChild(o);
    });
    join.addEventListener("change", function () { node.join = join.value; sync(); });
    fs.appendChild(el("legend", { id: legendId, text: L["seg.ed.group"] }));
    fs.appendChild(el("div", { "class": "row" }, [
      negateBox(node),
      el("div", {}, [el("label", { "for": jid, text: L["seg.ed.group"] }), join]),
      removeButton(parent, node)
    ]));
    var ul = el("ul", { "class": "children" });
    node.children.forEach(function (child) {
      if (child.kind === "group") ul.appendChild(el("li", {}, [drawGroup(child, node)]));
      else ul.appendChild(drawLeaf(child, node));
    });
    fs.appendChild(ul);
    var addLeaf = el("button", { type: "button", "class": "secondary small", "data-add": "condition", text: L["seg.ed.add_condition"] });
    addLeaf.addEventListener("click", function () { node.children.push(newLeaf()); draw(); sync(); focusLast(); });
    var addGroup = el("button", { type: "button", "class": "secondary small", "data-add": "group", text: L["seg.ed.add_group"] });
    addGroup.addEventListener("click", function () {
      node.children.push({ negate: false, kind: "group", join: "any", children: [newLeaf()] });
      draw(); sync(); focusLast();
    });
    fs.appendChild(el("p", { "class": "actions" }, [addLeaf, addGroup]));
    return fs;
  }

  function focusLast() {
    var selects = box.querySelectorAll("li.leaf select");
    if (selects.length) selects[selects.length - 1].focus();
  }

  function draw() {
    box.textContent = "";
    if (!root) return;
    box.appendChild(root.kind === "group" ? drawGroup(root, null) : el("ul", { "class": "children" }, [drawLeaf(root, null)]));
  }

  function sync() {
    var doc;
    try { doc = JSON.parse(textarea.value); } catch (e) { doc = { version: 1 }; }
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) doc = { version: 1 };
    if (doc.version === undefined) doc.version = 1;
    doc.condition = toDoc(root);
    textarea.value = JSON.stringify(doc, null, 2);
    schedule();
  }

  // The browser's own words for a JSON mistake are English whatever the page's language: a Chinese page says
  // where (the position the message names, when it names one) in its own words instead.
  function jsonError(e) {
    if (!/^zh/.test(document.documentElement.lang)) return L["seg.ed.json_error"] + " " + e.message;
    var at = /position (\d+)/.exec(e.message || "");
    return L["seg.ed.json_error"] + " " + (at ? L["seg.ed.json_at"].replace("{n}", String(Number(at[1]) + 1)) : L["seg.ed.json_check"]);
  }

  function load() {
    var doc;
    try { doc = JSON.parse(textarea.value); } catch (e) { show(null, [{ pointer: "", detail: jsonError(e) }], []); return false; }
    var tree = doc && doc.condition ? fromDoc(doc.condition) : null;
    if (!tree) { show(null, [{ pointer: "/condition", detail: L["seg.ed.invalid"] }], []); return false; }
    if (tree.kind !== "group") tree = { negate: false, kind: "group", join: "all", children: [tree] };
    root = tree;
    draw();
    return true;
  }

  function show(count, errs, warns) {
    output.textContent = count === null ? "" : L["seg.ed.members"].replace("{count}", count.toLocaleString());
    output.setAttribute("data-count", count === null ? "" : String(count));
    problems.textContent = "";
    warnings.textContent = "";
    errs.forEach(function (e) { problems.appendChild(el("li", { "data-pointer": e.pointer, text: (e.pointer || "/") + ": " + e.detail })); });
    warns.forEach(function (w) { warnings.appendChild(el("li", { "data-pointer": w.pointer, text: w.pointer + ": " + w.detail })); });
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(count, 250);
  }

  function count() {
    var definition;
    try { definition = JSON.parse(textarea.value); } catch (e) { show(null, [{ pointer: "", detail: jsonError(e) }], []); return; }
    var mine = ++asked;
    output.textContent = L["seg.ed.counting"];
    output.setAttribute("data-count", "");
    fetch("/console/segments/preview", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: JSON.stringify({ definition: definition })
    }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    }).then(function (answer) {
      if (mine !== asked) return; // an older answer arriving after a newer question
      var b = answer.body || {};
      show(typeof b.count === "number" ? b.count : null, b.errors || [], b.warnings || []);
    }).catch(function () {
      if (mine === asked) show(null, [{ pointer: "", detail: L["seg.ed.failed"] }], []);
    });
  }

  textarea.addEventListener("input", function () { if (load()) schedule(); });
  if (load()) {
    box.hidden = false;
    count();
  }
})();
