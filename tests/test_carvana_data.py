import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data.carvana import CarvanaDataset, CarvanaImages, load_mask
from data.synthetic_carvana import write_carvana
from helpers import Messages
from utils.errors import UserError

SIZE = (32, 48)


@pytest.fixture
def root(tmp_path):
    return write_carvana(tmp_path / "carvana", n_cars=2, views=3, size=SIZE, seed=3)


def truncate_after_header(path):
    """Cut a JPEG a few bytes into its image data, so it opens but cannot be decoded."""
    data = path.read_bytes()
    start_of_scan = data.index(b"\xff\xda")
    path.write_bytes(data[:start_of_scan + 20])


def test_palette_and_grey_masks_load_identically(tmp_path):
    palette_root = write_carvana(tmp_path / "palette", n_cars=2, views=2, size=SIZE, seed=5)
    grey_root = write_carvana(tmp_path / "grey", n_cars=2, views=2, size=SIZE, seed=5,
                              mask_format="L")
    palette_files = sorted((palette_root / "train_masks").iterdir())
    grey_files = sorted((grey_root / "train_masks").iterdir())
    assert [path.name for path in palette_files] == [path.name for path in grey_files]
    for palette_file, grey_file in zip(palette_files, grey_files):
        # The files really differ on disk: palette indices 0/1 against grey levels 0/255.
        assert np.unique(np.array(Image.open(palette_file))).tolist() == [0, 1]
        assert np.unique(np.array(Image.open(grey_file))).tolist() == [0, 255]
        palette_mask = load_mask(palette_file)
        assert palette_mask.dtype == torch.uint8 and palette_mask.shape == SIZE
        assert set(palette_mask.unique().tolist()) == {0, 1}
        assert torch.equal(palette_mask, load_mask(grey_file))

    palette_data = CarvanaDataset(palette_root, img_size=SIZE)
    grey_data = CarvanaDataset(grey_root, img_size=SIZE)
    for index in range(len(palette_data)):
        assert torch.equal(palette_data[index][1], grey_data[index][1])


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_load_mask_other_modes(tmp_path, mode):
    expected = np.zeros((6, 9), dtype=np.uint8)
    expected[2:5, 3:7] = 1
    path = tmp_path / "mask.png"
    Image.fromarray(expected * 255).convert(mode).save(path)
    assert torch.equal(load_mask(path), torch.from_numpy(expected))


def test_load_mask_unreadable_names_file(tmp_path):
    path = tmp_path / "broken_mask.gif"
    path.write_bytes(b"not a gif")
    with pytest.raises(UserError, match="broken_mask.gif"):
        load_mask(path)


def test_names_groups_and_items(root):
    dataset = CarvanaDataset(root, img_size=SIZE)
    assert len(dataset) == 6
    assert dataset.names == sorted(dataset.names)
    assert dataset.groups == [name.rsplit("_", 1)[0] for name in dataset.names]
    assert len(set(dataset.groups)) == 2 and all(len(group) == 13 for group in dataset.groups)
    assert dataset.image_paths[0].name == f"{dataset.names[0]}.jpg"
    assert dataset.mask_paths[0].name == f"{dataset.names[0]}_mask.gif"
    assert not dataset.batched
    image, mask = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.uint8 and mask.shape == (1, *SIZE)
    assert torch.equal(mask[0], load_mask(dataset.mask_paths[0]))


def test_resizing_keeps_masks_binary(root):
    dataset = CarvanaDataset(root, img_size=(21, 29))
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape == (3, 21, 29)
        assert mask.shape == (1, 21, 29)
        assert set(mask.unique().tolist()) == {0, 1}


@pytest.mark.parametrize("folder", ["", "train", "train_masks"])
def test_missing_folder_names_the_expected_layout(root, folder):
    shutil.rmtree(root / folder)
    with pytest.raises(UserError, match="train_masks/\\*_mask.gif") as error:
        CarvanaDataset(root, img_size=SIZE)
    assert str(root / folder) in str(error.value)


def test_missing_mask_raises_naming_both_files(root):
    mask_path = sorted((root / "train_masks").iterdir())[2]
    mask_path.unlink()
    image_name = mask_path.name.replace("_mask.gif", ".jpg")
    with pytest.raises(UserError, match=image_name) as error:
        CarvanaDataset(root, img_size=SIZE)
    assert str(mask_path) in str(error.value)


