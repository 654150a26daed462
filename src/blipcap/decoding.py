"""The one search: greedy, beam and sampling, with the logit rules.

The search knows no backend. A backend session answers two things: "next-token logits for these
rows" (`step`) and "reorder these rows" (`reorder`, for beams); its `ops` says how to compute on
the arrays it returns (torch on its device, or numpy). The semantics follow transformers'
`generate` so that the same checkpoint gives the same tokens: greedy and sampling apply the logit
rules to raw logits, beam search to log-probabilities, with transformers' beam bookkeeping
(length penalty, early stopping, finished-hypothesis merging).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from .options import ARTEFACT_PIECES, PRESETS, CaptionOptions  # noqa: F401  (their old home)

NEG_INF = float("-inf")


@dataclass
class SearchResult:
    tokens: list[int]  # generated ids, without the prompt and without the closing [SEP]
    score: float  # sum of log-probabilities of the generated tokens (after the logit rules)
    finished: bool  # ended with [SEP] rather than by running out of max_new_tokens


@dataclass(frozen=True)
class LogitRules:
    """Options resolved against a vocabulary: everything the search needs to adjust logits."""

    eos_id: int
    pad_id: int
    vocab_size: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    banned_ids: tuple[int, ...] = ()  # always -inf
    banned_sequences: tuple[tuple[int, ...], ...] = field(default=())  # multi-token bad words


class Session(Protocol):
    ops: Any

    def step(self, tokens: Any) -> Any: ...  # (rows,) ids -> (rows, vocab) float32 logits

    def reorder(self, rows: Any) -> None: ...  # (rows,) source row of each row


class _Rules:
    """LogitRules bound to one search: masks built once, applied each step."""

    def __init__(self, rules: LogitRules, ops: Any, prompt_len: int):
        self.r, self.ops, self.prompt_len = rules, ops, prompt_len
        v = np.zeros(rules.vocab_size, dtype=np.float32)
        v[list(rules.banned_ids)] = NEG_INF
        self.ban_mask = ops.asarray(v, "float32") if rules.banned_ids else None
        e = np.zeros(rules.vocab_size, dtype=np.float32)
        e[rules.eos_id] = NEG_INF
        self.eos_mask = ops.asarray(e, "float32")

    def __call__(self, scores: Any, hist: Any, valid: Any, t: int) -> Any:
        """scores (rows, V); hist/valid (rows, L): the row's tokens so far (left-padded prompt + generated)."""
        ops, r = self.ops, self.r
        if r.repetition_penalty != 1.0:
            # transformers penalises every token already in the sequence, prompt and [DEC] included;
            # padding slots point at the last prompt token (never padding), which is penalised anyway.
            idx = ops.where(valid, hist, hist[:, self.prompt_len - 1 : self.prompt_len])
            seen = ops.gather(scores, idx)
            seen = ops.where(seen < 0, seen * r.repetition_penalty, seen / r.repetition_penalty)
            scores = ops.scatter(scores, idx, seen)
        if r.no_repeat_ngram_size or r.banned_sequences:
            scores = self._host_bans(scores, hist, valid)
        if t < r.min_new_tokens:
            scores = scores + self.eos_mask
        if self.ban_mask is not None:
            scores = scores + self.ban_mask
        return scores

    def _host_bans(self, scores: Any, hist: Any, valid: Any) -> Any:
        # n-gram and multi-token bans depend on each row's history; computed on the host from the
        # small id matrix, then applied with one scatter.
        ops, r = self.ops, self.r
        h, ok = ops.to_numpy(hist), ops.to_numpy(valid)
        bans: list[list[int]] = []
        for row, row_ok in zip(h, ok):
            seq = row[row_ok].tolist()
            banned = set()
            n = r.no_repeat_ngram_size
            if n and len(seq) >= n:
                prefix = seq[len(seq) - n + 1 :]
                for i in range(len(seq) - n + 1):
                    if seq[i : i + n - 1] == prefix:
                        banned.add(seq[i + n - 1])
            for bad in r.banned_sequences:
                if len(seq) >= len(bad) - 1 and seq[len(seq) - len(bad) + 1 :] == list(bad[:-1]):
                    banned.add(bad[-1])
            bans.append(sorted(banned))
        width = max((len(b) for b in bans), default=0)
        if width == 0:
            return scores
        index = np.array([b + [b[0] if b else 0] * (width - len(b)) for b in bans], dtype=np.int64)
        is_ban = np.array([[True] * len(b) + [bool(b)] * (width - len(b)) for b in bans])
        index, is_ban = ops.asarray(index), ops.asarray(is_ban, "bool")
        current = ops.gather(scores, index)
        return ops.scatter(scores, index, ops.where(is_ban, NEG_INF, current))


