"""`peft_gift.bench.tiny.tiny_causal_lm`, the one factory of tiny decoders behind the benchmarks, the distributed and
GPU checks and the installed-wheel smoke test, builds exactly the decoders of the tests' `tiny_models` (which cannot
use it: some of its callers must not import peft_gift)."""

from __future__ import annotations

import pytest
import tiny_models
import torch

from peft_gift.bench.tiny import FAMILIES, tiny_causal_lm, tiny_config


def _same_model(a, b):
    assert type(a) is type(b) and a.config.to_dict() == b.config.to_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [0, 3])
def test_factory_builds_the_tests_tiny_decoders(family, seed):
    _same_model(tiny_causal_lm(family, seed=seed).eval(), getattr(tiny_models, f"tiny_{family}")(seed=seed))


def test_overrides_any_shape_and_the_random_state_when_seed_is_none():
    shape = dict(hidden_size=128, intermediate_size=256, head_dim=32, num_hidden_layers=3, vocab_size=96)
    _same_model(tiny_causal_lm(seed=1, **shape).eval(), tiny_models.tiny_llama(seed=1, **shape))
    torch.manual_seed(7)
    unseeded = tiny_causal_lm(seed=None)
    _same_model(unseeded, tiny_causal_lm(seed=7))
    config = tiny_config("gemma", num_key_value_heads=2)
    assert (config.head_dim, config.num_key_value_heads, config.pad_token_id) == (16, 2, 0)
    with pytest.raises(ValueError, match="unknown family 'gpt9'.*llama"):
        tiny_config("gpt9")


def test_factory_builds_on_the_given_device():
    model = tiny_causal_lm(device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