def test_skip_bad_skips_missing_mask_with_a_warning(root):
    mask_path = sorted((root / "train_masks").iterdir())[2]
    mask_path.unlink()
    skipped_name = mask_path.name.replace("_mask.gif", "")
    messages = Messages()
    dataset = CarvanaDataset(root, img_size=SIZE, skip_bad=True, log=messages)
    assert len(dataset) == 5
    assert dataset.skipped == [skipped_name]
    assert skipped_name not in dataset.names
    assert len(dataset.groups) == 5
    assert messages.mention(skipped_name)


def test_png_masks_are_accepted(root):
    gif_path = sorted((root / "train_masks").iterdir())[0]
    Image.open(gif_path).convert("L").save(gif_path.with_suffix(".png"))
    gif_path.unlink()
    dataset = CarvanaDataset(root, img_size=SIZE)
    assert dataset.mask_paths[0].suffix == ".png"
    assert set(dataset[0][1].unique().tolist()) == {0, 1}


def test_corrupt_jpeg_raises_naming_it(root):
    broken = sorted((root / "train").iterdir())[1]
    truncate_after_header(broken)
    with pytest.raises(UserError, match=broken.name):
        CarvanaDataset(root, img_size=SIZE, cache="memory")
    # Without a cache nothing is decoded up front; reading the item names the file.
    dataset = CarvanaDataset(root, img_size=SIZE)
    with pytest.raises(UserError, match=broken.name):
        dataset[1]


def test_corrupt_jpeg_is_skipped_when_cached_with_skip_bad(root):
    broken = sorted((root / "train").iterdir())[1]
    truncate_after_header(broken)
    messages = Messages()
    dataset = CarvanaDataset(root, img_size=SIZE, cache="memory", skip_bad=True, log=messages)
    assert dataset.skipped == [broken.stem]
    assert len(dataset) == 5 == len(dataset.images) == len(dataset.masks)
    assert broken.stem not in dataset.names
    assert messages.mention(broken.stem)


def test_mask_of_another_size_raises(root):
    mask_path = sorted((root / "train_masks").iterdir())[0]
    Image.new("L", (40, 30)).save(mask_path)
    with pytest.raises(UserError, match="40x30") as error:
        CarvanaDataset(root, img_size=SIZE)
    message = str(error.value)
    assert "48x32" in message and mask_path.name in message


@pytest.mark.parametrize("img_size", [(0, 48), (32, -1), (32,), "big"])
def test_invalid_img_size(root, img_size):
    with pytest.raises(UserError, match="img_size"):
        CarvanaDataset(root, img_size=img_size)


def test_invalid_cache_mode(root):
    with pytest.raises(UserError, match="'ram'"):
        CarvanaDataset(root, img_size=SIZE, cache="ram")


def test_memory_cache_matches_decoding_and_get_batch(root):
    plain = CarvanaDataset(root, img_size=SIZE)
    messages = Messages()
    cached = CarvanaDataset(root, img_size=SIZE, cache="memory", num_workers=2, log=messages)
    assert cached.batched
    assert messages.mention("cached 6")
    assert cached.images.shape == (6, 3, *SIZE) and cached.masks.shape == (6, 1, *SIZE)
    for index in range(len(plain)):
        assert torch.equal(cached[index][0], plain[index][0])
        assert torch.equal(cached[index][1], plain[index][1])
    indices = torch.tensor([4, 0, 2])
    images, masks = cached.get_batch(indices)
    assert torch.equal(images, torch.stack([cached[index][0] for index in indices]))
    assert torch.equal(masks, torch.stack([cached[index][1] for index in indices]))


def test_disk_cache_round_trip_and_rebuilds(root, tmp_path):
    cache_dir = tmp_path / "cache"
    first = CarvanaDataset(root, img_size=SIZE, cache="disk", cache_dir=cache_dir)
    cache_file = cache_dir / "carvana_32x48.pt"
    assert cache_file.is_file()
    assert not list(cache_dir.glob("*.tmp"))
    stored = torch.load(cache_file, weights_only=True)
    assert stored["names"] == first.names and list(stored["img_size"]) == [32, 48]

    messages = Messages()
    second = CarvanaDataset(root, img_size=SIZE, cache="disk", cache_dir=cache_dir, log=messages)
    assert messages.mention("loaded 6") and not messages.mention("cached")
    assert second.batched and second.names == first.names and second.groups == first.groups
    assert torch.equal(second.images, first.images) and torch.equal(second.masks, first.masks)

    # A cache file that holds another size is rebuilt, with the reason in the log.
    shutil.copy(cache_file, cache_dir / "carvana_16x24.pt")
    messages = Messages()
    smaller = CarvanaDataset(root, img_size=(16, 24), cache="disk", cache_dir=cache_dir,
                             log=messages)
    assert messages.mention("rebuilding") and messages.mention("size")
    assert smaller.images.shape == (6, 3, 16, 24)
    stored = torch.load(cache_dir / "carvana_16x24.pt", weights_only=True)
    assert list(stored["img_size"]) == [16, 24]

    # Removing an image changes the names, so the cache is rebuilt too.
    (root / "train" / f"{first.names[0]}.jpg").unlink()
    messages = Messages()
    fewer = CarvanaDataset(root, img_size=SIZE, cache="disk", cache_dir=cache_dir, log=messages)
    assert messages.mention("rebuilding") and messages.mention("1 removed")
    assert len(fewer) == 5 and fewer.images.shape[0] == 5


