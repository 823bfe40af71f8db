"""The ``cifar10`` task: CIFAR-10 read from a local folder in torchvision's python format (never downloaded)."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import numpy as np
import torch

from esper_core.config import path_field
from esper_core.errors import DataError
from esper_core.tasks import TaskContext, TensorClassificationTask
from esper_core.validators import int_in_range, optional
from esper_vision.augment import RandomCropFlip
from esper_vision.image_task import build_image_task

TASK_NAME = "cifar10"
NUM_CLASSES = 10
CHANNELS = 3
IMAGE_SIDE = 32
PIXELS_PER_IMAGE = CHANNELS * IMAGE_SIDE * IMAGE_SIDE
CROP_PADDING = 4

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
FULL_TRAIN_SIZE = 50_000
FULL_TEST_SIZE = 10_000

_EXPECTED_LAYOUT = (
    f"expected torchvision's python format: <root>/{FOLDER_NAME}/ holding "
    f"data_batch_1..data_batch_5, {TEST_FILE} and {META_FILE}. Esper never downloads datasets at "
    f"run time; put the files there first and point [task] root at them"
)


def _optional_limit(maximum: int) -> Any:
    return optional(int_in_range(1, maximum))


@attrs.frozen
class Cifar10Config:
    """Options of the ``cifar10`` task.

    ``root`` is the folder that contains ``cifar-10-batches-py`` or that folder itself. The training
    split is ``data_batch_1..5`` and the validation split is ``test_batch``. ``train_limit`` and
    ``val_limit`` keep the first N images of each split in file order (deterministic; the batches
    are already shuffled, so the classes stay roughly balanced).
    """

    root: str = path_field(default="data")
    train_limit: int | None = attrs.field(default=None, validator=_optional_limit(FULL_TRAIN_SIZE))
    val_limit: int | None = attrs.field(default=None, validator=_optional_limit(FULL_TEST_SIZE))


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle needs: numpy's array rebuild functions (under every module
    name numpy has used) and ``_codecs.encode``, which Python 3 writes for bytes at protocol 2."""
    reconstruct = np.zeros(1).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = from_buffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays and nothing else, so a data file cannot call code."""

    _ALLOWED = _allowed_globals()

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__(handle, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR-10 batch never does") from None


def locate_folder(root: str) -> Path:
    """The ``cifar-10-batches-py`` folder for ``root``; ``DataError`` when it or any required file is missing."""
    root_path = Path(root).expanduser()
    nested = root_path / FOLDER_NAME
    folder = nested if nested.is_dir() else root_path
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder '{root_path}' does not exist; {_EXPECTED_LAYOUT}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder '{folder}' lacks {', '.join(missing)}; {_EXPECTED_LAYOUT}")
    return folder


def _key_text(key: Any) -> Any:
    """A pickle key as text: Python 2 wrote CIFAR-10's keys as byte strings, Python 3 writes ``str``."""
    return key.decode("latin-1") if isinstance(key, bytes) else key


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR-10 pickle's dict through the allow-list unpickler, with ``bytes`` or ``str`` keys read as ``str``."""
    try:
        with open(path, "rb") as handle:
            content = _NumpyOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError,
            RecursionError, MemoryError) as exc:
        raise DataError(f"CIFAR-10 file '{path}' is corrupt or not a CIFAR-10 pickle: {exc}") from None
    except OSError as exc:
        raise DataError(f"CIFAR-10 file '{path}' cannot be read: {exc.strerror or exc}") from None
    if not isinstance(content, dict):
        raise DataError(f"CIFAR-10 file '{path}' holds a {type(content).__name__}, expected a dict")
    return {_key_text(key): value for key, value in content.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) from one batch file; ``DataError`` names a bad file."""
    content = _unpickle(path)
    if "data" not in content or "labels" not in content:
        raise DataError(f"CIFAR-10 file '{path}' lacks 'data' or 'labels' (keys: {sorted(map(str, content))})")
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 file '{path}': 'data' is {described}, expected uint8 (N, {PIXELS_PER_IMAGE})")
    try:
        labels = np.asarray(content["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"CIFAR-10 file '{path}': 'labels' is not a list of integers ({exc})") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 file '{path}': {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"CIFAR-10 file '{path}': labels outside 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, CHANNELS, IMAGE_SIDE, IMAGE_SIDE), labels


def read_label_names(path: Path) -> list[str]:
    """The ten class names from ``batches.meta`` (byte strings or ``str``); ``DataError`` names the file
    when they are not there."""
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"CIFAR-10 file '{path}': 'label_names' is not a list of {NUM_CLASSES} names")
    try:
        return [name.decode("utf-8") if isinstance(name, bytes) else name for name in names]
    except UnicodeDecodeError as exc:
        raise DataError(f"CIFAR-10 file '{path}': a label name is not UTF-8 ({exc})") from None


def read_split(folder: Path, file_names: tuple[str, ...], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (all when None) images of ``file_names`` in order; reads only the files needed."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for name in file_names:
        if limit is not None and count >= limit:
            break
        batch_images, batch_labels = read_batch(folder / name)
        images.append(batch_images)
        labels.append(batch_labels)
        count += batch_images.shape[0]
    if limit is not None and count < limit:
        raise DataError(
            f"CIFAR-10 folder '{folder}': asked for {limit} images from {', '.join(file_names)}, they hold {count}"
        )
    stacked_images = np.concatenate(images)[:limit]
    stacked_labels = np.concatenate(labels)[:limit]
    return stacked_images, stacked_labels


def _to_unit_float(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(images).to(torch.float32)
    return tensor.div_(255.0)


def build_cifar10(config: Cifar10Config, context: TaskContext) -> TensorClassificationTask:
    """The ``cifar10`` task on ``context.device``, from the files under ``config.root``."""
    folder = locate_folder(config.root)
    read_label_names(folder / META_FILE)
    train_images, train_labels = read_split(folder, TRAIN_FILES, config.train_limit)
    val_images, val_labels = read_split(folder, (TEST_FILE,), config.val_limit)
    return build_image_task(
        name=TASK_NAME,
        train_images=_to_unit_float(train_images),
        train_labels=torch.from_numpy(train_labels),
        val_images=_to_unit_float(val_images),
        val_labels=torch.from_numpy(val_labels),
        num_classes=NUM_CLASSES,
        device=context.device,
        augmentation=lambda border: RandomCropFlip(CROP_PADDING, border),
    )
