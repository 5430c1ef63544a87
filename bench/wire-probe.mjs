/**
 * A preload for the benches (`node --import=bench/wire-probe.mjs`), never part of scrapez itself: it keeps the
 * SDK's wire counters (src/ziti/protocol/wire-stats.ts publishes them on the diagnostics channel
 * `scrapez:ziti:wire-stats` when it loads) and answers GET / on 127.0.0.1:$SCRAPEZ_WIRE_PROBE_PORT with them as
 * JSON, plus the event loop's turns so far (libuv's loop count). The server is unref'd: it keeps nothing alive.
 */
import diagnostics_channel from "node:diagnostics_channel";
import http from "node:http";
import { performance } from "node:perf_hooks";

let stats = {};
diagnostics_channel.subscribe("scrapez:ziti:wire-stats", (s) => (stats = s));

const port = Number(process.env.SCRAPEZ_WIRE_PROBE_PORT);
if (port > 0) {
  const server = http.createServer((_req, res) => {
    const loopTurns = performance.nodeTiming.uvMetricsInfo?.loopCount ?? -1;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ...stats, loopTurns }));
  });
  server.listen(port, "127.0.0.1", () => server.unref());
}
