// The servergroup dashboard: follows /events (server-sent events over fetch,
// so the bearer token can go in a header when reads need it) and renders each
// snapshot; actions are buttons that ask for confirmation, then call the API.
// The token is asked for once and kept in this tab's sessionStorage only.
"use strict";

const TOKEN_KEY = "servergroup-api-token";
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function when(seconds) {
  if (seconds == null) return "";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function cpuList(cpus) {
  if (cpus == null) return "unknown";
  return cpus.length ? cpus.join(",") : "none";
}

function setConnection(text, kind) {
  const c = $("connection");
  c.textContent = text;
  c.className = kind;
}

function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "bad" : "ok";
  m.hidden = false;
}

// -- rendering ------------------------------------------------------------------------------

function button(kind, name, action, label) {
  return `<button type="button" data-kind="${kind}" data-name="${esc(name)}"` +
    ` data-action="${action}" aria-label="${esc(label)} ${kind} ${esc(name)}">${esc(label)}</button>`;
}

function rows(tbody, items, render, empty, columns) {
  tbody.innerHTML = items.length
    ? items.map(render).join("")
    : `<tr><td colspan="${columns}" class="empty">${esc(empty)}</td></tr>`;
}

function vcpuBar(s) {
  const online = new Set(s.online_cpus);
  let cells = "";
  for (let i = 0; i < s.vcpus; i++) {
    const cls = online.has(i) ? "on" : "off";
    cells += `<span class="cpu ${cls}${i < s.min_vcpus ? " min" : ""}"></span>`;
  }
  const label = `${online.size} of ${s.vcpus} vCPUs online (min ${s.min_vcpus}, max ${s.vcpus})`;
  return `<span class="bar" role="img" aria-label="${label}" title="${label}">${cells}</span>` +
    ` <span class="num">${online.size}/${s.vcpus}</span>`;
}

function serverActions(s) {
  const out = [];
  const st = s.vm_state;
  if (st === "active") out.push(button("server", s.name, "pause", "Pause"));
  if (st === "paused") out.push(button("server", s.name, "unpause", "Unpause"));
  if (st === "active" || st === "paused") out.push(button("server", s.name, "stop", "Stop"));
  if (st === "stopped") out.push(button("server", s.name, "start", "Start"));
  if (st === "active") {
    out.push(button("server", s.name, "scale/down", "Scale down"));
    out.push(button("server", s.name, "scale/up", "Scale up"));
  }
  return out.join(" ");
}

function timeline(status) {
  if (!status || !status.history.length) return `<span class="empty">none yet</span>`;
  const starts = status.history.filter((e) => e.action === "start" && e.result === "ok");
  const items = [];
  let previous = null;
  for (const e of starts) {
    const moved = previous !== null && previous !== e.node;
    items.push(`<li class="${moved ? "moved" : ""}"><time>${esc(when(e.at))}</time> ` +
      `${moved ? `${esc(previous)} → ` : ""}${esc(e.node)} <small>(token ${esc(e.token)})</small></li>`);
    previous = e.node;
  }
  const failed = status.history.filter((e) => e.result !== "ok").slice(-3);
  for (const e of failed) {
    items.push(`<li class="bad"><time>${esc(when(e.at))}</time> ${esc(e.action)} on ` +
      `${esc(e.node)}: ${esc(e.result)}</li>`);
  }
  return `<ol class="timeline">${items.slice(-8).join("")}</ol>`;
}

function owners(entry) {
  const st = entry.status;
  if (!st) return esc(entry.problem || entry.summary.error || "");
  const held = st.instances.filter((i) => i.node);
  if (!held.length) return `<span class="empty">no owner</span>`;
  return held.map((i) => `<span class="owner" data-service="${esc(st.name)}">${esc(i.node)}</span>` +
    ` <small>token ${esc(i.token)}${i.master ? ", master" : ""}${i.address ? ", " + esc(i.address) : ""}</small>`)
    .join("<br>");
}

function serviceActions(entry) {
  const name = entry.summary.name;
  const st = entry.status;
  const out = [button("service", name, "relocate", "Relocate")];
  out.push(st && st.disabled
    ? button("service", name, "enable", "Enable")
    : button("service", name, "disable", "Disable"));
  out.push(button("service", name, "clear", "Clear"));
  return out.join(" ");
}

