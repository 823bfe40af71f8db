"""Tests of the ``cifar10`` task on a small folder written here in torchvision's pickle format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from esper_core.errors import DataError
from esper_core.tasks import TaskContext
from esper_core.testing import check_task_kind, registered_records
from esper_vision import plugin
from esper_vision.cifar10 import FOLDER_NAME, Cifar10Config, build_cifar10

IMAGES_PER_BATCH = 20
CPU = torch.device("cpu")


def _write_pickle(path: Path, content: object, protocol: int = 2) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=protocol)


def write_cifar_folder(
    root: Path, images_per_batch: int = IMAGES_PER_BATCH, protocol: int = 2, keys: str = "bytes"
) -> Path:
    """A tiny CIFAR-10 copy under ``root/cifar-10-batches-py``; image i of batch b has pixels b*20 + i.

    ``keys="bytes"`` writes byte-string keys and names (the files as Python 2 wrote them);
    ``keys="str"`` writes ``str`` keys and names, as Python 3 writes them and torchvision reads them.
    """
    text = (lambda value: value.encode()) if keys == "bytes" else (lambda value: value)
    folder = root / FOLDER_NAME
    folder.mkdir(parents=True)
    names = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
    for batch_index, name in enumerate(names):
        values = batch_index * images_per_batch + np.arange(images_per_batch)
        data = np.repeat(values.astype(np.uint8)[:, None], 3072, axis=1)
        data[:, :1024] //= 2  # make the channels differ
        labels = [int(value % 10) for value in values]
        content = {text("batch_label"): text(name), text("labels"): labels, text("data"): data,
                   text("filenames"): [text(f"{value}.png") for value in values]}
        _write_pickle(folder / name, content, protocol)
    meta = {text("num_cases_per_batch"): images_per_batch, text("num_vis"): 3072,
            text("label_names"): [text(name) for name in ("airplane", "automobile", "bird", "cat", "deer",
                                                           "dog", "frog", "horse", "ship", "truck")]}
    _write_pickle(folder / "batches.meta", meta, protocol)
    return folder


CIFAR10 = registered_records(plugin, "tasks")["cifar10"]


@pytest.mark.parametrize("keys", ["bytes", "str"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_passes_conformance_on_a_generated_folder(tmp_path: Path, protocol: int, keys: str) -> None:
    write_cifar_folder(tmp_path, protocol=protocol, keys=keys)
    task = check_task_kind(CIFAR10, config=Cifar10Config(root=str(tmp_path)))
    assert task.info.input_shape == (3, 32, 32)
    assert task.info.num_classes == 10
    assert task.info.train_size == 5 * IMAGES_PER_BATCH
    assert task.info.val_size == IMAGES_PER_BATCH
    assert task.train_inputs.dtype == torch.float32


def test_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    from_parent = build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
    from_folder = build_cifar10(Cifar10Config(root=str(folder)), TaskContext(device=CPU, seed=0))
    assert torch.equal(from_parent.train_inputs, from_folder.train_inputs)
    assert torch.equal(from_parent.val_targets, from_folder.val_targets)


def test_training_images_are_normalised_per_channel(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path)
    task = build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
    mean = task.train_inputs.mean(dim=(0, 2, 3))
    std = task.train_inputs.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(std, torch.ones(3), atol=1e-4)


def test_limits_keep_the_first_images_in_file_order(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path)
    config = Cifar10Config(root=str(tmp_path), train_limit=25, val_limit=7)
    task = build_cifar10(config, TaskContext(device=CPU, seed=0))
    assert task.info.train_size == 25 and task.info.val_size == 7
    # images 0..24 are batch 1 (pixels 0..19) then the first five of batch 2 (pixels 20..24)
    assert task.train_targets.tolist() == [value % 10 for value in range(25)]
    assert task.val_targets.tolist() == [value % 10 for value in range(100, 107)]
    raw_blue = task.train_inputs[:, 2, 0, 0]
    assert bool((raw_blue[1:] > raw_blue[:-1]).all())


def test_a_limit_beyond_the_files_is_a_data_error(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path)
    with pytest.raises(DataError, match="asked for 500 images"):
        build_cifar10(Cifar10Config(root=str(tmp_path), train_limit=500), TaskContext(device=CPU, seed=0))


def test_missing_folder_names_the_path_and_says_nothing_is_downloaded(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as raised:
        build_cifar10(Cifar10Config(root=str(missing)), TaskContext(device=CPU, seed=0))
    message = str(raised.value)
    assert str(missing) in message
    assert FOLDER_NAME in message and "data_batch_1" in message
    assert "never downloads" in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3;") as raised:
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
    assert str(folder) in str(raised.value)


def test_parent_without_the_batches_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"'{tmp_path}' lacks data_batch_1"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_batch_file_is_named(tmp_path: Path, damage: str) -> None:
    folder = write_cifar_folder(tmp_path)
    target = folder / "data_batch_2"
    content = target.read_bytes()
    replacement = {"truncate": content[: len(content) // 2], "garbage": b"not a pickle at all", "empty": b""}
    target.write_bytes(replacement[damage])
    with pytest.raises(DataError, match="data_batch_2") as raised:
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
    assert "corrupt" in str(raised.value)


def test_batch_with_wrong_layout_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    _write_pickle(folder / "test_batch", {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DataError, match=r"test_batch.*expected uint8 \(N, 3072\)"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
    _write_pickle(folder / "test_batch", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 12]})
    with pytest.raises(DataError, match="test_batch.*labels outside"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))


class _RunsCode:
    """Pickles to a call of os.getpid: a data file must never be able to call anything."""

    def __reduce__(self) -> tuple:
        return (os.getpid, ())


def test_pickle_that_would_call_code_is_refused(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    _write_pickle(folder / "data_batch_1", {b"data": _RunsCode(), b"labels": []})
    with pytest.raises(DataError, match="data_batch_1.*posix.getpid|data_batch_1.*getpid"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))


def test_meta_without_ten_label_names_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    _write_pickle(folder / "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(DataError, match="batches.meta"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))


def test_str_keyed_and_bytes_keyed_folders_give_the_same_task(tmp_path: Path) -> None:
    from esper_vision.cifar10 import META_FILE, locate_folder, read_label_names

    write_cifar_folder(tmp_path / "py2", keys="bytes")
    write_cifar_folder(tmp_path / "py3", keys="str")
    context = TaskContext(device=CPU, seed=0)
    from_bytes = build_cifar10(Cifar10Config(root=str(tmp_path / "py2")), context)
    from_str = build_cifar10(Cifar10Config(root=str(tmp_path / "py3")), context)
    assert torch.equal(from_bytes.train_inputs, from_str.train_inputs)
    assert torch.equal(from_bytes.val_targets, from_str.val_targets)
    names = read_label_names(locate_folder(str(tmp_path / "py3")) / META_FILE)
    assert names[0] == "airplane" and names[-1] == "truck"


def test_str_keyed_pickle_that_would_call_code_is_still_refused(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path, keys="str")
    _write_pickle(folder / "data_batch_1", {"data": _RunsCode(), "labels": []})
    with pytest.raises(DataError, match="data_batch_1.*getpid"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))


def test_str_keyed_meta_without_ten_label_names_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path, keys="str")
    _write_pickle(folder / "batches.meta", {"label_names": ["cat", "dog"]})
    with pytest.raises(DataError, match="batches.meta': 'label_names' is not a list of 10 names"):
        build_cifar10(Cifar10Config(root=str(tmp_path)), TaskContext(device=CPU, seed=0))
