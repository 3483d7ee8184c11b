"""Small file helpers shared by the checkpoint manifest and the weight loaders."""

from __future__ import annotations

import hashlib


def sha256(path: str, block_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()
