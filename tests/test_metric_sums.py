"""Tests for state/metric_sums.py: MetricSums."""

import torch

from state.metric_sums import MetricSums


def test_metric_sums_reduce_to_python_numbers_and_tensors():
    sums = MetricSums()
    sums.add({"samples": torch.tensor(3.0), "correct": torch.tensor(2), "confusion": torch.tensor([[1, 0], [1, 1]])})
    sums.add({"samples": torch.tensor(5.0), "correct": torch.tensor(4), "confusion": torch.tensor([[2, 1], [0, 2]])})
    totals = sums.reduced()
    assert set(totals) == {"samples", "correct", "confusion"}
    assert type(totals["samples"]) is float and totals["samples"] == 8.0
    assert type(totals["correct"]) is float and totals["correct"] == 6.0
    assert isinstance(totals["confusion"], torch.Tensor)
    assert totals["confusion"].dtype == torch.float64
    assert torch.equal(totals["confusion"], torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64))


def test_metric_sums_accumulate_in_float64():
    sums = MetricSums()
    sums.add({"total": torch.tensor(2.0 ** 24, dtype=torch.float32)})
    sums.add({"total": torch.tensor(1.0, dtype=torch.float32)})
    # In float32, 2**24 + 1 rounds back to 2**24.
    assert sums.reduced()["total"] == 2.0 ** 24 + 1


def test_metric_sums_do_not_alias_the_added_tensors():
    value = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sums = MetricSums()
    sums.add({"v": value})
    value += 100
    sums.add({"v": torch.tensor([1.0, 1.0])})
    assert torch.equal(sums.reduced()["v"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert MetricSums().reduced() == {}


def test_metric_sums_mix_tensors_and_counts_and_round_trip():
    sums = MetricSums()
    sums.add({"correct": torch.tensor(3), "samples": 4, "confusion": torch.eye(2, dtype=torch.long)})
    sums.add({"correct": torch.tensor(1), "samples": 2, "confusion": torch.eye(2, dtype=torch.long)})
    restored = MetricSums()
    restored.load_state_dict(sums.state_dict(), "cpu")
    for totals in (sums.reduced(), restored.reduced()):
        assert totals["correct"] == 4.0 and totals["samples"] == 6
        assert torch.equal(totals["confusion"], 2 * torch.eye(2, dtype=torch.float64))
