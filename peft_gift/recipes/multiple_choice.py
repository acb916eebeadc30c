"""The one multiple-choice evaluator: score every choice by its answer log-likelihood (CLI and benchmarks)."""

from __future__ import annotations

import torch

from .metrics import multiple_choice_metrics


def encode_pair(tokenizer, prompt: str, continuation: str, max_length: int, add_eos: bool) -> tuple[list[int], int]:
    """``(prompt ids + continuation ids, number of prompt ids)``; a long prompt loses its beginning."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    c = c[: max_length - 1]
    p = p[-(max_length - len(c)):]
    return p + c, len(p)


@torch.no_grad()
def evaluate_multiple_choice(model, tokenizer, rows, columns: dict, max_length: int, batch_size: int = 32,
                             progress: bool = False) -> dict:
    """Metrics of :func:`~peft_gift.recipes.metrics.multiple_choice_metrics` for ``rows`` (dicts with the prompt,
    ``choices`` and label columns named in ``columns``, optionally ``source``).

    Each choice is scored as the summed log-probability of the tokens of ``" " + choice`` after the prompt (no EOS),
    in batches sorted by length, right-padded with :class:`transformers.DataCollatorWithPadding`.
    """
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    items, labels, sources = [], [], []  # items: (question, choice, ids, n_prompt, n_chars)
    for qi, row in enumerate(rows):
        labels.append(int(row[columns["label"]]))
        sources.append(row.get("source"))
        for ci, choice in enumerate(row["choices"]):
            cont = " " + str(choice)
            seq, n_prompt = encode_pair(tokenizer, row[columns["prompt"]], cont, max_length, add_eos=False)
            items.append((qi, ci, seq, n_prompt, len(cont)))
    order = sorted(range(len(items)), key=lambda i: -len(items[i][2]))
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"  # prompt positions must not depend on the batch
    device = next(p.device for p in model.parameters())
    loglik, n_chars = {}, {}
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="scoring choices", disable=not progress or len(starts) < 2):
            chunk = [items[i] for i in order[start:start + batch_size]]
            batch = collate([{"input_ids": it[2]} for it in chunk])
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits.float()
            tok_lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for j, (qi, ci, seq, n_prompt, chars) in enumerate(chunk):
                loglik[(qi, ci)] = float(tok_lp[j, n_prompt - 1: len(seq) - 1].sum())
                n_chars[(qi, ci)] = chars
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return multiple_choice_metrics(loglik, n_chars, labels, sources)
