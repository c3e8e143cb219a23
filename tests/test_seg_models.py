import pytest
import torch

from data.carvana import CarvanaDataset
from data.synthetic_carvana import write_carvana
from helpers import Messages
from loss.dice_loss import BCEDiceLoss
from model.unet import UNet
from model.unetpp import UNetPlusPlus


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("size", [(37, 53), (32, 48), (5, 3)])
def test_unet_output_matches_input_size(bilinear, size):
    model = UNet(n_channels=3, n_classes=2, depth=3, base_width=4, bilinear=bilinear).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 2, *size)


@pytest.mark.parametrize("size", [(37, 53), (16, 16)])
def test_unetpp_output_matches_input_size(size):
    model = UNetPlusPlus(n_channels=3, n_classes=1, depth=3, base_width=4)
    logits = model(torch.randn(2, 3, *size))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 1, *size)


def test_unetpp_deep_supervision_list_in_training_tensor_in_eval():
    model = UNetPlusPlus(n_classes=2, depth=3, base_width=4, deep_supervision=True)
    images = torch.randn(2, 3, 37, 53)
    outputs = model.train()(images)
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(output.shape == (2, 2, 37, 53) for output in outputs)
    with torch.no_grad():
        final = model.eval()(images)
    assert isinstance(final, torch.Tensor) and final.shape == (2, 2, 37, 53)


def test_unetpp_without_deep_supervision_has_one_head():
    model = UNetPlusPlus(depth=2, base_width=4)
    assert len(model.heads) == 1
    assert isinstance(model.train()(torch.randn(2, 3, 9, 11)), torch.Tensor)


@pytest.mark.parametrize("model_class", [UNet, UNetPlusPlus])
@pytest.mark.parametrize("argument", ["depth", "base_width", "n_classes"])
def test_invalid_architecture_raises(model_class, argument):
    with pytest.raises(ValueError, match=argument):
        model_class(**{argument: 0})


def test_unet_overfits_two_synthetic_images(tmp_path):
    torch.manual_seed(0)
    root = write_carvana(tmp_path / "carvana", n_cars=1, views=2, size=(32, 48))
    dataset = CarvanaDataset(root, img_size=(32, 48), cache="memory", log=Messages())
    images, masks = dataset.get_batch(torch.arange(len(dataset)))
    images = images.float() / 255

    model = UNet(depth=2, base_width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_function = BCEDiceLoss()
    for _ in range(60):
        optimizer.zero_grad(set_to_none=True)
        loss_function(model(images), masks).backward()
        optimizer.step()

    with torch.no_grad():
        predicted = (model.eval()(images) > 0).float()
    target = masks.float()
    dice = 2 * (predicted * target).sum() / (predicted.sum() + target.sum())
    assert dice.item() > 0.9
