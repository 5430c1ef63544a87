/**
 * Knowing when an HTTP client has gone before its answer was finished, for both scrapez servers.
 *
 * `res` emits 'close' when its client goes away, except for a pipelined request whose response is still queued
 * behind an earlier one: when the client closes the socket then, Node 20 never emits 'close' on that queued
 * response. A forward that waits for 'close' would keep its upstream request, paused by pipe(), and the pooled
 * connection under it, for ever. So the client's socket is watched too; the socket listener is removed when the
 * response ends, so a long-lived keep-alive connection does not collect one listener per request.
 */
import type { RequestLike, ResponseLike } from "./http-like.js";

/** Calls `gone` once if the client leaves before `res` has finished; nothing if the answer completes. */
export function onClientGone(req: RequestLike, res: ResponseLike, gone: () => void): void {
  const socket = req.socket;
  let done = false;
  const fire = () => {
    if (done) return;
    done = true;
    socket.off("close", fire);
    if (!res.writableFinished) gone();
  };
  res.once("close", fire);
  res.once("finish", () => {
    done = true;
    socket.off("close", fire);
  });
  if (socket.destroyed) queueMicrotask(fire);
  else socket.once("close", fire);
}
