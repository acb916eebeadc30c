"""The multiple-choice evaluator: one pass over a question's prompt gives the same log-likelihoods as scoring every
``prompt + choice`` on its own (1-token and multi-token choices, truncated prompts and choices, several batches)."""

from __future__ import annotations

import random

import pytest
import torch
from peft import get_peft_model
from tiny_models import randomise_lofit, tiny_gemma, tiny_gpt2, tiny_llama, word_tokenizer

from peft_gift import LofitConfig
from peft_gift.recipes.multiple_choice import encode_pair, evaluate_multiple_choice, score_choices

WORDS = [f"w{i}" for i in range(60)]
COLUMNS = {"prompt": "prompt", "label": "label"}


def _rows(n: int, choice_words: tuple[int, int], prompt_words: tuple[int, int], n_choices: int = 3, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(*prompt_words)))
        choices = [" ".join(rng.choices(WORDS, k=rng.randint(*choice_words))) for _ in range(n_choices)]
        rows.append({"prompt": prompt, "choices": choices, "label": rng.randrange(n_choices)})
    return rows


@torch.no_grad()
def _one_by_one(model, tok, rows, max_length):
    """The definition: each ``prompt + " " + choice`` alone, summed log-probabilities of the choice's tokens."""
    out = {}
    for qi, row in enumerate(rows):
        for ci, choice in enumerate(row["choices"]):
            seq, n_prompt = encode_pair(tok, row["prompt"], " " + choice, max_length, add_eos=False)
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
            out[(qi, ci)] = float(sum(logp[t - 1, seq[t]] for t in range(n_prompt, len(seq))))
    return out


CASES = {
    "one-token choices": dict(choice_words=(1, 1), prompt_words=(3, 20), max_length=64),
    "multi-token choices": dict(choice_words=(1, 6), prompt_words=(3, 20), max_length=64),
    "prompts cut on the left": dict(choice_words=(1, 4), prompt_words=(15, 40), max_length=12),
    "choices cut on the right": dict(choice_words=(8, 14), prompt_words=(2, 6), max_length=10),
}


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_gemma], ids=["llama", "gpt2", "gemma"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shared_prompt", [True, False], ids=["shared", "per-choice"])
def test_scores_equal_each_choice_scored_alone(factory, case, shared_prompt):
    c = CASES[case]
    model, tok = factory(), word_tokenizer(WORDS)
    rows = _rows(7, c["choice_words"], c["prompt_words"])
    loglik, n_chars = score_choices(model, tok, rows, COLUMNS, c["max_length"], batch_size=3,
                                    shared_prompt=shared_prompt)
    ref = _one_by_one(model, tok, rows, c["max_length"])
    assert loglik.keys() == ref.keys()
    assert max(abs(loglik[k] - ref[k]) for k in ref) < 1e-4
    assert n_chars == {(q, i): len(" " + ch) for q, r in enumerate(rows) for i, ch in enumerate(r["choices"])}


def test_a_peft_model_scores_equal_and_its_mode_is_kept():
    model = get_peft_model(tiny_llama(), LofitConfig(heads=[[0, 1], [1, 3]], mode="bias"))
    randomise_lofit(model)
    model.train()
    tok = word_tokenizer(WORDS)
    rows = _rows(5, (1, 3), (3, 12))
    loglik, _ = score_choices(model, tok, rows, COLUMNS, 64)
    assert model.training
    model.eval()
    ref = _one_by_one(model, tok, rows, 64)
    assert max(abs(loglik[k] - ref[k]) for k in ref) < 1e-4


def test_one_token_choices_take_one_forward_per_batch_of_prompts():
    model, tok = tiny_llama(), word_tokenizer(WORDS)
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    rows = _rows(10, (1, 1), (3, 20), n_choices=2)
    evaluate_multiple_choice(model, tok, rows, COLUMNS, 64, batch_size=4)
    assert [s[0] for s in calls] == [4, 4, 2]  # 10 prompts, not 20 prompt + choice sequences
    calls.clear()
    evaluate_multiple_choice(model, tok, _rows(4, (2, 3), (3, 20), n_choices=2), COLUMNS, 64, batch_size=4)
    assert [s[0] for s in calls] == [4, 8]  # the prompts, then every choice's remaining tokens from the cache


def test_metrics_pick_the_most_likely_choice():
    model, tok = tiny_llama(), word_tokenizer(WORDS)
    rows = _rows(12, (1, 4), (3, 20))
    loglik, _ = score_choices(model, tok, rows, COLUMNS, 64)
    for row, qi in zip(rows, range(len(rows))):
        row["label"] = max(range(3), key=lambda c: loglik[(qi, c)])
    assert evaluate_multiple_choice(model, tok, rows, COLUMNS, 64)["accuracy"] == 1.0


def test_training_batches_are_padded_to_their_longest_example(tmp_path):
    from datasets import Dataset
    from tiny_models import save_checkpoint

    from peft_gift.recipes.tasks import MultipleChoice

    save_checkpoint(tiny_llama(), tmp_path, WORDS)
    task = MultipleChoice(str(tmp_path), {"max_length": 64}, COLUMNS, None, None)
    encoded = task.encode(Dataset.from_list(_rows(6, (1, 3), (2, 9))))
    lengths = [len(x) for x in encoded["input_ids"]]
    batch = task.collator()([encoded[i] for i in range(3)])
    assert batch["input_ids"].shape[1] == max(lengths[:3]) < 64
    assert batch["labels"].shape == batch["input_ids"].shape