def test_disk_cache_defaults_to_root_and_remembers_skipped(root):
    broken = sorted((root / "train").iterdir())[0]
    truncate_after_header(broken)
    CarvanaDataset(root, img_size=SIZE, cache="disk", skip_bad=True, log=Messages())
    assert (root / ".cache" / "carvana_32x48.pt").is_file()
    messages = Messages()
    reloaded = CarvanaDataset(root, img_size=SIZE, cache="disk", skip_bad=True, log=messages)
    assert messages.mention("loaded 5")
    assert reloaded.skipped == [broken.stem] and len(reloaded) == 5
    # Without skip_bad the bad file must be reported, not hidden by the old cache.
    with pytest.raises(UserError, match=broken.name):
        CarvanaDataset(root, img_size=SIZE, cache="disk", log=Messages())


def test_carvana_images_for_prediction(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("RGB", (50, 30), (200, 10, 10)).save(folder / "b_01.jpg")
    Image.new("RGB", (20, 10), (10, 200, 10)).save(folder / "a_01.png")
    (folder / ".DS_Store").write_text("hidden files are left out")
    images = CarvanaImages(folder, img_size=(8, 12))
    assert images.names == ["a_01.png", "b_01.jpg"]
    item = images[1]
    assert item["readable"] and item["image"].dtype == torch.uint8 and item["image"].shape == (3, 8, 12)
    assert item["size"].tolist() == [30, 50]
    assert images[0]["size"].tolist() == [10, 20]
    assert CarvanaImages(folder, img_size=(8, 12)).starting_at(1).names == ["b_01.jpg"]


def test_carvana_images_report_other_files_and_undecodable_images(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("RGB", (20, 10)).save(folder / "a_01.jpg")
    (folder / "b_01.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="notes.txt is not an image"):
        CarvanaImages(folder, img_size=(8, 12))
    messages = Messages()
    images = CarvanaImages(folder, img_size=(8, 12), skip_bad=True, log=messages)
    assert images.names == ["a_01.jpg", "b_01.jpg"] and images.skipped_files == ["notes.txt"]
    assert any("notes.txt" in message for message in messages)
    broken = images[1]
    assert not broken["readable"] and broken["image"].shape == (3, 8, 12) and not broken["image"].any()
    assert broken["size"].tolist() == [0, 0]


def test_carvana_images_missing_or_empty_folder(tmp_path):
    with pytest.raises(UserError, match="missing"):
        CarvanaImages(tmp_path / "missing", img_size=SIZE)
    with pytest.raises(UserError, match="no .jpg"):
        CarvanaImages(tmp_path, img_size=SIZE)


def test_synthetic_data_is_deterministic_and_documented(tmp_path):
    first = write_carvana(tmp_path / "first", n_cars=2, views=2, size=SIZE, seed=9)
    second = write_carvana(tmp_path / "second", n_cars=2, views=2, size=SIZE, seed=9)
    assert "synthetic" in (first / "README.txt").read_text().lower()
    first_files = sorted(path.relative_to(first) for path in first.rglob("*.*"))
    assert first_files == sorted(path.relative_to(second) for path in second.rglob("*.*"))
    for relative in first_files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    names = sorted(path.stem for path in (first / "train").iterdir())
    assert all(name[-3:] in ("_01", "_02") for name in names)
    with Image.open(first / "train" / f"{names[0]}.jpg") as image:
        assert image.size == (48, 32) and image.mode == "RGB"


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_reading_the_data_leaves_the_global_random_state_alone(tmp_path, cache):
    root = write_carvana(tmp_path / "data", n_cars=2, views=2, size=SIZE, seed=3)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    CarvanaDataset(root, img_size=SIZE, cache=cache, log=Messages())
    assert torch.equal(torch.get_rng_state(), before)