function render(snap) {
  $("served-by").textContent = snap.host ? `served by host ${snap.host}` : "";
  const problem = $("problem");
  problem.hidden = !snap.error;
  problem.textContent = snap.error || "";
  rows($("hosts").tBodies[0], snap.hosts || [], (h) =>
    `<tr data-host="${esc(h.name)}"><th scope="row">${esc(h.name)}</th>` +
    `<td class="${h.alive ? "ok" : "bad"}">${h.alive ? "alive" : "dead"}</td>` +
    `<td>${esc(h.drivers.join(", "))}</td><td>${esc(cpuList(h.free_cpus))}` +
    `${h.cpus ? ` <small>of ${esc(h.cpus.length)}</small>` : ""}</td>` +
    `<td>${esc(h.servers.join(", "))}</td></tr>`, "No host daemon is running.", 5);
  const groups = snap.groups || [];
  const byName = new Map((snap.servers || []).map((s) => [s.name, s]));
  $("groups").innerHTML = groups.length ? groups.map((g) =>
    `<li><h3>${esc(g.name)} <small>${esc(g.policy)}, evacuate ${esc(g.evacuate)}</small></h3>` +
    (g.members.length ? `<ul>${g.members.map((m) => {
      const s = byName.get(m);
      const state = s ? s.vm_state : "?";
      return `<li><span class="state ${esc(state)}">${esc(state)}</span> ${esc(m)}` +
        `${s ? ` <small>on ${esc(s.host)}</small>` : ""}</li>`;
    }).join("")}</ul>` : `<p class="empty">no members</p>`) + `</li>`).join("")
    : `<li class="empty">No groups.</li>`;
  rows($("servers").tBodies[0], snap.servers || [], (s) =>
    `<tr data-server="${esc(s.name)}"><th scope="row">${esc(s.name)}</th><td>${esc(s.group)}</td>` +
    `<td class="${s.host_alive ? "" : "bad"}">${esc(s.host)}${s.host_alive ? "" : " (dead)"}</td>` +
    `<td><span class="state ${esc(s.vm_state)}" data-state="${esc(s.vm_state)}">${esc(s.vm_state)}</span>` +
    `${s.task_state ? ` <small>${esc(s.task_state)}</small>` : ""}` +
    `${s.error ? ` <small class="bad">${esc(s.error)}</small>` : ""}</td>` +
    `<td>${vcpuBar(s)}</td><td>${serverActions(s)}</td></tr>`, "No servers.", 6);
  rows($("services").tBodies[0], snap.services || [], (e) =>
    `<tr data-service="${esc(e.summary.name)}"><th scope="row">${esc(e.summary.name)}` +
    ` <small>${esc(e.summary.agent || "")}</small></th>` +
    `<td><span class="state ${esc(e.summary.state)}">${esc(e.summary.state)}</span></td>` +
    `<td>${owners(e)}</td><td>${timeline(e.status)}</td><td>${serviceActions(e)}</td></tr>`,
  "No services.", 5);
  rows($("replication").tBodies[0], snap.replication || [], (p) => {
    const nodes = new Map(p.nodes.map((n) => [n.node, n]));
    const active = nodes.get(p.active) || {};
    return `<tr><th scope="row">${esc(p.name)}</th><td>${esc(p.generation)}</td>` +
      `<td>${esc(p.active)} <small>${esc(active.state || "")}</small></td>` +
      `<td>${esc(p.backup || "none")}</td><td>${esc(active.lag ?? "")}</td>` +
      `<td>${active.last_pause_ms != null ? esc(active.last_pause_ms.toFixed(2)) + " ms" : ""}</td></tr>`;
  }, "No replication pairs.", 6);
  rows($("transfers").tBodies[0], snap.transfers || [], transferRow,
    "No image transfers recorded (servergroup image send records them in etcd).", 6);
}

