"""Repository-wide pytest setup: one torch thread per test process (tiny models; xdist supplies parallelism)."""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("ESPER_TEST_TORCH_THREADS", "1")))
