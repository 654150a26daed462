"""The TensorFlow backend: builds tf_model.py's model from a checkpoint and runs encode/prefill/step.

Weights come from model.safetensors, tf_model.h5 (as transformers 4.x's TF BLIP saves it) or
pytorch_model.bin, through one strict mapping (tf_weights.py). Decoding state lives in `TFSession`:
the preallocated self-attention cache as tf.Variables (written in place with the new keys/values
each step, rows gathered for beams), and in numpy the rows' next positions and their filled-slot
mask. The search runs on numpy at the boundary (NumpyOps, as for ONNX Runtime): `decoding.py`
writes into its arrays in place, which tf.Tensors do not allow, and handing it the (rows, vocab)
logits as numpy costs 0.43 ms a step for BLIP-large's 24 beam rows, ~0.1% of a decoder step
(benchmarks/bench_tf_search.py, BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import NumpyOps
from ..checkpoint import ModelDims
from .base import NumpySession


def tensorflow():
    """TensorFlow, imported on first use; a one-line error naming the extra when it is missing."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("the TensorFlow backend requires tensorflow: pip install 'blipcap[tf]'") from None
    return tf


class TFSession(NumpySession):
    """One batch of images being decoded."""

    def __init__(self, backend: "TFBackend", memory: tuple[Any, Any], group: int, prompts: np.ndarray,
                 valid: np.ndarray, max_new: int):
        tf = backend.tf
        self.backend, self.memory, self.group = backend, memory, group
        self.ops = backend.ops
        t = backend.dims.text
        rows, p = prompts.shape
        length = t.check_length(p, max_new)
        shape = (t.layers, rows, t.heads, length, t.hidden // t.heads)
        self.keys = tf.Variable(tf.zeros(shape), trainable=False)  # written in place, slot by slot
        self.values = tf.Variable(tf.zeros(shape), trainable=False)
        self.filled = np.zeros((rows, length), dtype=bool)
        self._prefill(prompts, valid)

    def _run(self, tokens: np.ndarray, positions: np.ndarray, new_valid: np.ndarray) -> np.ndarray:
        logits, new_k, new_v = self.backend.model.decode(tokens, positions, new_valid, self.filled, self.keys,
                                                         self.values, *self.memory)
        end = self.start + tokens.shape[1]
        self.keys[:, :, :, self.start : end].assign(new_k)
        self.values[:, :, :, self.start : end].assign(new_v)
        self.filled[:, self.start : end] = new_valid
        self.start = end
        return logits.numpy()

    def reorder(self, rows: np.ndarray) -> None:
        # beams of one image share positions and padding, so only the caches move
        tf = self.backend.tf
        self.keys.assign(tf.gather(self.keys, rows, axis=1))
        self.values.assign(tf.gather(self.values, rows, axis=1))


class TFBackend:
    name = "tf"

    def __init__(self, model: Any, dims: ModelDims):
        self.tf = tensorflow()
        self.model, self.dims = model, dims
        self.ops = NumpyOps()

    @classmethod
    def load(cls, model_dir: str | Path, dims: ModelDims, device: str = "auto", dtype: str = "auto") -> "TFBackend":
        tf = tensorflow()
        if dtype not in ("auto", "float32"):
            raise ValueError(f"the TensorFlow backend runs float32; got dtype={dtype!r}")
        if device not in ("auto", "cpu"):
            raise ValueError(f"the TensorFlow backend runs on the CPU (tensorflow-cpu); got device={device!r}")
        from .tf_model import TFBlip
        from .tf_weights import load_numpy_state

        state = load_numpy_state(model_dir, dims)
        with tf.device("/CPU:0"):
            model = TFBlip(dims, state)
        return cls(model, dims)

    # Images per encoder call: bounds activation memory, as the torch backend does on the CPU
    encode_chunk = 2

    def encode(self, pixels: Any) -> tuple[Any, Any]:
        """(B, 3, H, W) pixels -> image memory: image keys and values, each (layers, B, heads, N, hd)."""
        tf = self.tf
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        parts = [self.model.memory(pixels[i : i + self.encode_chunk]) for i in range(0, len(pixels), self.encode_chunk)]
        if len(parts) == 1:
            return parts[0]
        return tf.concat([k for k, _ in parts], axis=1), tf.concat([v for _, v in parts], axis=1)

    def start(self, memory: tuple[Any, Any], group: int, prompts: np.ndarray, valid: np.ndarray,
              max_new: int) -> tuple[TFSession, np.ndarray]:
        """Prefill the prompts (rows = images x group) and return the session and first logits."""
        session = TFSession(self, memory, group, prompts, valid, max_new)
        return session, session.first_logits

    def select(self, memory: tuple[Any, Any], index: list[int]) -> tuple[Any, Any]:
        return tuple(self.tf.gather(m, index, axis=1) for m in memory)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "dtype": "float32"}