function bytes(n) {
  if (n == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function rate(bytesPerSecond) {
  return bytesPerSecond ? `${(bytesPerSecond * 8 / 1e6).toFixed(1)} Mbit/s` : "";
}

function progressBar(fraction, label) {
  if (fraction == null) return `<span class="num">${esc(label)}</span>`;
  const pct = Math.round(fraction * 100);
  return `<progress max="100" value="${pct}" aria-label="${esc(label)}">${pct}%</progress>` +
    ` <span class="num">${pct}% <small>${esc(label)}</small></span>`;
}

function transferRow(t) {
  const s = t.sender;
  const state = t.stale ? "stale" : t.state;
  const done = s ? `${bytes(s.done_bytes)} of ${bytes(s.size)}` : "";
  const finals = new Map((s ? s.clients : []).map((c) => [c.address.split(":")[0], c]));
  const clients = t.receivers.map((r) => {
    const row = finals.get(r.address);
    const frac = r.size ? r.received_bytes / r.size : (s && s.size ? r.received_bytes / s.size : null);
    const pct = frac == null ? bytes(r.received_bytes) : `${Math.min(100, Math.round(frac * 100))}%`;
    return `<li data-receiver="${esc(r.name)}"><span class="state ${esc(r.state)}">${esc(r.state)}</span> ` +
      `${esc(r.name)} <small>${esc(pct)}, ${esc(rate(r.throughput))}` +
      `${row ? `, loss ${esc((row.loss * 100).toFixed(1))}%` : ""}` +
      `${r.result && r.state !== "finished" ? `: ${esc(r.result)}` : ""}</small></li>`;
  });
  const named = new Set(t.receivers.map((r) => r.address));
  for (const c of s ? s.clients : []) {
    if (named.has(c.address.split(":")[0])) continue;
    clients.push(`<li><span class="state ${esc(c.status)}">${esc(c.status)}</span> ${esc(c.name || c.address)}` +
      `${c.reason ? ` <small>${esc(c.reason)}</small>` : ""}</li>`);
  }
  const expected = s ? ` <small>${t.receivers.length || s.clients.length} of ${s.expected_clients}</small>` : "";
  return `<tr data-transfer="${esc(t.endpoint)}"><th scope="row">${esc(s ? s.host : "?")}` +
    ` <small>${esc(t.endpoint)}${s ? `, since ${when(s.started_at)}` : ""}</small></th>` +
    `<td><span class="state ${esc(state)}" data-state="${esc(state)}">${esc(state)}</span>` +
    `${s && s.result && s.state !== "finished" ? ` <small>${esc(s.result)}</small>` : ""}</td>` +
    `<td>${progressBar(t.progress, done)}</td><td>${esc(s ? rate(s.rate) : "")}</td>` +
    `<td>${esc(s ? s.repairs : "")}</td>` +
    `<td>${expected}<ul class="clients">${clients.join("")}</ul></td></tr>`;
}

// -- the event stream -------------------------------------------------------------------------

function handleBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (event === "snapshot" && data.length) {
    render(JSON.parse(data.join("\n")));
    setConnection(`live, updated ${new Date().toLocaleTimeString([], { hour12: false })}`, "ok");
  }
}

async function follow() {
  for (;;) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (token()) headers.Authorization = `Bearer ${token()}`;
      const answer = await fetch("events", { headers, cache: "no-store" });
      if (answer.status === 401) {
        setConnection("this API needs the token to read: use Set token", "bad");
      } else if (!answer.ok) {
        setConnection(`the API answered ${answer.status}; retrying`, "bad");
      } else {
        setConnection("live", "ok");
        const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            handleBlock(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
        setConnection("disconnected; reconnecting", "pending");
      }
    } catch (err) {
      setConnection("disconnected; reconnecting", "pending");
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// -- actions ----------------------------------------------------------------------------------

function confirmDialog(text, askToken = !token()) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  const field = $("confirm-token");
  field.value = "";
  $("confirm-token-row").hidden = !askToken;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok" && field.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, field.value.trim());
      }
      field.value = "";
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.showModal();
    (askToken ? field : $("confirm-ok")).focus();
  });
}

function outcome(body) {
  if (body.done) return body.done;
  if (body.vm_state) return `now ${body.vm_state}`;
  if (body.online_cpus) return `vCPUs online now ${cpuList(body.online_cpus)}`;
  return "done";
}

async function act(kind, name, action, label) {
  const what = `${label} ${kind} ${name}`;
  if (!(await confirmDialog(`${what}?`))) return;
  if (!token()) { say(`${what}: no token given, nothing done.`, true); return; }
  const path = `${kind === "server" ? "servers" : "services"}/${encodeURIComponent(name)}/${action}`;
  say(`${what}: sent…`, false);
  try {
    const answer = await fetch(path, {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
      body: action === "relocate" ? "{}" : undefined,
    });
    const body = await answer.json().catch(() => ({}));
    if (answer.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    if (answer.ok) say(`${what}: ${outcome(body)}.`, false);
    else say(`${what}: ${typeof body.detail === "string" ? body.detail : answer.status}`, true);
  } catch (err) {
    say(`${what}: the API did not answer.`, true);
  }
}

document.addEventListener("click", (event) => {
  const b = event.target.closest("button[data-action]");
  if (b) act(b.dataset.kind, b.dataset.name, b.dataset.action, b.textContent);
});

$("token-button").addEventListener("click", async () => {
  if (await confirmDialog("Set the API bearer token for this tab.", true)) {
    say(token() ? "Token kept for this tab." : "No token set.", !token());
  }
});

follow();
