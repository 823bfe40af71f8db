"""Run directories (never overwritten), environment records, and safe checkpoint files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper_core.errors import CheckpointError

CHECKPOINT_FORMAT = "esper-checkpoint"
CHECKPOINT_VERSION = 3

CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
EVENTS_FILE = "events.jsonl"
DISCARDED_EVENTS_FILE = "events.discarded.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "run"


def create_run_dir(
    output_dir: Path, task: str, name: str, seed: int, now: _dt.datetime | None = None, *, checkpoints: bool = True
) -> Path:
    """Make ``{output_dir}/{task}__{name}__{seed}__{time}``; a clash gets a ``-2``, ``-3`` suffix."""
    now = now or _dt.datetime.now()
    stem = f"{_slug(task)}__{_slug(name)}__{seed}__{now.strftime('%Y%m%d-%H%M%S')}"
    output_dir.mkdir(parents=True, exist_ok=True)
    candidate = output_dir / stem
    suffix = 2
    while True:
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            candidate = output_dir / f"{stem}-{suffix}"
            suffix += 1
    if checkpoints:
        (candidate / CHECKPOINT_DIR).mkdir()
    return candidate


def environment_record(seed: int, versions: dict[str, str | None], device: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "argv": sys.argv,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- reproducibility ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """One seed drives python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (run seed, round, env, ...), independent of global RNGs."""
    words = np.random.SeedSequence([int(part) for part in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & 0x7FFF_FFFF_FFFF_FFFF


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch global RNG states as checkpoint-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])


# -- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a kill mid-write never corrupts the last checkpoint."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing, corrupt or foreign file raises ``CheckpointError``."""
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # parse boundary: garbage bytes raise arbitrary errors inside the unpickler
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint '{path}' is corrupt or unsafe to load: {first_line}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint '{path}' was not written by Esper (no '{CHECKPOINT_FORMAT}' marker)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has format version {payload.get('version')}, this Esper reads {CHECKPOINT_VERSION}"
        )
    return payload
