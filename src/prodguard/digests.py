"""Content digests of frames and documents (lineage, idempotent batch ids)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd


def frame_digest(frame: pd.DataFrame) -> str:
    """sha256 over column names and row contents (index ignored)."""
    hasher = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    if not frame.empty:
        hasher.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return hasher.hexdigest()


def document_digest(document: Any) -> str:
    """sha256 of a JSON-serialisable document in canonical form (sorted keys)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
