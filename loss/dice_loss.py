"""Segmentation losses that take masks as the dataset gives them.

Targets may arrive as uint8 0/1 masks [B, 1, H, W] straight from the data loader, or as class
indices [B, H, W]; every loss here converts them itself, so a task never casts targets.
One output channel means binary segmentation (sigmoid); two or more mean one class per channel
(softmax) with integer class indices as targets.
"""
import torch
import torch.nn.functional as F
from torch import nn


def binary_target(target, logits):
    """Return a 0/1 target as float with the logits' shape, adding the channel dim if missing."""
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    return target.to(logits.dtype).reshape(logits.shape)


def class_index_target(target, logits):
    """Return class indices as int64 [B, ...] without a channel dim, as cross-entropy wants."""
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target.squeeze(1)
    return target.long()


class BinaryCrossEntropyLoss(nn.BCEWithLogitsLoss):
    """BCEWithLogitsLoss that accepts integer 0/1 masks, with or without the channel dim."""

    def forward(self, logits, target):
        return super().forward(logits, binary_target(target, logits))


class MultiClassCrossEntropyLoss(nn.CrossEntropyLoss):
    """CrossEntropyLoss that also accepts masks [B, 1, H, W] of any integer dtype.

    Plain classification targets [B] work unchanged, and float targets shaped like the logits
    are passed on as class probabilities.
    """

    def forward(self, logits, target):
        if not (target.is_floating_point() and target.shape == logits.shape):
            target = class_index_target(target, logits)
        return super().forward(logits, target)


class DiceLoss(nn.Module):
    """Soft dice loss: 1 - mean dice, with dice computed per image and per class.

    `smooth` is added to numerator and denominator so that a class absent from both target and
    prediction scores a dice of 1 instead of 0/0. Binary dice counts only the foreground.
    """

    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, logits, target):
        if logits.shape[1] == 1:
            probabilities = torch.sigmoid(logits)
            target = binary_target(target, logits)
        else:
            probabilities = torch.softmax(logits, dim=1)
            indices = class_index_target(target, logits)
            # one_hot puts classes last; move them next to the batch dim like the logits.
            target = F.one_hot(indices, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        probabilities = probabilities.flatten(2)
        target = target.flatten(2)
        intersection = (probabilities * target).sum(dim=2)
        total = probabilities.sum(dim=2) + target.sum(dim=2)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()


class _PlusDice(nn.Module):
    """first_weight * a first loss + dice_weight * dice loss."""

    def __init__(self, first, first_weight, dice_weight, smooth):
        super().__init__()
        self.first, self.first_weight = first, first_weight
        self.dice, self.dice_weight = DiceLoss(smooth), dice_weight

    def forward(self, logits, target):
        return self.first_weight * self.first(logits, target) + self.dice_weight * self.dice(logits, target)


class BCEDiceLoss(_PlusDice):
    """bce_weight * binary cross-entropy + dice_weight * dice loss, for one output channel."""

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0):
        super().__init__(BinaryCrossEntropyLoss(), bce_weight, dice_weight, smooth)


class CEDiceLoss(_PlusDice):
    """ce_weight * cross-entropy + dice_weight * dice loss, for two or more output channels."""

    def __init__(self, ce_weight=1.0, dice_weight=1.0, smooth=1.0):
        super().__init__(MultiClassCrossEntropyLoss(), ce_weight, dice_weight, smooth)
