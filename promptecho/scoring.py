"""Pure functions of the PromptEcho math: token CE from sliced logits, token -> character spans,
per-word aggregation and reduction. Small tensors in, plain numbers out; no model here."""
from __future__ import annotations

import bisect
import math
import re
from typing import List, Optional, Sequence, Tuple

import torch

from .results import WordScore

Span = Tuple[int, int]


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) for logits [..., V] already sliced to the answer window; log-softmax in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1).long()).squeeze(-1)


def yes_no_tensor(logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> torch.Tensor:
    """[P(yes), P(no)] on the logits' device from one next-token logit vector [V]: each the total probability of
    its variants (a tensor, so a batch of rows reaches the host in one copy)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([torch.logsumexp(logp[list(ids)], dim=0) for ids in (yes_ids, no_ids)]).exp()


def answer_token_range(offsets: Sequence[Span], start: int, end: int) -> Tuple[int, int]:
    """Indices [i0, i1) of the tokens covering characters [start, end) of the tokenized text.

    A token that straddles the start (e.g. ' a' where the space belongs to the template) belongs to the
    answer; i1 is the first non-empty token starting at or after `end` (the end-of-turn token, if any).
    """
    n = len(offsets)
    i0 = next((i for i, (s, e) in enumerate(offsets) if e > start and e > s), n)
    i1 = next((i for i in range(i0, n) if offsets[i][0] >= end and offsets[i][1] > offsets[i][0]), n)
    return i0, i1


def token_spans(offsets: Sequence[Span], start: int, end: int) -> List[Span]:
    """Character spans, relative to the answer start, of answer tokens with offsets `offsets`.

    Clipped to the answer; characters no token claims (offsets trimmed of whitespace) are given to the
    next token and trailing ones to the last, so the spans cover the answer without gaps. A character
    split over two tokens (byte-level BPE) lies in both spans.
    """
    length = end - start
    spans: List[Span] = []
    covered = 0
    for s, e in offsets:
        s = min(max(s - start, 0), length)
        e = min(max(e - start, 0), length)
        s = min(s, covered)  # claim the uncovered gap before this token
        e = max(e, s)
        spans.append((s, e))
        covered = max(covered, e)
    if spans and covered < length:
        s, _ = spans[-1]
        spans[-1] = (s, length)
    return spans


_WORD = re.compile(r"\S+")


def word_scores(prompt: str, spans: Sequence[Span], losses: Sequence[float]) -> List[WordScore]:
    """Whitespace-delimited words with the mean loss of the tokens overlapping each (a token that overlaps
    several words counts for each of them). Words no scored token reaches (truncated tail) are left out."""
    words = list(_WORD.finditer(prompt))
    ends = [m.end() for m in words]
    total, count = [0.0] * len(words), [0] * len(words)
    # per token, the words it overlaps (words are sorted and disjoint): linear in tokens, not words x tokens
    for (s, e), loss in zip(spans, losses):
        w = bisect.bisect_right(ends, s)  # first word ending after the token starts
        while w < len(words) and words[w].start() < e:
            total[w] += loss
            count[w] += 1
            w += 1
    return [WordScore(text=m.group(), start=m.start(), end=m.end(), loss=float(t / n), n_tokens=n)
            for m, t, n in zip(words, total, count) if n]


def reduce_losses(losses: Sequence[float], reduction: str) -> float:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not losses:
        return math.nan
    total = math.fsum(losses)
    return total if reduction == "sum" else total / len(losses)


def rerank_order(scores: Sequence[float]) -> List[int]:
    """Indices by descending score; equal scores keep the lower index first (stable). NaN goes last."""
    key = [(-s if s == s else math.inf) for s in scores]
    return sorted(range(len(scores)), key=lambda i: (key[i], i))


def left_or_right_positions(attention_mask: torch.Tensor) -> List[Tuple[int, int]]:
    """[start, end) of the real tokens of each row of a padded batch (works for left and right padding)."""
    rows = []
    for m in attention_mask.bool():
        idx = torch.nonzero(m).flatten()
        rows.append((int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0))
    return rows


def window_index(positions: Sequence[Sequence[int]], fill: Optional[int] = None) -> torch.Tensor:
    """[B, K] int64 positions (rows padded by repeating their last position) for `logits_to_keep`."""
    k = max(1, max(len(p) for p in positions))
    out = torch.zeros(len(positions), k, dtype=torch.long)
    for r, p in enumerate(positions):
        if p:
            out[r, :len(p)] = torch.tensor(list(p), dtype=torch.long)
            out[r, len(p):] = p[-1]
        elif fill is not None:
            out[r, :] = fill
    return out


def display_pieces(prompt: str, spans: Sequence[Span]) -> List[str]:
    """Text of each token for display, without repeats: a character split over several byte-level tokens
    goes to the first of them (the others get ''), so ''.join(pieces) is the scored part of the prompt."""
    pieces, covered = [], None
    for s, e in spans:
        start = s if covered is None else max(s, covered)
        pieces.append(prompt[start:e] if e > start else "")
        covered = e if covered is None else max(covered, e)
    return pieces
