"""What the Captioner needs of a backend: encode images once, then start a decoding session that
the one search (decoding.py) drives through ``Session.step`` / ``Session.reorder``. The torch and
ONNX Runtime backends satisfy it; a new backend is a class with these members."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..checkpoint import ModelDims
from ..decoding import Session, prompt_positions


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


class NumpySession:
    """The prefill and the step of a session whose graph takes numpy token ids and positions and
    keeps its own caches (ONNX Runtime, TensorFlow): a subclass supplies ``_run(tokens, positions,
    new_valid) -> logits`` and ``reorder``, and calls ``_prefill`` once from its constructor."""

    def _run(self, tokens: np.ndarray, positions: np.ndarray, new_valid: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _prefill(self, prompts: np.ndarray, valid: np.ndarray) -> None:
        positions, self.next_pos = prompt_positions(valid)
        self.start = 0  # cache slots filled so far
        self.first_logits = self._run(prompts.astype(np.int64), positions, valid)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        rows = tokens.shape[0]
        logits = self._run(tokens.reshape(rows, 1).astype(np.int64), self.next_pos[:, None],
                           np.ones((rows, 1), dtype=bool))
        self.next_pos = self.next_pos + 1
        return logits
