"""Puts the plugin's folder on ``sys.path``, so its tests run from the source tree before it is installed."""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN_ROOT = str(Path(__file__).resolve().parents[1])
if PLUGIN_ROOT not in sys.path:
    sys.path.insert(0, PLUGIN_ROOT)
