"""The one multiple-choice evaluator: score every choice by its answer log-likelihood (CLI and benchmarks)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .metrics import multiple_choice_metrics


def encode_pair(tokenizer, prompt: str, continuation: str, max_length: int, add_eos: bool) -> tuple[list[int], int]:
    """``(prompt ids + continuation ids, number of prompt ids)``; a long prompt loses its beginning."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return _fit(p, _continuation_ids(tokenizer, continuation, add_eos), max_length)


def _continuation_ids(tokenizer, continuation: str, add_eos: bool) -> list[int]:
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return c + [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else c


def _fit(p: list[int], c: list[int], max_length: int) -> tuple[list[int], int]:
    """The continuation keeps its first ``max_length - 1`` tokens, the prompt its last ones that still fit."""
    c = c[: max_length - 1]
    p = p[-(max_length - len(c)):]
    return p + c, len(p)


class _Choice(NamedTuple):
    question: int
    choice: int
    seq: list[int]  # truncated prompt + choice tokens, as `encode_pair` builds them
    n_prompt: int
    n_chars: int  # characters of " " + choice (acc_norm)
    context: tuple  # (question, the tokens run once for every choice that starts with them)


def _choice_sequences(tokenizer, rows, columns: dict, max_length: int, shared_prompt: bool) -> list[_Choice]:
    """One `_Choice` per choice; its context is the truncated prompt, or the whole sequence when ``shared_prompt``
    is off."""
    out = []
    for qi, row in enumerate(rows):
        p = tokenizer(row[columns["prompt"]], add_special_tokens=True)["input_ids"]
        for ci, choice in enumerate(row["choices"]):
            cont = " " + str(choice)
            seq, n_prompt = _fit(p, _continuation_ids(tokenizer, cont, add_eos=False), max_length)
            context = tuple(seq[:n_prompt] if shared_prompt else seq)
            out.append(_Choice(qi, ci, seq, n_prompt, len(cont), (qi, context)))
    return out


def _left_pad(seqs: list[tuple[int, ...]], pad_id: int):
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` (positions count real tokens only, so
    every sequence sees the positions it would see alone)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _score_batch(model, contexts: list[tuple[int, ...]], choices: list[list[_Choice]], pad_id: int, device) -> dict:
    """Log-likelihoods of the choices of ``contexts`` (``choices[i]``: the choices whose sequence starts with
    ``contexts[i]``): one forward of the contexts, then, where a choice goes on past its context, one forward of
    the remaining tokens of every such choice, reading the contexts from the key/value cache."""
    ids, mask, pos = _left_pad(contexts, pad_id)
    # logits only where a choice token is predicted: the last positions (left padding aligns every context's end)
    keep = max(len(ctx) - it.n_prompt + 1 for ctx, its in zip(contexts, choices) for it in its)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=True, logits_to_keep=keep)
    logits = out.logits[:, -keep:]
    scores, tails = {}, []  # tails: (row, choice item, tokens after the context)
    for row, (ctx, its) in enumerate(zip(contexts, choices)):
        for it in its:
            last = min(len(ctx), len(it.seq) - 1)  # positions n_prompt..last are predicted inside the context
            targets = torch.tensor(it.seq[it.n_prompt:last + 1], dtype=torch.long, device=logits.device)
            at = keep - len(ctx) + it.n_prompt - 1
            scores[it[:2]] = float(_token_logprobs(logits[row, at:at + len(targets)], targets).sum())
            if len(it.seq) - 1 > len(ctx):
                tails.append((row, it, it.seq[len(ctx):]))
    if tails:
        _score_tails(model, out.cache, mask, tails, scores, pad_id, device)
    return scores


def _score_tails(model, cache, context_mask, tails: list[tuple], scores: dict, pad_id: int, device) -> None:
    """Adds the log-probabilities of the tokens each choice has after its context (``tail[1:]``, fed
    ``tail[:-1]``) to ``scores``, with the contexts' rows of ``cache`` selected for every choice."""
    rows = torch.tensor([t[0] for t in tails], dtype=torch.long)
    width = max(len(t[2]) - 1 for t in tails)
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    for i, (_, _, tail) in enumerate(tails):
        ids[i, :len(tail) - 1] = torch.tensor(tail[:-1], dtype=torch.long)
        mask[i, :len(tail) - 1] = 1
    ctx_mask = context_mask[rows]
    pos = ctx_mask.sum(-1, keepdim=True) + torch.arange(width).unsqueeze(0)
    cache.reorder_cache(rows.to(device))
    logits = model(input_ids=ids.to(device), attention_mask=torch.cat([ctx_mask, mask], -1).to(device),
                   position_ids=pos.to(device), cache=cache, use_cache=True).logits
    for i, (_, it, tail) in enumerate(tails):
        targets = torch.tensor(tail[1:], dtype=torch.long, device=logits.device)
        scores[it[:2]] += float(_token_logprobs(logits[i, :len(targets)], targets).sum())


@torch.no_grad()
def score_choices(model, tokenizer, rows, columns: dict, max_length: int, batch_size: int = 32,
                  shared_prompt: bool = True, progress: bool = False) -> tuple[dict, dict]:
    """``(loglik, n_chars)`` keyed by ``(question, choice)``: the summed log-probability of the tokens of
    ``" " + choice`` after the question's prompt (a long prompt loses its beginning, as in :func:`encode_pair`), and
    the character count of ``" " + choice``.

    The prompt of a question is run once for all its choices (``shared_prompt``): a choice of one token is read
    from the prompt's last logits, longer choices go on from the prompt's key/value cache. That equals scoring each
    ``prompt + choice`` on its own for any model whose output at a position depends only on the tokens up to it;
    ``shared_prompt=False`` runs every choice as its own sequence (e.g. LoReFT, which edits the last positions).
    Contexts are batched ``batch_size`` at a time, longest first.
    """
    from tqdm.auto import tqdm

    items = _choice_sequences(tokenizer, rows, columns, max_length, shared_prompt)
    groups: dict[tuple, list[_Choice]] = {}
    for it in items:
        groups.setdefault(it.context, []).append(it)
    keys = sorted(groups, key=lambda k: -len(k[1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    loglik = {}
    try:
        starts = range(0, len(keys), batch_size)
        for start in tqdm(starts, desc="scoring choices", disable=not progress or len(starts) < 2):
            chunk = keys[start:start + batch_size]
            loglik.update(_score_batch(model, [k[1] for k in chunk], [groups[k] for k in chunk], pad_id, device))
    finally:
        model.train(was_training)
    return loglik, {it[:2]: it.n_chars for it in items}


def evaluate_multiple_choice(model, tokenizer, rows, columns: dict, max_length: int, batch_size: int = 32,
                             shared_prompt: bool = True, progress: bool = False) -> dict:
    """Metrics of :func:`~peft_gift.recipes.metrics.multiple_choice_metrics` for ``rows`` (dicts with the prompt,
    ``choices`` and label columns named in ``columns``, optionally ``source``), choices scored by
    :func:`score_choices`."""
    loglik, n_chars = score_choices(model, tokenizer, rows, columns, max_length, batch_size, shared_prompt, progress)
    labels = [int(row[columns["label"]]) for row in rows]
    return multiple_choice_metrics(loglik, n_chars, labels, [row.get("source") for row in rows])
