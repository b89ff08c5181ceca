"""The CPU engine's per-request sampling processors, checked against their definitions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cpu_engine import sampling
from cpu_engine.sampling import Temperature, TopK, TopPAndSample


def requests(*kwargs: dict):
    return [SimpleNamespace(state=SimpleNamespace(logit_processor_kwargs=k)) for k in kwargs]


def run(scores: torch.Tensor, *kwargs: dict) -> torch.Tensor:
    """Apply the three processors the way the batching loop does, then its argmax."""
    batch = requests(*kwargs)
    for processor in (Temperature(), TopK(), TopPAndSample()):
        scores = processor(scores, processor.prepare_tensor_args(batch))
    return scores.argmax(-1)


def test_the_processor_interface_is_available_in_this_transformers():
    assert sampling.available()


def test_greedy_rows_take_the_argmax_while_others_sample():
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    picks = torch.stack([run(logits.clone(), {"greedy": True}, {"temperature": 1.0}) for _ in range(200)])
    assert (picks[:, 0] == logits[0].argmax()).all()
    assert picks[:, 1].unique().numel() > 5


@pytest.mark.slow  # thousands of draws
def test_samples_follow_the_softmax_of_logits_over_temperature():
    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for temperature in (1.0, 0.5):
        draws = torch.stack(
            [run(logits.clone(), {"temperature": temperature}) for _ in range(4000)]
        ).flatten()
        observed = torch.bincount(draws, minlength=4).float() / draws.numel()
        expected = (logits[0] / temperature).softmax(-1)
        assert torch.allclose(observed, expected, atol=0.03), (temperature, observed, expected)


def test_top_k_and_top_p_only_ever_pick_allowed_tokens():
    torch.manual_seed(2)
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]] * 2)
    probs = logits[0].softmax(-1)
    # top_p 0.8: the smallest prefix of the sorted tokens whose mass reaches 0.8.
    nucleus = int((probs.cumsum(-1) < 0.8).sum()) + 1
    draws = torch.stack([run(logits.clone(), {"top_k": 2}, {"top_p": 0.8}) for _ in range(500)])
    assert set(draws[:, 0].tolist()) == {0, 1}
    assert set(draws[:, 1].tolist()) == set(range(nucleus))


@pytest.mark.parametrize("kwargs", [{"top_k": 0}, {"top_p": 1.0}, {}])
def test_neutral_settings_leave_the_distribution_alone(kwargs):
    scores = torch.randn(1, 10)
    out = TopK()(scores, TopK().prepare_tensor_args(requests(kwargs)))
    assert torch.equal(out, scores)
