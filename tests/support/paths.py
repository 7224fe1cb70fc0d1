"""Where things are: the repository, its Python, the tools `make test` installs."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PY = sys.executable

TOOLS = REPO / ".tools"
