/**
 * `/status` as HTML: rendered on the server from the status document (./json.ts), readable without JavaScript
 * (the filter is a plain GET form), with a small inline script that refreshes it live (it fetches the page again
 * and swaps the header and the table) and filters as you type. No external assets: CSS, script and the SVG
 * sparklines are inline. Every service name, attribute, error text and identity comes from peers, so every value
 * goes through `esc()`; the Content-Security-Policy (see service.ts) allows only this page's own script.
 */
import { formatAge, formatBytes, formatMs } from "../../common/format.js";
import type { StatusDocument, TargetRow } from "./json.js";
import { STATES, type TargetState } from "./recorder.js";

/** How often the page refreshes itself (ms). */
export const REFRESH_MS = 5_000;

const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** HTML-escapes text for element content and double- or single-quoted attribute values. */
export function esc(v: unknown): string {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

const STATE_LABEL: Record<TargetState, string> = { ok: "ok", failing: "failing", never: "never scraped" };

const ageOf = (iso: string | null, now: number) =>
  iso === null ? null : Math.max(0, Math.round((now - Date.parse(iso)) / 1000));

/** A time element the script keeps current ("12 s ago"); its title is the absolute time. */
function timeAgo(iso: string | null, now: number): string {
  if (iso === null) return '<span class="dim">never</span>';
  return `<time class="ago" datetime="${esc(iso)}" title="${esc(iso)}">${esc(formatAge(ageOf(iso, now)))}</time>`;
}

/** The window's slowest scrape per bucket as a polyline (gaps where there were none), failed buckets in red. */
export function sparkline(spark: TargetRow["spark"], width = 120, height = 22): string {
  const n = spark.ms.length;
  if (!spark.ms.some((v) => v !== null)) return '<span class="dim">no scrapes</span>';
  const max = Math.max(1, ...spark.ms.map((v) => v ?? 0));
  const x = (i: number) => ((i + 0.5) * width) / n;
  const y = (v: number) => height - 2 - (v / max) * (height - 5);
  const parts: string[] = [];
  let run: string[] = [];
  const flush = () => {
    if (run.length === 1) run.push(run[0]!); // a lone point still draws (as a dot with round caps)
    if (run.length) parts.push(`<polyline points="${run.join(" ")}"/>`);
    run = [];
  };
  spark.ms.forEach((v, i) => {
    if (v === null) return flush();
    run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
  });
  flush();
  const fails = spark.failed
    .map((f, i) => (f ? `<rect x="${(x(i) - 1.5).toFixed(1)}" y="${height - 3}" width="3" height="3"/>` : ""))
    .join("");
  return (
    `<svg class="spark" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" ` +
    `aria-label="slowest scrape per interval, max ${esc(formatMs(max))}"><title>slowest scrape per interval ` +
    `(max ${esc(formatMs(max))})</title><line class="axis" x1="0" x2="${width}" y1="${height - 1.5}" y2="${height - 1.5}"/><g class="line">${parts.join("")}</g><g class="fail">${fails}</g></svg>`
  );
}

function row(r: TargetRow, now: number): string {
  const by = r.scrapedBy;
  const byTitle = by ? [by.address, by.userAgent].filter(Boolean).join(" · ") : "";
  return (
    `<tr class="target ${esc(r.state)}" data-state="${esc(r.state)}" ` +
    `data-name="${esc(`${r.service} ${r.replica ?? ""} ${r.host}`.toLowerCase())}">` +
    `<td class="state"><span class="badge ${esc(r.state)}">${esc(STATE_LABEL[r.state])}</span></td>` +
    `<td class="service">${esc(r.service)}${r.discovered ? "" : ' <span class="dim" title="not offered on /sd (discovery filters)">(not on /sd)</span>'}</td>` +
    `<td class="replica">${r.replica === null ? '<span class="dim">–</span>' : esc(r.replica)}</td>` +
    `<td class="attrs">${r.attributes.map((a) => `<span class="attr">#${esc(a)}</span>`).join(" ")}</td>` +
    `<td class="last">${timeAgo(r.lastScrape, now)}</td>` +
    `<td class="status num">${r.lastStatus === null ? "" : esc(r.lastStatus)}</td>` +
    `<td class="error">${r.lastError === null ? "" : esc(r.lastError)}</td>` +
    `<td class="p50 num">${esc(formatMs(r.window.p50Ms))}</td>` +
    `<td class="p99 num">${esc(formatMs(r.window.p99Ms))}</td>` +
    `<td class="bytes num" title="${esc(`${r.window.bytes} bytes in ${r.window.scrapes} scrapes`)}">${esc(formatBytes(r.window.avgBytes))}</td>` +
    `<td class="spark-cell">${sparkline(r.spark)}</td>` +
    `<td class="by" title="${esc(byTitle)}">${by ? esc(by.principal) : ""}</td>` +
    `</tr>`
  );
}

function header(doc: StatusDocument, now: number): string {
  const sl = doc.proxy.serviceList;
  const ids = doc.proxy.identities
    .map((i) => {
      const routers = i.routers.length
        ? i.routers
            .map(
              (r) =>
                `<li><span class="badge ${r.state === "open" ? "ok" : "never"}">${esc(r.state)}</span> ` +
                `<b>${esc(r.routerId || "?")}</b> <span class="dim">${esc(r.url)}</span> ` +
                `${r.latencyMs === null ? "" : esc(formatMs(r.latencyMs))}</li>`,
            )
            .join("")
        : '<li class="dim">no router connected yet (channels open on the first scrape)</li>';
      return (
        `<div class="identity"><div><b>${esc(i.name)}</b> <span class="dim">controller</span> ` +
        `${esc(i.controller ?? "–")}</div><ul class="routers">${routers}</ul></div>`
      );
    })
    .join("");
  const list = sl.loaded
    ? `service list refreshed ${timeAgo(sl.refreshedAt, now)}${sl.error ? ` <span class="bad">(last refresh failed: ${esc(sl.error)})</span>` : ""}`
    : `<span class="bad">${esc(sl.error ?? "the service list is not loaded yet")}</span>`;
  const s = doc.summary;
  return (
    `<section id="proxy">${ids}<div class="catalog">${list}</div></section>` +
    `<p id="summary"><b>${esc(s.targets)}</b> targets: <span class="badge failing">${esc(s.failing)} failing</span> ` +
    `<span class="badge ok">${esc(s.ok)} ok</span> <span class="badge never">${esc(s.never)} never scraped</span>` +
    `${s.shown < s.targets ? ` <span class="dim">showing ${esc(s.shown)} of ${esc(s.matched)} matching</span>` : ""}</p>`
  );
}

const CSS = `
:root{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f6f7f9}
body{margin:0;padding:16px 20px}
h1{font-size:20px;margin:0 0 8px}h1 .dim{font-size:13px;font-weight:normal}
.dim{color:#6b7280}.bad{color:#b42318}
#proxy{display:flex;flex-wrap:wrap;gap:8px 24px;background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:8px 12px}
#proxy .catalog{flex-basis:100%;color:#374151}
.identity ul{margin:2px 0 0;padding-left:18px}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;font-weight:600;white-space:nowrap}
.badge.ok{background:#dcfae6;color:#067647}.badge.failing{background:#fee4e2;color:#b42318}
.badge.never{background:#eaecf0;color:#475467}
form{margin:10px 0;display:flex;gap:8px;align-items:center}
input,select,button{font:inherit;padding:3px 6px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e3e6eb}
th,td{padding:4px 8px;border-bottom:1px solid #eef0f3;text-align:left;vertical-align:middle}
th{background:#f0f2f5;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#475467}
tr.failing td{background:#fff8f7}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.error{color:#b42318;max-width:34em;word-break:break-word;font-family:ui-monospace,monospace;font-size:12px}
.attr{color:#475467;font-size:12px}
svg.spark .line polyline{fill:none;stroke:#2e90fa;stroke-width:1.5;stroke-linecap:round;stroke-linejoin:round}
svg.spark .fail rect{fill:#d92d20}
svg.spark .axis{stroke:#e3e6eb;stroke-width:1}
footer{margin-top:10px;font-size:12px}
`;

/** The live refresh and filter script (a nonce'd inline script; no external file). Uses only DOM APIs. */
const SCRIPT = `
(() => {
  const REFRESH_MS = ${REFRESH_MS};
  const $ = (id) => document.getElementById(id);
  const q = $("q"), st = $("state"), form = $("filters");
  const ago = (s) => s < 60 ? s + " s ago" : s < 3600 ? Math.floor(s / 60) + " min ago" : Math.floor(s / 3600) + " h ago";
  const tick = () => {
    for (const t of document.querySelectorAll("time.ago")) {
      t.textContent = ago(Math.max(0, Math.round((Date.now() - Date.parse(t.dateTime)) / 1000)));
    }
  };
  const params = () => {
    const p = new URLSearchParams();
    if (q.value) p.set("q", q.value);
    if (st.value) p.set("state", st.value);
    return p;
  };
  const filterNow = () => {
    const v = q.value.trim().toLowerCase(), s = st.value;
    for (const tr of document.querySelectorAll("tr.target")) {
      tr.hidden = !!((v && !tr.dataset.name.includes(v)) || (s && tr.dataset.state !== s));
    }
  };
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      // Credentials in the page's URL (user:pass@) are not allowed in fetch(): the browser resends them itself.
      const u = new URL(location.pathname, location.href);
      u.username = ""; u.password = ""; u.search = params().toString();
      const r = await fetch(u.href, { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const id of ["proxy", "summary", "rows", "generated"]) {
        const fresh = doc.getElementById(id), old = $(id);
        if (fresh && old) old.replaceWith(document.importNode(fresh, true));
      }
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
      $("live").textContent = "live: refreshes every " + REFRESH_MS / 1000 + " s";
      filterNow();
      tick();
    } catch (e) {
      $("live").textContent = "refresh failed (" + e.message + "); retrying";
    } finally {
      busy = false;
    }
  };
  let t;
  q.addEventListener("input", () => { filterNow(); clearTimeout(t); t = setTimeout(apply, 300); });
  st.addEventListener("change", () => { filterNow(); apply(); });
  const apply = () => { history.replaceState(null, "", "?" + params().toString()); void refresh(); };
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  setInterval(refresh, REFRESH_MS);
  setInterval(tick, 1000);
  $("live").textContent = "live: refreshes every " + REFRESH_MS / 1000 + " s";
})();
`;

export function renderPage(doc: StatusDocument, opts: { nonce: string; now?: number }): string {
  const now = opts.now ?? Date.parse(doc.generatedAt);
  const stateOpts = ["", ...STATES]
    .map(
      (s) =>
        `<option value="${esc(s)}"${doc.filter.state.length === 1 && doc.filter.state[0] === s ? " selected" : ""}>` +
        `${esc(s ? STATE_LABEL[s as TargetState] : "any state")}</option>`,
    )
    .join("");
  const rows = doc.targets.map((r) => row(r, now)).join("");
  const empty =
    doc.targets.length === 0
      ? `<tr><td colspan="12" class="dim">${doc.summary.targets ? "no target matches the filter" : "no targets discovered (yet)"}</td></tr>`
      : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>scrapez proxy status</title><link rel="icon" href="data:,"><style>${CSS}</style></head>
<body data-refreshes="0">
<h1>scrapez proxy <span class="dim">status · generated <time id="generated" datetime="${esc(doc.generatedAt)}">${esc(doc.generatedAt.replace("T", " ").replace(/\.\d+Z$/, " UTC"))}</time></span></h1>
${header(doc, now)}
<form id="filters" method="get" action="">
<label>name <input id="q" name="q" type="search" value="${esc(doc.filter.q)}" placeholder="service or replica" autocomplete="off"></label>
<label>state <select id="state" name="state">${stateOpts}</select></label>
<button type="submit">filter</button> <a href="?">clear</a>
<span id="live" class="dim">static page (JavaScript off): reload to refresh</span>
</form>
<table><thead><tr><th>state</th><th>service</th><th>replica</th><th>attributes</th><th>last scrape</th><th>status</th>
<th>error</th><th>p50</th><th>p99</th><th>size</th><th>last ${esc(Math.round(doc.window.seconds / 60))} min</th><th>scraped by</th></tr></thead>
<tbody id="rows">${rows}${empty}</tbody></table>
<footer class="dim">p50, p99, size (per scrape) and the sparkline cover the last ${esc(Math.round(doc.window.seconds / 60))} minutes.
Machine-readable: <a href="status.json">status.json</a> (docs/status.md).</footer>
<script nonce="${esc(opts.nonce)}">${SCRIPT}</script>
</body></html>
`;
}
