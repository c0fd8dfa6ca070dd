// Nebula-Edge dashboard: renders /ui/state, kept live by the /ui/events stream (SSE).
"use strict";
(function () {
  var $ = function (sel) { return document.querySelector(sel); };
  var last = null;

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function short(id) { id = String(id || ""); return id.length > 16 ? "\u2026" + id.slice(-10) : id; }
  function ago(ts, now) {
    if (!ts) return "-";
    var s = Math.max(0, Math.round(now - ts));
    if (s < 120) return s + "s ago";
    if (s < 7200) return Math.round(s / 60) + "m ago";
    return Math.round(s / 3600) + "h ago";
  }
  function num(v, unit) { return v == null ? "-" : (Math.round(v * 100) / 100) + (unit || ""); }

  function render(st) {
    last = st;
    var now = st.generated_at;
    $("#me").textContent = "agent " + short(st.agent.id) + " \u00b7 v" + st.agent.version +
      (st.agent.open ? " \u00b7 open (unsigned changes accepted)" : "");
    $("#window").textContent = st.rate_window_s;
    var live = st.agents.filter(function (a) { return a.status !== "lost"; }).length;
    $("#agents-count").textContent = live + " live" +
      (st.agents.length > live ? ", " + (st.agents.length - live) + " lost" : "");
    $("#agents tbody").innerHTML = st.agents.map(function (a) {
      var holds = a.holds.map(function (h) {
        return '<span class="chip">' + esc(h.module) + " v" + esc(h.version) + "</span>";
      }).join("") || '<span class="muted">-</span>';
      var addrs = (a.http_url ? [a.http_url] : []).concat((a.addrs || []).map(function (m) {
        return String(m).replace(/\/p2p\/.*$/, "");  // the id is in the first column
      })).slice(0, 2);
      return '<tr data-agent="' + esc(a.id) + '" data-status="' + esc(a.status) + '">' +
        '<td class="mono" title="' + esc(a.id) + '">' + esc(short(a.id)) +
        (a.self ? ' <span class="muted">(this)</span>' : "") +
        (a.connected === false && a.status !== "lost" ? ' <span class="muted">(via mesh)</span>' : "") +
        "</td>" +
        '<td><span class="pill ' + esc(a.status) + '" title="' + esc((a.problems || []).join("; ")) +
        '">' + esc(a.status) + "</span></td>" +
        '<td class="mono small wide">' + addrs.map(esc).join("<br>") + "</td>" +
        '<td class="wide">' + ago(a.connected_since, now) + "</td>" +
        '<td class="wide">' + ago(a.last_seen, now) + "</td><td>" + holds + "</td></tr>";
    }).join("");
    $("#modules-count").textContent = st.modules.length;
    $("#modules tbody").innerHTML = st.modules.map(function (m) {
      var all = m.held_by >= m.agents;
      var versions = m.versions.map(function (v) {
        return '<span class="chip' + (v.version === m.version ? " current" : "") +
          '" title="' + esc(v.holders.join("\n")) + '">v' + esc(v.version) + ": " +
          esc(v.holders.length) + "</span>";
      }).join("");
      return '<tr data-module="' + esc(m.name) + '" data-version="' + esc(m.version) +
        '" data-held="' + esc(m.held_by) + '" data-agents="' + esc(m.agents) +
        '" data-calls="' + esc(m.calls_total) + '">' +
        "<td><b>" + esc(m.name) + "</b></td>" +
        '<td class="mono" title="' + esc(m.sha256) + '">v' + esc(m.version) + " " +
        esc(m.sha256.slice(0, 8)) + "</td>" +
        '<td><span class="pill held ' + (all ? "all" : "partial") + '">' + esc(m.held_by) + "/" +
        esc(m.agents) + "</span></td>" +
        "<td>" + versions + "</td>" +
        '<td class="num">' + num(m.calls_per_s) + "</td>" +
        '<td class="num wide">' + num(m.p50_ms, " ms") + "</td>" +
        '<td class="num">' + num(m.p99_ms, " ms") + "</td>" +
        '<td class="num">' + num(m.errors_per_s) + "/s \u00b7 " + esc(m.errors_total) + "</td>" +
        (st.agent.token_required ? '<td class="act">' +
          '<button data-action="rollback" data-name="' + esc(m.name) + '">roll back</button>' +
          '<button data-action="delete" data-name="' + esc(m.name) + '">delete</button></td>'
          : "") + "</tr>";
    }).join("") || '<tr><td colspan="8" class="muted">no modules yet: nebctl -wasm FILE -name NAME</td></tr>';
    $("#events").innerHTML = st.events.map(function (e) {
      var what = esc(e.kind);
      if (e.module) what += " " + esc(e.module) + (e.version ? " v" + esc(e.version) : "");
      if (e.kind === "peer_joined" || e.kind === "peer_left") what += " " + esc(short(e.agent));
      else if (e.agent) what += ' <span class="muted">by ' + esc(short(e.agent)) + "</span>";
      if (e.via) what += ' <span class="muted">(via ' + esc(e.via) + ")</span>";
      return '<li data-kind="' + esc(e.kind) + '"><span class="muted small">' +
        esc(new Date(e.at * 1000).toLocaleTimeString()) + "</span> " + what + "</li>";
    }).join("") || '<li class="muted">nothing yet</li>';
    $("#updated").textContent = new Date(now * 1000).toLocaleTimeString();
    var act = !!st.agent.token_required;
    $("#actions").hidden = !act;
    $("#modules th.act").hidden = !act;
    $("#mode").textContent = act ? "Changes need the agent's token." : "Read-only.";
    document.body.dataset.generated = String(now);
  }

  function setLive(state) {
    var el = $("#live");
    el.dataset.state = state;
    el.textContent = state;
    el.className = "pill " + (state === "live" ? "live" : "lost");
  }

  function connect() {
    if (!window.EventSource) { poll(); return; }
    var es = new EventSource("/ui/events");
    es.addEventListener("state", function (ev) { setLive("live"); render(JSON.parse(ev.data)); });
    es.onopen = function () { setLive("live"); };
    es.onerror = function () { setLive("reconnecting"); };  // EventSource retries by itself
  }

  function poll() {  // browsers without EventSource: poll the JSON every 2 s
    fetch("/ui/state").then(function (r) { return r.json(); })
      .then(function (st) { setLive("live"); render(st); })
      .catch(function () { setLive("reconnecting"); })
      .then(function () { setTimeout(poll, 2000); });
  }

  // Changes, only offered when the agent has a token: the API checks it, as for nebctl.
  function say(text, good) {
    var el = $("#action-msg");
    el.textContent = text;
    el.className = "small " + (good ? "good" : "bad");
  }
  function token() {
    var t = $("#token").value;
    sessionStorage.setItem("nebula-edge-token", t);
    return t;
  }
  function change(method, path, body, type) {
    var headers = {"Authorization": "Bearer " + token()};
    if (type) headers["Content-Type"] = type;
    return fetch(path, {method: method, headers: headers, body: body})
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error(j.error ? j.error.code + ": " + j.error.message : r.status);
          return j;
        });
      });
  }
  $("#token").value = sessionStorage.getItem("nebula-edge-token") || "";
  $("#deploy-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = $("#deploy-name").value.trim();
    var file = $("#deploy-file").files[0];
    if (!name || !file) { say("give a module name and a .wasm file", false); return; }
    file.arrayBuffer().then(function (buf) {
      return change("PUT", "/modules/" + encodeURIComponent(name), buf, "application/wasm");
    }).then(function (j) {
      say("deployed " + j.module.name + " v" + j.module.version, true);
    }).catch(function (e) { say("deploy refused: " + e.message, false); });
  });
  $("#modules").addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b) return;
    var name = b.dataset.name, action = b.dataset.action;
    if (action === "delete" && !window.confirm("Delete " + name + " on every agent?")) return;
    var path = "/modules/" + encodeURIComponent(name) + (action === "rollback" ? "/rollback" : "");
    change(action === "rollback" ? "POST" : "DELETE", path).then(function (j) {
      say(action === "rollback" ? "rolled " + name + " back: now v" + j.module.version
        : "deleted " + name, true);
    }).catch(function (e) { say(action + " refused: " + e.message, false); });
  });

  connect();
})();
