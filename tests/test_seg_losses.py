import pytest
import torch

from loss.dice_loss import BCEDiceLoss, CEDiceLoss, DiceLoss
from loss.loss_entry import LOSSES, build_loss
from utils.errors import UserError


def binary_mask():
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(2, 1, 8, 12, generator=generator) > 0.5).to(torch.uint8)


def class_mask(classes=3):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, classes, (2, 8, 12), generator=generator)


def perfect_binary_logits(mask):
    return (mask.float() * 2 - 1) * 20


def perfect_class_logits(indices, classes=3):
    return torch.nn.functional.one_hot(indices, classes).movedim(-1, 1).float() * 40 - 20


def test_binary_dice_perfect_and_inverted():
    mask = binary_mask()
    dice = DiceLoss()
    assert dice(perfect_binary_logits(mask), mask).item() < 1e-3
    assert dice(-perfect_binary_logits(mask), mask).item() > 0.95
    # Masks without the channel dim, as some loaders give them, mean the same.
    assert dice(perfect_binary_logits(mask), mask[:, 0]).item() < 1e-3


def test_multiclass_dice_perfect_and_inverted():
    indices = class_mask()
    dice = DiceLoss()
    assert dice(perfect_class_logits(indices), indices).item() < 1e-3
    wrong = (indices + 1) % 3
    assert dice(perfect_class_logits(wrong), indices).item() > 0.95
    uint8_with_channel = indices.unsqueeze(1).to(torch.uint8)
    assert dice(perfect_class_logits(indices), uint8_with_channel).item() < 1e-3


def test_dice_is_differentiable():
    mask = binary_mask()
    logits = torch.zeros(mask.shape, requires_grad=True)
    DiceLoss()(logits, mask).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_combined_losses_are_small_for_perfect_and_large_for_inverted():
    mask = binary_mask()
    assert BCEDiceLoss()(perfect_binary_logits(mask), mask).item() < 1e-3
    assert BCEDiceLoss()(-perfect_binary_logits(mask), mask).item() > 10
    assert BCEDiceLoss(bce_weight=0.0)(-perfect_binary_logits(mask), mask).item() < 1.0
    indices = class_mask()
    assert CEDiceLoss()(perfect_class_logits(indices), indices).item() < 1e-3
    assert CEDiceLoss()(perfect_class_logits((indices + 1) % 3), indices).item() > 10


def test_selector_builds_every_loss():
    assert set(LOSSES) == {"ce", "bce", "dice", "bce_dice", "ce_dice"}
    mask = binary_mask()
    for name in ("bce", "dice", "bce_dice"):
        loss = build_loss(name)
        assert loss(perfect_binary_logits(mask), mask).item() < 1e-3
    indices = class_mask()
    for name in ("ce", "dice", "ce_dice"):
        loss = build_loss(name)
        assert loss(perfect_class_logits(indices), indices).item() < 1e-3


def test_bce_accepts_uint8_masks_with_or_without_channel():
    mask = binary_mask()
    logits = torch.randn(mask.shape)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, mask.float())
    bce = build_loss("bce")
    assert torch.allclose(bce(logits, mask), expected)
    assert torch.allclose(bce(logits, mask[:, 0]), expected)


def test_ce_accepts_segmentation_masks_and_classification_labels():
    indices = class_mask()
    logits = torch.randn(2, 3, 8, 12)
    expected = torch.nn.functional.cross_entropy(logits, indices)
    ce = build_loss("ce")
    assert torch.allclose(ce(logits, indices.unsqueeze(1).to(torch.uint8)), expected)
    labels = torch.tensor([0, 2, 1, 1])
    class_logits = torch.randn(4, 3)
    assert torch.allclose(ce(class_logits, labels),
                          torch.nn.functional.cross_entropy(class_logits, labels))


def test_unknown_loss_name_is_a_user_error():
    with pytest.raises(UserError, match=r"unknown loss 'focal'; expected one of bce, bce_dice"):
        build_loss("focal")
