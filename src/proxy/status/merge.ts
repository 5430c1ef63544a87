/**
 * The merge of several processes' scrape records for `/status` (`scrapez proxy --workers N`, src/cli/workers/):
 * each worker sends its records (dumpRecords) and one recorder holds them all (mergeRecords).
 */
import { ScrapeRecorder, type RecorderOptions, type ScrapeResult } from "./recorder.js";

/** One worker's scrape records, as the primary collects them for /status. */
export interface RecordDump {
  service: string;
  replica: string | undefined;
  last: ScrapeResult;
  samples: { at: number; ms: number; bytes: number; status: number }[];
}

type Sample = RecordDump["samples"][number];

/**
 * One recorder holding every worker's records: per target, all samples in time order and the latest last scrape.
 * Targets are recorded least recently scraped first, so the recorder's bounds keep the same ones they would have.
 */
export function mergeRecords(dumps: readonly RecordDump[][], opts: Partial<RecorderOptions> = {}): ScrapeRecorder {
  const byKey = new Map<string, { last: ScrapeResult; samples: Sample[] }>();
  for (const dump of dumps) {
    for (const t of dump) {
      const k = `${t.replica ?? ""}\u0000${t.service}`;
      const seen = byKey.get(k);
      if (!seen) byKey.set(k, { last: t.last, samples: [...t.samples] });
      else {
        seen.samples.push(...t.samples);
        if (t.last.at > seen.last.at) seen.last = t.last;
      }
    }
  }
  const merged = new ScrapeRecorder(opts);
  for (const { last, samples } of [...byKey.values()].sort((a, b) => a.last.at - b.last.at)) {
    samples.sort((a, b) => a.at - b.at);
    // The last scrape is the newest sample; it is recorded last, with its texts.
    const i = samples.findLastIndex((s) => s.at === last.at && s.status === last.status);
    if (i >= 0) samples.splice(i, 1);
    for (const s of samples) merged.record({ ...last, at: s.at, durationMs: s.ms, bytes: s.bytes, status: s.status });
    merged.record(last);
  }
  return merged;
}

/** A worker's records within the window (what older samples would not show anyway is not sent). */
export function dumpRecords(recorder: ScrapeRecorder, now = Date.now()): RecordDump[] {
  const from = now - recorder.opts.windowMs;
  return recorder.targets().flatMap(({ service, replica }) => {
    const last = recorder.last(service, replica);
    if (!last) return [];
    return [{ service, replica, last, samples: recorder.samples(service, replica).filter((s) => s.at > from) }];
  });
}
