"""Tests for state/checkpoint.py and utils/atomic.py: atomic saves, safe loading and loading weights."""
import json
import os
import pickle
import re

import pytest
import torch
from torch import nn

from state.checkpoint import load_checkpoint, load_weights, strip_wrapper_prefixes, weights_of
from utils.atomic import save_atomic, write_json_atomic
from utils.errors import UserError


def _checkpoint():
    return {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}, "epoch": 3,
            "best": 0.25, "name": "run", "history": [1.5, None, (2, "x")], "flags": {"amp": False}}


def test_save_and_load_round_trip_without_temp_files(tmp_path):
    path = tmp_path / "last_ckpt.pth"
    save_atomic(_checkpoint(), path)
    save_atomic({**_checkpoint(), "epoch": 4}, path)  # overwrite in place
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4
    assert loaded["best"] == 0.25 and loaded["name"] == "run" and loaded["flags"] == {"amp": False}
    assert loaded["history"] == [1.5, None, (2, "x")]
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(loaded["model"]["b"], torch.tensor([1, 2]))
    assert [p.name for p in tmp_path.iterdir()] == ["last_ckpt.pth"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "hook": lambda: None}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    with pytest.raises(UserError, match="could not write"):
        save_atomic({"epoch": 1}, tmp_path / "missing" / "ckpt.pth")


def test_write_json_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic({"accuracy": 0.5, "dir": tmp_path}, path)
    assert path.read_text().endswith("\n")
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "dir": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "pickle_dump", "torch_save_nested"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = _RunsCommand(f"touch {marker}")
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save(payload, path)
    elif writer == "torch_save_nested":
        torch.save({"model": {"w": torch.zeros(1)}, "extra": payload}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere.pth")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match="empty.pth"):
        load_checkpoint(tmp_path / "empty.pth")
    save_atomic({"w": torch.ones(100)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pth"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth")


@pytest.mark.parametrize("text", ['{"epoch": 3}\n', "x"])
def test_json_and_short_text_files_are_user_errors(tmp_path, text):
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(UserError, match="notes.pth"):
        load_checkpoint(path)


@pytest.mark.parametrize("text", ["hello world\n", "this is not a checkpoint\n", "epoch: 3\n"])
def test_plain_text_file_is_a_user_error(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(UserError):
        load_checkpoint(path)


def test_strip_wrapper_prefixes():
    assert strip_wrapper_prefixes({"module.a": 1, "module.e.module.f": 2}) == {"a": 1, "e.module.f": 2}
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1, "module._orig_mod.b": 2}) == {"a": 1, "b": 2}
    assert strip_wrapper_prefixes({"_orig_mod.module.a": 1}) == {"a": 1}
    # A prefix that only some keys carry is a name, not a wrapper.
    assert strip_wrapper_prefixes({"module.a": 1, "modules.g": 2}) == {"module.a": 1, "modules.g": 2}


def _small_model(seed, hidden=3, extra_layer=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2)]
    if extra_layer:
        layers.append(nn.Linear(2, 2))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_load_weights_strips_wrapper_prefixes(prefix, restore_global_rng):
    source = _small_model(0)
    wrapped = {prefix + key: value for key, value in source.state_dict().items()}
    target = _small_model(1)
    load_weights(target, wrapped, "ckpt.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_weights_refuses_another_architecture(restore_global_rng):
    source = _small_model(0).state_dict()
    source["extra.weight"] = torch.zeros(2)
    target = _small_model(1, hidden=5, extra_layer=True)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(UserError) as error:
        load_weights(target, source, "other.pth")
    message = str(error.value)
    assert "other.pth" in message
    assert re.search(r"missing: 3\.weight, 3\.bias", message)
    assert re.search(r"unexpected: extra\.weight", message)
    assert re.search(r"shape mismatch: 0\.weight \(3, 4\) vs \(5, 4\)", message)
    assert "2.weight (2, 3) vs (2, 5)" in message
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


def test_load_weights_partial_loads_what_fits(restore_global_rng):
    source = _small_model(0, hidden=3).state_dict()
    source = {"module." + key: value for key, value in source.items()}
    target = _small_model(1, hidden=3, extra_layer=True)
    target[2] = nn.Linear(3, 7)
    target[3] = nn.Linear(7, 2)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    messages = []
    load_weights(target, source, "ckpt.pth", partial=True, log=messages.append)
    loaded = target.state_dict()
    assert torch.equal(loaded["0.weight"], source["module.0.weight"])
    assert torch.equal(loaded["0.bias"], source["module.0.bias"])
    for key in ("2.weight", "2.bias", "3.weight", "3.bias"):
        assert torch.equal(loaded[key], before[key])
    assert len(messages) == 1 and "2.weight" in messages[0] and "3.bias" in messages[0]


def test_load_weights_into_a_model_with_a_submodule_named_module(restore_global_rng):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    torch.manual_seed(0)
    source, target = Wrapped(), Wrapped()
    load_weights(target, source.state_dict(), "ckpt.pth")
    assert torch.equal(target.module.weight, source.module.weight)


def test_weights_of_finds_the_state_dict():
    weights = {"w": torch.zeros(1)}
    assert weights_of({"model": weights, "epoch": 1}) is weights
    assert weights_of({"state_dict": weights}) is weights
    assert weights_of(weights) is weights
    with pytest.raises(UserError, match="no model weights"):
        weights_of({"epoch": 1})


def test_a_json_file_is_not_reported_as_unsafe(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"options": {"lr": 0.001}}\n')
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "config.json" in message and "not a readable checkpoint" in message
    assert "other than tensors" not in message and "weights_only" not in message


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_permissions_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_atomic({"w": torch.ones(2)}, tmp_path / "a.pth")
        write_json_atomic({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(previous)
    for name in ("a.pth", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
