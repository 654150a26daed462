"""What the Captioner needs of a backend: encode images once, then start a decoding session that
the one search (decoding.py) drives through ``Session.step`` / ``Session.reorder``. The torch and
ONNX Runtime backends satisfy it; a new backend is a class with these members."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..checkpoint import ModelDims
from ..decoding import Session


@runtime_checkable
class Backend(Protocol):
    name: str  # "torch", "onnx", ...
    dims: ModelDims  # the loaded model's shapes (vocabulary, positions, image size)
    ops: Any  # the array ops (arrays.py) the search computes with on this backend's arrays

    def encode(self, pixels: np.ndarray) -> Any:
        """(images, 3, H, W) float32 pixels -> image memory (cross-attention keys/values), once per image."""
        ...

    def start(self, memory: Any, group: int, prompts: np.ndarray, valid: np.ndarray,
              max_new: int) -> tuple[Session, Any]:
        """Prefill (images x group) prompt rows over ``memory``; -> the session and the first logits."""
        ...

    def info(self) -> dict[str, Any]:
        """What ``blipcap bench`` reports about it: backend, device, dtype, ..."""
        ...
