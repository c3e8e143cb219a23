"""UNet (Ronneberger et al., 2015) for segmentation, returning logits [B, n_classes, H, W].

Any input size works: H and W are padded up to a multiple of 2**depth and the output is cropped
back, so a 1918x1280 Carvana photo needs no resizing to a "nice" size first.
"""
import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU; keeps H and W."""

    def __init__(self, in_channels, out_channels):
        # No conv bias: the BatchNorm right after it has its own.
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def pad_to_multiple(images, multiple):
    """Pad H and W at the bottom and right up to a multiple of `multiple`.

    Replicated borders avoid the dark frame that zero padding would add, and unlike reflection
    they work for inputs smaller than the padding.
    """
    height, width = images.shape[-2:]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return images
    return F.pad(images, (0, pad_right, 0, pad_bottom), mode="replicate")


def check_architecture(n_channels, n_classes, depth, base_width):
    for name, value in (("n_channels", n_channels), ("n_classes", n_classes),
                        ("depth", depth), ("base_width", base_width)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


class Up(nn.Module):
    """Double the resolution, halve the channels, join the skip connection and convolve."""

    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        else:
            self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, features, skip):
        return self.conv(torch.cat([skip, self.upsample(features)], dim=1))


class UNet(nn.Module):
    """UNet with `depth` poolings; level l has base_width * 2**l channels.

    bilinear=True upsamples by interpolation and a 1x1 convolution, False by a transposed
    convolution; both give the same widths.
    """

    def __init__(self, n_channels=3, n_classes=1, depth=4, base_width=32, bilinear=True):
        super().__init__()
        check_architecture(n_channels, n_classes, depth, base_width)
        self.depth = depth
        widths = [base_width * 2 ** level for level in range(depth + 1)]
        self.stem = DoubleConv(n_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[level - 1], widths[level]))
            for level in range(1, depth + 1))
        self.ups = nn.ModuleList(
            Up(widths[level + 1], widths[level], bilinear) for level in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def forward(self, images):
        height, width = images.shape[-2:]
        features = self.stem(pad_to_multiple(images, 2 ** self.depth))
        skips = []
        for down in self.downs:
            skips.append(features)
            features = down(features)
        for up, skip in zip(self.ups, reversed(skips)):
            features = up(features, skip)
        return self.head(features)[..., :height, :width]
