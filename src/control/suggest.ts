/** "Did you mean …?" for mistyped command, sub-command and option names. */

/** Words longer than this get no suggestion: nobody mistypes a 64-character command, and it bounds the work. */
const MAX_WORD = 64;

/**
 * Edit distance with adjacent transpositions (optimal string alignment), so `stauts` is one edit
 * from `status`. Counts code points.
 */
export function editDistance(a: string, b: string): number {
  const s = Array.from(a);
  const t = Array.from(b);
  const d: number[][] = Array.from({ length: s.length + 1 }, (_, i) =>
    Array.from({ length: t.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= s.length; i++) {
    for (let j = 1; j <= t.length; j++) {
      const cost = s[i - 1] === t[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && s[i - 1] === t[j - 2] && s[i - 2] === t[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[s.length][t.length];
}

/**
 * The candidate closest to `word`, when it is close enough to be what was meant: a unique
 * candidate that starts with the word (`stat` → `status`), else the nearest within 1 edit for
 * short words and 2 for longer ones.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  if (w === "" || Array.from(w).length > MAX_WORD) return undefined;
  const prefixed = candidates.filter((c) => c.startsWith(w));
  if (w.length >= 2 && prefixed.length === 1) return prefixed[0];
  const limit = w.length <= 3 ? 1 : 2;
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = editDistance(w, candidate);
    if (distance <= limit && distance < candidate.length && (!best || distance < best.distance)) best = { candidate, distance };
  }
  return best?.candidate;
}
