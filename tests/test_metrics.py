"""Tests for utils/metrics.py: classification and segmentation statistics and metrics."""
import pytest
import torch

from state.metric_sums import MetricSums
from utils.metrics import (classification_metrics, classification_stats, dice_iou_per_image, per_class_accuracy,
                           segmentation_metrics, segmentation_stats)


def _classification_batch():
    logits = torch.tensor([[5.0, 1.0, 0.0],    # target 0, predicted 0
                           [0.0, 2.0, 3.0],    # target 1, predicted 2, class 1 second
                           [1.0, 0.0, 4.0],    # target 2, predicted 2
                           [0.5, 3.0, 0.0]])   # target 1, predicted 1
    return logits, torch.tensor([0, 1, 2, 1])


def test_classification_stats_counts():
    logits, target = _classification_batch()
    stats = classification_stats(logits, target, topk=(2, 3, 5))
    assert set(stats) == {"samples", "correct_top2", "confusion"}  # top-k only below n_classes
    assert stats["samples"] == 4
    assert stats["confusion"].trace().item() == 3
    assert stats["correct_top2"].item() == 4
    assert torch.equal(stats["confusion"], torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]))


def test_classification_metrics_over_batches():
    logits, target = _classification_batch()
    sums = MetricSums()
    sums.add(classification_stats(logits, target, topk=(2,)))
    # Two samples of class 0, both wrong, and class 0 outside both top-2 sets.
    sums.add(classification_stats(torch.tensor([[0.0, 0.5, 1.0], [0.2, 1.0, 0.5]]), torch.tensor([0, 0]), topk=(2,)))
    totals = sums.reduced()
    metrics = classification_metrics(totals)
    assert metrics == pytest.approx({"accuracy": 3 / 6, "top2_accuracy": 4 / 6})
    assert per_class_accuracy(totals["confusion"]) == pytest.approx([1 / 3, 1 / 2, 1.0])


def test_per_class_accuracy_of_an_absent_class_is_zero():
    assert per_class_accuracy([[2, 0], [0, 0]]) == [1.0, 0.0]


def _mask(shape, *pixels):
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, column in pixels:
        mask[row, column] = True
    return mask


def test_dice_iou_per_image():
    shape = (4, 4)
    square = _mask(shape, (0, 0), (0, 1), (1, 0), (1, 1))
    predicted = torch.stack([
        square,                                             # perfect
        square,                                             # disjoint
        torch.zeros(shape, dtype=torch.bool),               # both empty
        torch.zeros(shape, dtype=torch.bool),               # missed everything
        square,                                             # 3 of 4 predicted pixels in a 6-pixel target
    ])
    target = torch.stack([
        square,
        _mask(shape, (3, 3), (2, 3)),
        torch.zeros(shape, dtype=torch.bool),
        square,
        _mask(shape, (0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (3, 0)),
    ])
    dice, iou = dice_iou_per_image(predicted, target)
    assert dice.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 2 * 3 / (4 + 6)])
    assert iou.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 3 / 7])


def test_segmentation_stats_single_channel():
    target = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    target[0, 0, 0, :] = 1               # 3 pixels
    predicted = torch.zeros(2, 3, 3, dtype=torch.bool)
    predicted[0, 0, :2] = True           # 2 of them, nothing else
    predicted[1, 2, 2] = True            # image 1 has an empty target
    logits = torch.where(predicted, 8.0, -8.0)[:, None]
    stats = segmentation_stats(logits, target)
    assert stats["images"] == 2
    assert stats["dice_sum"].item() == pytest.approx(2 * 2 / 5 + 0.0)
    assert stats["iou_sum"].item() == pytest.approx(2 / 3 + 0.0)
    assert stats["pixels"] == 18
    assert stats["correct_pixels"].item() == 16
    metrics = segmentation_metrics(_summed(stats))
    assert metrics["dice"] == pytest.approx(0.4)
    assert metrics["iou"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(16 / 18)


def _summed(stats):
    sums = MetricSums()
    sums.add(stats)
    return sums.reduced()


def test_segmentation_stats_multi_class_counts_every_foreground_class():
    target = torch.tensor([[[0, 2], [1, 0]]])          # classes 1 and 2 are both foreground
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logits[0, 2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    logits[0, 1, 1, 1] = 1.0                           # a false positive
    stats = segmentation_stats(logits, target)
    # predicted foreground (0,1), (1,0), (1,1); target foreground (0,1), (1,0)
    assert stats["dice_sum"].item() == pytest.approx(2 * 2 / 5)
    assert stats["iou_sum"].item() == pytest.approx(2 / 3)
    assert stats["correct_pixels"].item() == 3


def test_a_multi_class_mask_is_one_minus_the_background_probability_above_the_threshold():
    """The rule of the metrics at --img_size, of the full-resolution test, of the pictures and of
    the submission: a pixel whose classes are (0.4, 0.3, 0.3) is car, though no class beats 0.4."""
    from trainer_seg_on_carvana import car_probability
    from utils.metrics import binary_masks
    logits = torch.log(torch.tensor([0.4, 0.3, 0.3])).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    assert binary_masks(logits, 0.5).all() and not binary_masks(logits, 0.7).any()
    assert torch.equal(binary_masks(logits, 0.5), car_probability(logits, (2, 2)) > 0.5)
