"""Loss selector: a name on the command line maps to the class that builds the loss.

Adding a loss is one line in LOSSES; the CLI offers ``choices=sorted(LOSSES)``.
"""
from loss.dice_loss import (BCEDiceLoss, BinaryCrossEntropyLoss, CEDiceLoss, DiceLoss,
                            MultiClassCrossEntropyLoss)
from utils.errors import UserError

LOSSES = {
    "ce": MultiClassCrossEntropyLoss,  # classification [B] or segmentation masks, C >= 2
    "bce": BinaryCrossEntropyLoss,  # one output channel, 0/1 masks of any dtype
    "dice": DiceLoss,  # soft dice; binary for one channel, per class otherwise
    "bce_dice": BCEDiceLoss,  # bce + dice, the usual choice for Carvana
    "ce_dice": CEDiceLoss,  # cross-entropy + dice for multi-class masks
}


def build_loss(name):
    """Build the loss registered as `name`."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()
