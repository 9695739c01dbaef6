"""What every benchmark writes: its command line and its runs, as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_runs(path: Path, module: str, rows: list[dict[str, Any]]) -> None:
    command = " ".join(["python -m", module, *sys.argv[1:]])
    path.write_text(json.dumps({"command": command, "runs": rows}, indent=2) + "\n",
                    encoding="utf-8")
