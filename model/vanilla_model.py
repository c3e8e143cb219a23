"""The classic MLP for 28x28 images: 784-512-512-10."""
from torch import nn


class VanillaMLP(nn.Module):
    def __init__(self, in_features=784, hidden=512, n_classes=10, dropout=0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.layers(x)
