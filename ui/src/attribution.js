// How an answer is shown with its attribution: the answer cut into plain and attributed segments, and each
// contributor's share of the fee.

/**
 * Cuts `answer` into segments, each `{text, span}` (`span` null for unattributed text), by finding each
 * span's decoded text in order. Overlapping spans (maximal matches may overlap) extend the previous one.
 */
export function segments(answer, spans) {
  const out = [];
  let cursor = 0;
  let lastStart = 0;
  const sorted = [...(spans ?? [])].filter((s) => s.text).sort((a, b) => a.start - b.start);
  for (const span of sorted) {
    const at = answer.indexOf(span.text, lastStart);
    if (at < 0) continue;
    const end = at + span.text.length;
    if (end <= cursor) continue;
    const from = Math.max(at, cursor);
    if (from > cursor) out.push({ text: answer.slice(cursor, from), span: null });
    out.push({ text: answer.slice(from, end), span });
    cursor = end;
    lastStart = at;
  }
  if (cursor < answer.length) out.push({ text: answer.slice(cursor), span: null });
  return out;
}

/**
 * Each contributor's share of the answer's contributor pool: `{contributor, ppm, wei}` sorted by weight,
 * `wei` = floor(pool * ppm / 1e6) when the pool amount is known (the settlement rounds the same way per
 * payment before summing, so it is what this answer adds to the contributor's reward).
 */
export function shares(weights, poolWei) {
  if (!weights?.contributions) return [];
  const by = new Map();
  for (const c of weights.contributions) {
    const k = c.contributor ?? "unknown";
    by.set(k, (by.get(k) ?? 0) + Number(c.weight));
  }
  return [...by.entries()]
    .map(([contributor, ppm]) => ({
      contributor,
      ppm,
      wei: poolWei == null ? null : (BigInt(poolWei) * BigInt(ppm)) / 1_000_000n,
    }))
    .sort((a, b) => b.ppm - a.ppm);
}

/**
 * The contributor pool's part of a fee under FeeRouter's split (bps): burn, developer and treasury are
 * rounded down and the pool takes the remainder, as the contract does.
 */
export function poolOf(amount, { burnBps, developerBps, treasuryBps }) {
  const a = BigInt(amount);
  const part = (bps) => (a * BigInt(bps)) / 10_000n;
  return a - part(burnBps) - part(developerBps) - part(treasuryBps);
}
