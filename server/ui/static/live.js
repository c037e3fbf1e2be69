// AAMI status UI: live updates and small conveniences. No framework, no build step.
//
// A page whose <main> has data-live-url polls that JSON feed every two seconds and
// updates its status cells, counts and events in place. Everything works without this
// script too: the pages are complete as the server renders them.
"use strict";

(function () {
  const POLL_MS = 2000;
  const MAX_BACKOFF_MS = 15000;

  // Tests and curious people can see that updates happen without a reload.
  const live = (window.AAMI_LIVE = { updates: 0, errors: 0, loadedAt: Date.now() });
  let skewMs = 0; // server clock minus ours, so "5s ago" agrees with the server

  // ------------------------------------------------------------------ formatting

  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + "s";
    let minutes = Math.floor(seconds / 60);
    const secs = seconds % 60;
    if (minutes < 60) return minutes >= 10 || !secs ? minutes + "m" : minutes + "m " + secs + "s";
    let hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 24) return minutes ? hours + "h " + minutes + "m" : hours + "h";
    const days = Math.floor(hours / 24);
    hours %= 24;
    return hours ? days + "d " + hours + "h" : days + "d";
  }

  function elapsed(iso) {
    return (Date.now() + skewMs - Date.parse(iso)) / 1000;
  }

  function ago(iso) {
    const delta = elapsed(iso);
    return delta < 1 ? "just now" : span(delta) + " ago";
  }

  function absolute(iso) {
    return iso.replace("T", " ").replace("Z", " UTC");
  }

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function badge(status, label) {
    return el("span", { class: "badge status-" + (status || "pending"), text: label });
  }

  function setBadge(holder, status, label) {
    if (!holder) return;
    const current = holder.querySelector(".badge");
    if (current && current.classList.contains("status-" + status) && current.textContent === label) return;
    holder.replaceChildren(badge(status, label));
  }

  // A <time> saying how long ago (mode "ago") or for how long (mode "for") since iso.
  function setTime(holder, iso, mode) {
    if (!holder) return;
    const since = mode === "for";
    if (!iso) {
      if (!holder.querySelector(".muted")) {
        holder.replaceChildren(el("span", { class: "muted", text: since ? "—" : "never" }));
      }
      return;
    }
    let time = holder.querySelector("time");
    if (!time || time.getAttribute("datetime") !== iso) {
      time = el("time", { datetime: iso, title: (since ? "since " : "") + absolute(iso) });
      time.setAttribute(since ? "data-for" : "data-ago", "");
      holder.replaceChildren(time);
    }
    time.textContent = since ? span(elapsed(iso)) : ago(iso);
  }

  function refreshAges() {
    for (const time of document.querySelectorAll("time[data-ago]")) {
      time.textContent = ago(time.getAttribute("datetime"));
    }
    for (const time of document.querySelectorAll("time[data-for]")) {
      time.textContent = span(elapsed(time.getAttribute("datetime")));
    }
  }

  function lookup(object, path) {
    return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);
  }

  function markChanged(changed) {
    const notice = document.querySelector("[data-changed-notice]");
    if (notice) notice.hidden = !changed;
  }

  // ------------------------------------------------------------------ the overview

  function renderChecks(cell, target, href) {
    const signature = JSON.stringify([target.failing, target.checks]);
    if (cell.dataset.signature === signature) return;
    cell.dataset.signature = signature;
    const parts = [];
    if (target.failing.length) {
      const list = el("ul", { class: "check-list" });
      for (const check of target.failing) {
        list.append(
          el("li", {}, [
            el("a", { class: "check-chip", href: href + "#check-" + check.check_id }, [
              badge(check.status, check.label),
              el("span", { class: "check-chip-name", text: check.check_id }),
            ]),
          ])
        );
      }
      parts.push(list);
    }
    if (!target.checks.total) parts.push(el("span", { class: "muted", text: "No results yet" }));
    else if (!target.failing.length) parts.push(el("span", { class: "all-ok", text: "All " + target.checks.ok + " OK" }));
    else if (target.checks.ok) parts.push(el("span", { class: "muted", text: "+" + target.checks.ok + " OK" }));
    cell.replaceChildren(...parts);
  }

  function updateOverview(data) {
    for (const node of document.querySelectorAll("[data-count]")) {
      const value = lookup(data.counts, node.dataset.count);
      if (value === undefined) continue;
      if (node.textContent !== String(value)) node.textContent = String(value);
      const tile = node.closest(".tile");
      if (tile) tile.classList.toggle("tile-zero", value === 0);
    }
    const rows = new Map();
    for (const row of document.querySelectorAll("tr[data-target-id]")) rows.set(row.dataset.targetId, row);
    let changed = rows.size !== data.targets.length;
    for (const target of data.targets) {
      const row = rows.get(target.id);
      if (!row) {
        changed = true;
        continue;
      }
      row.dataset.status = target.status;
      setBadge(row.querySelector('[data-field="status"]'), target.status, target.label);
      const maintenance = row.querySelector('[data-field="maintenance"]');
      if (maintenance) maintenance.hidden = !target.maintenance;
      setTime(row.querySelector('[data-field="last_seen"]'), target.last_seen);
      const link = row.querySelector(".host-cell a");
      renderChecks(row.querySelector('[data-field="checks"]'), target, link ? link.getAttribute("href") : "");
    }
    markChanged(changed);
  }

  // ------------------------------------------------------------------ one target

  function renderEvents(body, events) {
    const newest = events.length ? String(events[0].id) : "0";
    if (body.dataset.newest === newest) return;
    body.dataset.newest = newest;
    const rows = events.map((event) => {
      const when = el("td", { class: "nowrap", "data-label": "When" });
      setTime(when, event.created_at);
      const what = el("td", { "data-label": "Event" }, [
        event.check_id ? el("span", { class: "mono", text: event.check_id }) : "Host",
        event.kind === "flapping" ? " flapping" : "",
      ]);
      const change =
        event.kind === "flapping"
          ? el("td", { class: "nowrap", "data-label": "Change", text: event.previous + " → " + event.current })
          : el("td", { class: "nowrap", "data-label": "Change" }, [
              badge(event.previous, event.previous_label),
              " → ",
              badge(event.current, event.current_label),
            ]);
      const message = el("td", { class: "event-message", "data-label": "Message", text: event.message });
      return el("tr", {}, [when, what, change, message]);
    });
    if (!rows.length) rows.push(el("tr", { class: "empty-row" }, [el("td", { colspan: "4", text: "No events yet." })]));
    body.replaceChildren(...rows);
  }

  function updateTarget(data) {
    setBadge(document.querySelector('[data-field="target-status"]'), data.target.status, data.target.label);
    const maintenance = document.querySelector('.target-title [data-field="maintenance"]');
    if (maintenance) maintenance.hidden = !data.target.maintenance;
    setTime(document.querySelector('dd[data-field="last_seen"]'), data.target.last_seen);

    const rows = new Map();
    for (const row of document.querySelectorAll("tr[data-check-id]")) rows.set(row.dataset.checkId, row);
    let changed = rows.size !== data.checks.length;
    for (const check of data.checks) {
      const row = rows.get(check.check_id);
      if (!row) {
        changed = true;
        continue;
      }
      row.dataset.status = check.status;
      setBadge(row.querySelector('[data-field="status"]'), check.status, check.label);
      const flapping = row.querySelector('[data-field="flapping"]');
      if (flapping) flapping.hidden = !check.flapping;
      const output = row.querySelector('[data-field="output"]');
      if (check.executed_at) {
        if (output.textContent !== check.output || output.querySelector(".muted")) output.textContent = check.output;
      }
      const perf = row.querySelector('[data-field="perfdata"]');
      const perfText = check.perfdata.join("\n");
      if (perf.dataset.text !== perfText) {
        perf.dataset.text = perfText;
        perf.replaceChildren(...check.perfdata.map((item) => el("li", { text: item })));
      }
      setTime(row.querySelector('[data-field="executed_at"]'), check.executed_at);
      setTime(row.querySelector('[data-field="since"]'), check.since, "for");
    }
    const events = document.querySelector("tbody[data-events]");
    if (events) renderEvents(events, data.events);
    markChanged(changed);
  }

  // ------------------------------------------------------------------ polling

  function indicator(state, text) {
    const node = document.querySelector("[data-live-indicator]");
    if (!node) return;
    node.hidden = false;
    node.dataset.state = state;
    node.querySelector("[data-live-text]").textContent = text;
  }

  function startPolling(url) {
    let delay = POLL_MS;
    indicator("ok", "Live");

    async function poll() {
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { Accept: "application/json" },
        });
        if (response.status === 401) {
          indicator("stopped", "Logged out: reload to log in");
          return; // no point polling without a session
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        const data = await response.json();
        if (data.server_time) skewMs = Date.parse(data.server_time) - Date.now();
        if (data.targets) updateOverview(data);
        else if (data.target) updateTarget(data);
        refreshAges();
        live.updates += 1;
        live.lastUpdate = Date.now();
        indicator("ok", "Live");
        delay = POLL_MS;
      } catch (error) {
        live.errors += 1;
        indicator("error", "Reconnecting…");
        delay = Math.min(delay * 2, MAX_BACKOFF_MS);
      }
      window.setTimeout(poll, delay);
    }
    window.setTimeout(poll, POLL_MS);
  }

  // ------------------------------------------------------------------ conveniences

  function enhanceForms() {
    for (const form of document.querySelectorAll("form[data-autosubmit]")) {
      const button = form.querySelector("[data-autosubmit-button]");
      if (button) button.hidden = true;
      for (const select of form.querySelectorAll("select")) {
        select.addEventListener("change", () => form.submit());
      }
    }
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
    for (const button of document.querySelectorAll("button[data-copy]")) {
      const source = document.querySelector(button.dataset.copy);
      if (!source || !navigator.clipboard) continue;
      button.hidden = false;
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(source.textContent.trim());
          button.textContent = "Copied";
        } catch (error) {
          button.textContent = "Select and copy";
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    enhanceForms();
    const main = document.querySelector("main[data-live-url]");
    if (main) startPolling(main.dataset.liveUrl);
    window.setInterval(refreshAges, 1000);
  });
})();