def _warp(scores: Any, opts: CaptionOptions, ops: Any) -> Any:
    """Temperature, top-k, top-p, in transformers' order."""
    if opts.temperature != 1.0:
        scores = scores / opts.temperature
    if opts.top_k and opts.top_k < scores.shape[-1]:
        kth = ops.topk(scores, opts.top_k)[0][:, -1:]
        scores = ops.where(scores < kth, NEG_INF, scores)
    if opts.top_p < 1.0:
        sorted_scores, order = ops.sort_desc(scores)
        probs = ops.softmax(sorted_scores)
        # drop a token once the mass before it already reaches top_p; the top token always stays
        drop_sorted = (ops.cumsum(probs) - probs) >= opts.top_p
        drop = ops.scatter(drop_sorted, order, drop_sorted)
        scores = ops.where(drop, NEG_INF, scores)
    return scores


def rows_per_image(opts: CaptionOptions) -> int:
    """Rows the search runs per image: num_beams, or num_return_sequences when sampling."""
    return opts.num_beams if opts.num_beams > 1 else opts.num_return_sequences


def search(
    session: Session,
    first_logits: Any,
    prompts: Any,  # (rows, P) left-padded prompt ids, [DEC] first; rows_per_image(opts) rows per image
    prompt_valid: Any,  # (rows, P) bool
    opts: CaptionOptions,  # merged: max_new_tokens set
    rules: LogitRules,
) -> list[list[SearchResult]]:
    """Run the search for every image; per image, its results best first."""
    group, max_new = rows_per_image(opts), opts.max_new_tokens
    if opts.num_beams > 1:
        return _beam(session, first_logits, prompts, prompt_valid, group, max_new, opts, rules)
    return _greedy_or_sample(session, first_logits, prompts, prompt_valid, group, max_new, opts, rules)


def _history(ops: Any, prompts: Any, prompt_valid: Any, max_new: int, pad_id: int) -> tuple[Any, Any]:
    rows = prompts.shape[0]
    hist = ops.cat([prompts, ops.full((rows, max_new), pad_id, "int64")], dim=1)
    valid = ops.cat([prompt_valid, ops.full((rows, max_new), True, "bool")], dim=1)
    return hist, valid


