"""Tests for model/model_entry.py and data/data_entry.py: building models and datasets by name."""
import argparse

import pytest
import torch

from data.data_entry import DATASETS, build_datasets
from data.synthetic_fashion_mnist import write_fashion_mnist
from helpers import Messages
from model.model_entry import MODELS, build_model


def test_model_selector_builds_vanilla(restore_global_rng):
    assert {"Vanilla", "UNet", "UNet++"} <= set(MODELS)
    model = build_model(argparse.Namespace(model_type="Vanilla", dropout=0.0)).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("model_type", ["UNet", "UNet++"])
def test_model_selector_builds_segmentation_models(model_type, restore_global_rng):
    args = argparse.Namespace(model_type=model_type, n_channels=3, n_classes=1, depth=2, base_width=4,
                              deep_supervision=False)
    model = build_model(args).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_dataset_selector(tmp_path):
    assert {"FashionMNIST", "Carvana"} <= set(DATASETS)
    write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    args = argparse.Namespace(data_type="FashionMNIST", data_dir=tmp_path, download=False)
    pool, test_pool = build_datasets(args, log=Messages())
    assert (len(pool), len(test_pool)) == (30, 10)
