// What a training run will take, before it starts and while it runs.

/**
 * @param {{steps?: number|null, epochs?: number, batchSize: number, gradAccum?: number, maxSeqLen: number,
 *          examples: number, tokensPerSecond?: number|null}} p
 * @returns {{steps: number, tokens: number, seconds: number|null}} tokens is an upper bound (every
 *          sequence at max_seq_len); seconds is null without a measured throughput.
 */
export function estimateTraining(p) {
  const perStep = p.batchSize * (p.gradAccum ?? 1);
  const steps = p.steps ? p.steps : Math.max(1, Math.ceil(((p.epochs ?? 1) * Math.max(1, p.examples)) / perStep));
  const tokens = steps * perStep * p.maxSeqLen;
  const seconds = p.tokensPerSecond > 0 ? tokens / p.tokensPerSecond : null;
  return { steps, tokens, seconds };
}

/** Seconds left at the current pace; null before the first step. */
export function eta(stepsDone, stepsTotal, elapsedSeconds) {
  if (!(stepsDone > 0) || !(stepsTotal > 0) || !(elapsedSeconds >= 0)) return null;
  return Math.max(0, (elapsedSeconds / stepsDone) * (stepsTotal - stepsDone));
}
