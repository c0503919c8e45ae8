"""What "these files are unchanged" compares: each file's sha256, by name."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_by_name(paths: list[Path]) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}
