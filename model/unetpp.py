"""UNet++ (Zhou et al., 2018): a UNet whose skip connections are nested, dense decoders.

Node X[i][j] sits at level i (resolution halved i times) after j convolution blocks along the
skip path. Column 0 is the encoder; every later node X[i][j] convolves the concatenation of all
earlier nodes of its level, X[i][0..j-1], with the upsampled X[i+1][j-1]. The top row
X[0][1..depth] holds full-resolution decoders of growing depth.

With deep_supervision=True, training returns a list with one logits tensor per top-row node
(shallowest first) so a loss can be averaged over all of them; evaluation returns the deepest
head's logits only, as does deep_supervision=False.
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.unet import DoubleConv, check_architecture, pad_to_multiple


class UNetPlusPlus(nn.Module):
    def __init__(self, n_channels=3, n_classes=1, depth=4, base_width=32, deep_supervision=False):
        super().__init__()
        check_architecture(n_channels, n_classes, depth, base_width)
        self.depth = depth
        self.deep_supervision = deep_supervision
        widths = [base_width * 2 ** level for level in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        for level in range(depth + 1):
            self.nodes[self._key(level, 0)] = DoubleConv(
                n_channels if level == 0 else widths[level - 1], widths[level])
        for column in range(1, depth + 1):
            for level in range(depth + 1 - column):
                in_channels = column * widths[level] + widths[level + 1]
                self.nodes[self._key(level, column)] = DoubleConv(in_channels, widths[level])
        head_columns = range(1, depth + 1) if deep_supervision else [depth]
        self.heads = nn.ModuleList(
            nn.Conv2d(widths[0], n_classes, kernel_size=1) for _ in head_columns)

    @staticmethod
    def _key(level, column):
        return f"x{level}_{column}"

    def forward(self, images):
        height, width = images.shape[-2:]
        features = pad_to_multiple(images, 2 ** self.depth)
        # grid[level] lists the nodes X[level][0], X[level][1], ... computed so far.
        grid = [[] for _ in range(self.depth + 1)]
        for level in range(self.depth + 1):
            if level > 0:
                features = self.pool(features)
            features = self.nodes[self._key(level, 0)](features)
            grid[level].append(features)
        for column in range(1, self.depth + 1):
            for level in range(self.depth + 1 - column):
                below = F.interpolate(grid[level + 1][column - 1], scale_factor=2,
                                      mode="bilinear", align_corners=False)
                node_input = torch.cat(grid[level][:column] + [below], dim=1)
                grid[level].append(self.nodes[self._key(level, column)](node_input))

        if self.deep_supervision and self.training:
            return [head(node)[..., :height, :width]
                    for head, node in zip(self.heads, grid[0][1:])]
        return self.heads[-1](grid[0][self.depth])[..., :height, :width]
