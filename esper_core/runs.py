"""Run directories (never overwritten), environment records, and safe checkpoint files."""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import random
import re
import sys
import unicodedata
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from esper_core.errors import CheckpointError, ConfigError, RunLocked

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CONFIG_FILE",
    "DISCARDED_EVENTS_FILE",
    "ENVIRONMENT_FILE",
    "EVENTS_FILE",
    "LATEST_CHECKPOINT",
    "LEGACY_CHECKPOINT_VERSION",
    "LOCK_FILE",
    "SUMMARY_FILE",
    "RunLock",
    "check_output_dir",
    "create_run_dir",
    "derive_seed",
    "environment_record",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "slug",
    "write_json",
]

CHECKPOINT_FORMAT = "esper-checkpoint"
#: 4: the file is a header line carrying the sha256 of the torch-serialized payload that follows it
CHECKPOINT_VERSION = 4
#: version 3 files (a bare torch file, no content hash) are still read, e.g. shipped policy files
LEGACY_CHECKPOINT_VERSION = 3
_HEADER_PREFIX = b"esper-checkpoint "

CONFIG_FILE = "config.toml"
ENVIRONMENT_FILE = "environment.json"
EVENTS_FILE = "events.jsonl"
DISCARDED_EVENTS_FILE = "events.discarded.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"
LOCK_FILE = "run.lock"

#: anything but letters and digits (any script), ``_``, ``.`` and ``-`` becomes ``-`` in a directory name
_UNSAFE = re.compile(r"[^\w.-]+")
_SLUG_LENGTH = 64


def slug(text: str) -> str:
    """A file-name-safe form of ``text``: unicode letters and digits kept (NFC), no separators, no dot-only names."""
    slug = _UNSAFE.sub("-", unicodedata.normalize("NFC", text)).strip("-.")[:_SLUG_LENGTH].strip("-.")
    return slug or "run"


def create_run_dir(
    output_dir: Path, task: str, name: str, seed: int, now: _dt.datetime | None = None, *, checkpoints: bool = True
) -> Path:
    """Make ``{output_dir}/{task}__{name}__{seed}__{time}``; a clash gets a ``-2``, ``-3`` suffix."""
    now = now or _dt.datetime.now()
    stem = f"{slug(task)}__{slug(name)}__{seed}__{now.strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(output_dir)
    try:
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
    except OSError as exc:
        raise ConfigError([f"[run] output_dir: cannot create a run directory in '{output_dir}': {_os_reason(exc)}"]) from None
    return candidate


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_output_dir(output_dir: Path) -> None:
    """Raise ConfigError (one line) unless run directories can be created under ``output_dir``: it, or the
    nearest folder above it that exists, must be a writable directory. Nothing is created."""
    output_dir = Path(output_dir)
    where = f"[run] output_dir: '{output_dir}'"
    existing = output_dir
    while not existing.exists():
        if existing.is_symlink():
            raise ConfigError([f"{where}: '{existing}' is a broken symbolic link"])
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if not existing.is_dir():
        if existing == output_dir:
            raise ConfigError([f"{where} is a file, not a directory"])
        raise ConfigError([f"{where} cannot be created: '{existing}' is a file, not a directory"])
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == output_dir else f"cannot be created: '{existing}' is not writable"
        raise ConfigError([f"{where} {what}"])


class RunLock:
    """An exclusive lock on a run directory for the lifetime of a run or a resume.

    ``fcntl.flock`` on ``run.lock`` inside the directory, which holds the owner's PID. The kernel
    drops the lock when the process dies however it dies (SIGKILL included), so a stale lock file never
    blocks a resume. The file is never deleted (deleting it would let two processes lock two files).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        try:
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(f"cannot lock run directory '{self.path.parent}': {_os_reason(exc)}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                handle.close()
                raise CheckpointError(f"cannot lock run directory '{self.path.parent}': {_os_reason(exc)}") from None
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLocked(
                f"run directory '{self.path.parent}' is in use by process {holder} (another `esper run` or "
                "`--resume`); wait for it to end, or stop that process first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._handle is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


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
    """Write atomically (temp file, fsync, rename) so a kill mid-write never corrupts the last checkpoint.

    The file is one header line, ``esper-checkpoint 4 sha256:<hex>``, then the torch-serialized payload
    whose sha256 the header carries; ``load_checkpoint`` verifies it before unpickling anything."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = _HEADER_PREFIX + f"{CHECKPOINT_VERSION} sha256:{hashlib.sha256(body).hexdigest()}\n".encode("ascii")
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(header)
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify the content hash, then load with ``weights_only=True`` (tensors and plain values only).

    A missing, damaged, corrupt, unsafe or foreign file raises ``CheckpointError`` (one line). Version 3
    files (no header, no hash) are read as they are."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {_os_reason(exc)}") from None
    expected_version = LEGACY_CHECKPOINT_VERSION
    if data.startswith(_HEADER_PREFIX):
        header, _, body = data.partition(b"\n")
        match = re.fullmatch(rb"esper-checkpoint (\d+) sha256:([0-9a-f]{64})", header)
        if match is None:
            raise CheckpointError(f"checkpoint '{path}' is damaged: its header line is not readable")
        expected_version = int(match.group(1))
        if expected_version != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"checkpoint '{path}' has format version {expected_version}, this Esper reads "
                f"{CHECKPOINT_VERSION} (and {LEGACY_CHECKPOINT_VERSION})"
            )
        if hashlib.sha256(body).hexdigest() != match.group(2).decode("ascii"):
            raise CheckpointError(
                f"checkpoint '{path}' is damaged: its content does not match the sha256 recorded when it was "
                "written (changed or truncated since)"
            )
        data = body
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # parse boundary: garbage bytes raise arbitrary errors inside the unpickler
        raise CheckpointError(f"checkpoint '{path}' is corrupt or unsafe to load: {_unpickling_reason(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint '{path}' was not written by Esper (no '{CHECKPOINT_FORMAT}' marker)")
    if payload.get("version") != expected_version:
        raise CheckpointError(
            f"checkpoint '{path}' has format version {payload.get('version')}, this Esper reads {CHECKPOINT_VERSION}"
        )
    return payload


def _unpickling_reason(exc: Exception) -> str:
    """What torch's loader objected to, without its advice to load unsafely (Esper never does)."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", text, re.DOTALL)
    if match is not None:
        reason = " ".join(match.group(1).split())
        return f"it holds something other than tensors and plain values ({reason})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first or "weights_only" in first:
        return type(exc).__name__
    return first
