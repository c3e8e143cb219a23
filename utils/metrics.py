"""Per-batch statistics as sums (so they add across batches and processes) and what they become.

Each `*_stats` function returns a dict of tensors to add up over an epoch; the matching
`*_metrics` function turns the totals into the reported numbers.
"""
import torch


def classification_stats(logits, target, topk=(5,)):
    """A confusion matrix (rows: true class, columns: prediction), top-k hits and the sample count
    of one batch; top-1 accuracy and per-class accuracy both come from the confusion matrix."""
    n_classes = logits.shape[1]
    prediction = logits.argmax(dim=1)
    stats = {"samples": target.numel(),
             "confusion": torch.bincount(target * n_classes + prediction,
                                         minlength=n_classes * n_classes).reshape(n_classes, n_classes)}
    for k in topk:
        if k < n_classes:
            top = logits.topk(k, dim=1).indices
            stats[f"correct_top{k}"] = (top == target[:, None]).any(dim=1).sum()
    return stats


def classification_metrics(totals):
    samples = totals["samples"]
    metrics = {"accuracy": float(totals["confusion"].trace()) / samples}
    for name, value in totals.items():
        if name.startswith("correct_top"):
            metrics[f"top{name[len('correct_top'):]}_accuracy"] = value / samples
    return metrics


def per_class_accuracy(confusion):
    """Recall of each class from a confusion matrix (rows: true class, columns: prediction)."""
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    return (confusion.diagonal() / confusion.sum(dim=1).clamp(min=1)).tolist()


def foreground_probability(logits):
    """The probability of the foreground [B, H, W] from logits [B, C, H, W]: sigmoid for one
    channel, 1 - softmax of channel 0 (the background) for several."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1 - torch.softmax(logits, dim=1)[:, 0]


def binary_masks(logits, threshold=0.5):
    """Predicted masks from logits: the probability of the foreground above `threshold`."""
    return foreground_probability(logits) > threshold


def dice_iou_per_image(predicted, target):
    """Dice and IoU of each image's boolean masks [B, H, W]; two empty masks score 1, as on Kaggle."""
    predicted = predicted.flatten(1)
    target = target.flatten(1).bool()
    intersection = (predicted & target).sum(dim=1).double()
    predicted_area = predicted.sum(dim=1).double()
    target_area = target.sum(dim=1).double()
    union = predicted_area + target_area - intersection
    both_empty = (predicted_area + target_area) == 0
    dice = torch.where(both_empty, torch.ones_like(intersection),
                       2 * intersection / (predicted_area + target_area).clamp(min=1))
    iou = torch.where(both_empty, torch.ones_like(intersection), intersection / union.clamp(min=1))
    return dice, iou


def segmentation_stats(logits, target, threshold=0.5):
    """Sums of per-image dice and IoU, and pixel counts, for one batch; target holds class indices."""
    target = target.reshape(target.shape[0], *logits.shape[2:])
    predicted = binary_masks(logits, threshold)
    dice, iou = dice_iou_per_image(predicted, target > 0)
    return {"images": target.shape[0], "dice_sum": dice.sum(), "iou_sum": iou.sum(), "pixels": target.numel(),
            "correct_pixels": (predicted == (target > 0)).sum()}


def segmentation_metrics(totals):
    images = totals["images"]
    return {"dice": totals["dice_sum"] / images, "iou": totals["iou_sum"] / images,
            "pixel_accuracy": totals["correct_pixels"] / totals["pixels"]}