def _greedy_or_sample(session, logits, prompts, prompt_valid, group, max_new, opts, rules):
    ops = session.ops
    ops.reseed(opts.seed)
    rows, p = prompts.shape
    apply_rules = _Rules(rules, ops, p)
    hist, valid = _history(ops, prompts, prompt_valid, max_new, rules.pad_id)
    finished = ops.full((rows,), False, "bool")
    total = ops.full((rows,), 0.0, "float32")
    steps = 0
    # Reading "all finished" back makes the host wait for the device: ops.sync_every (k) reads it
    # every k steps only. The steps in between change nothing a result holds (finished rows only
    # append padding, which _result cuts after the [SEP], and add 0 to their score).
    every = _sync_every(ops)
    for t in range(max_new):
        scores = apply_rules(logits, hist[:, : p + t], valid[:, : p + t], t)
        if opts.do_sample:
            token = ops.multinomial(ops.softmax(_warp(scores, opts, ops)))
        else:
            token = ops.argmax(scores)
        logp = ops.gather(ops.log_softmax(scores), token[:, None])[:, 0]
        token = ops.where(finished, rules.pad_id, token)
        total = total + ops.where(finished, 0.0, logp)
        hist[:, p + t] = token
        finished = finished | (token == rules.eos_id)
        steps = t + 1
        if steps == max_new or (steps % every == 0 and ops.all(finished)):
            break
        logits = session.step(token)
    gen = ops.to_numpy(hist[:, p : p + steps])
    scores_np = ops.to_numpy(total)
    out = []
    for image in range(rows // group):
        found = [_result(gen[r], float(scores_np[r]), rules.eos_id) for r in range(image * group, (image + 1) * group)]
        if opts.do_sample and group > 1:
            found.sort(key=lambda res: -res.score)
        out.append(found)
    return out


def _sync_every(ops: Any) -> int:
    return max(1, int(getattr(ops, "sync_every", 1)))


def _result(tokens: np.ndarray, score: float, eos_id: int) -> SearchResult:
    ids = tokens.tolist()
    if eos_id in ids:
        return SearchResult(ids[: ids.index(eos_id)], score, True)
    return SearchResult(ids, score, False)


def _beam(session, logits, prompts, prompt_valid, k, max_new, opts, rules):
    ops = session.ops
    rows, p = prompts.shape
    b = rows // k
    apply_rules = _Rules(rules, ops, p)
    hist, valid = _history(ops, prompts, prompt_valid, max_new, rules.pad_id)
    lp = opts.length_penalty
    keep = 2 * k  # transformers keeps (1 + number of eos ids) * k candidates, at least 2k
    in_top_k = ops.asarray(np.arange(keep) < k, "bool")[None, :]

    running = ops.full((b, k, max_new), rules.pad_id, "int64")  # generated tokens of live beams
    first_only = np.tile(np.array([0.0] + [-1e9] * (k - 1), dtype=np.float32), (b, 1))
    running_scores = ops.asarray(first_only, "float32")  # all beams start equal: count one of them
    best = ops.full((b, k, max_new), rules.pad_id, "int64")  # finished hypotheses
    best_scores = ops.full((b, k), -1e9, "float32")  # with the length penalty
    best_raw = ops.full((b, k), 0.0, "float32")  # sum of log-probs
    is_finished = ops.full((b, k), False, "bool")
    improvable = ops.full((b, 1), True, "bool")
    batch_offset = ops.arange(b)[:, None] * k
    # The stopping rules are read back every `every` steps (ops.sync_every). Until then the search
    # runs on, with what a result holds (the finished hypotheses and the rule's state) frozen on the
    # device from the step at which the rules first said stop: the results are the same as when
    # stopping there.
    every = _sync_every(ops)
    stopped = ops.full((1, 1), False, "bool")

    for t in range(max_new):
        logp = apply_rules(ops.log_softmax(logits), hist[:, : p + t], valid[:, : p + t], t)
        vocab = logp.shape[-1]
        logp = (logp.reshape(b, k, vocab) + running_scores[:, :, None]).reshape(b, k * vocab)
        top_lp, top_idx = ops.topk(logp, keep)
        src_beam, token = top_idx // vocab, top_idx % vocab
        cand = ops.gather(running, src_beam)  # (b, keep, max_new)
        cand[:, :, t] = token
        hits = token == rules.eos_id
        if t + 1 >= max_new:
            hits = ops.full(hits.shape, True, "bool")

        # live beams for the next step: the best k candidates that did not just finish
        live_lp = ops.where(hits, top_lp - 1e9, top_lp)
        nxt = ops.topk(live_lp, k)[1]
        running = ops.gather(cand, nxt)
        running_scores = ops.gather(live_lp, nxt)
        running_src = ops.gather(src_beam, nxt)

        # finished hypotheses: merge candidates that just ended (among the top k) with those kept
        just = hits & in_top_k
        fin = top_lp / float((t + 1) ** lp)
        # each disqualification adds -1e9, exactly as transformers does, so ties order the same
        if opts.early_stopping is True:
            fin = fin + ops.where(ops.all_last(is_finished), -1e9, 0.0)
        fin = fin + ops.where(improvable, 0.0, -1e9) + ops.where(just, 0.0, -1e9)
        merged_scores = ops.cat([best_scores, fin], dim=1)
        sel = ops.topk(merged_scores, k)[1]
        kept = (best, best_scores, best_raw, is_finished, improvable)
        best = ops.gather(ops.cat([best, cand], dim=1), sel)
        best_scores = ops.gather(merged_scores, sel)
        best_raw = ops.gather(ops.cat([best_raw, top_lp], dim=1), sel)
        is_finished = ops.gather(ops.cat([is_finished, just], dim=1), sel)

        # transformers' stopping rule: can a live beam still beat the worst finished hypothesis?
        horizon = max_new if (opts.early_stopping == "never" and lp > 0.0) else t + 1
        best_possible = running_scores[:, :1] / float(horizon**lp)
        worst = ops.where(is_finished, ops.min_last(best_scores), -1e9)
        improvable = improvable & ops.any_last(best_possible > worst)
        if every == 1:
            all_full = opts.early_stopping is True and ops.all(is_finished)
            if all_full or not ops.any(improvable) or ops.all(hits):
                break
        else:
            best, best_scores, best_raw, is_finished, improvable = (
                ops.where(stopped[:, :, None] if old.ndim == 3 else stopped, old, new)
                for old, new in zip(kept, (best, best_scores, best_raw, is_finished, improvable)))
            stop = ~ops.any_last(improvable.reshape(1, b)) | ops.all_last(hits.reshape(1, -1))
            if opts.early_stopping is True:
                stop = stop | ops.all_last(is_finished.reshape(1, -1))
            stopped = stopped | stop
            if t + 1 == max_new or ((t + 1) % every == 0 and ops.all(stopped)):
                break
        rows_src = (running_src + batch_offset).reshape(rows)
        session.reorder(rows_src)
        hist = hist[rows_src]
        hist[:, p : p + t + 1] = running.reshape(rows, max_new)[:, : t + 1]
        logits = session.step(running[:, :, t].reshape(rows))

    tokens, raw = ops.to_numpy(best), ops.to_numpy(best_raw)
    return [
        [_result(tokens[i, j], float(raw[i, j]), rules.eos_id) for j in range(opts.num_return_sequences)]
        for i in range(b)
    ]


def pad_prompt_rows(prompts: Sequence[list[int]], group: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad each image's prompt ids and repeat each `group` times (image-major rows)."""
    width = max(len(ids) for ids in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    valid = np.zeros((len(prompts), width), dtype=bool)
    for i, row in enumerate(prompts):
        ids[i, width - len(row) :] = row
        valid[i, width - len(row) :] = True
    return np.repeat(ids, group, axis=0), np.repeat(valid, group, axis=0)


def prompt_positions(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For left-padded prompt rows (``valid``: (rows, P) bool): each slot's position id (padding
    clamped to 0) and the position of the first new token, per row. The numpy backends' prefill."""
    n_pad = (~valid).sum(axis=1)
    positions = np.maximum(np.arange(valid.shape[1])[None, :] - n_pad[:, None], 0)
    return positions.astype(np.int64), (valid.shape[1] - n_pad).astype(np.int64)
