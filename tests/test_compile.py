"""torch.compile of a GIFT model: one graph, no graph breaks, same outputs and gradients."""

import pytest
import torch
import torch._dynamo as dynamo
from tiny_models import random_gift_model, text_inputs


@pytest.fixture(autouse=True)
def _reset_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def test_no_graph_breaks():
    explanation = dynamo.explain(random_gift_model())(**text_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_forward_and_backward_match_eager():
    model = random_gift_model()
    inputs = text_inputs()
    eager = model(**inputs, labels=inputs["input_ids"])
    eager.loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(**inputs, labels=inputs["input_ids"])
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert set(eager_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, g in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_inductor_forward_matches_eager():
    model = random_gift_model()
    inputs = text_inputs()
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model)(**inputs).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
