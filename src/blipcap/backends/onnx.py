"""The ONNX Runtime backend: runs graphs exported by `blipcap export-onnx`, with numpy only.

Owns the ONNX Runtime sessions (options set on purpose: intra-op threads = physical cores unless
told otherwise, all graph optimisations, providers from the caller) and `OnnxSession`, the numpy
decoding state: a preallocated self-attention cache passed whole to the decoder graph every step
with a validity mask, and written with the new keys/values the graph returns. Each layer's cache
keys, cache values, image keys and image values go in as inputs of their own (contiguous numpy
arrays ONNX Runtime reads in place), cache keys transposed as the graph multiplies them. No torch import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..arrays import NumpyOps
from ..checkpoint import CheckpointError, ModelDims
from .base import NumpySession

MANIFEST = "manifest.json"
# The graphs' interface: 2 = per-layer past and image inputs, cache keys held transposed. The image
# inputs are the encoder graph's outputs by name, in whatever layout the export chose (v2 exports
# from before the decoder's fused cross-attention feed transposed image keys and still run).
# Exports of another version are refused with a message to re-export.
GRAPH_VERSION = 2


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The export manifest of a `blipcap export-onnx` directory, or None for anything else."""
    import json

    file = Path(model_dir) / MANIFEST
    if not file.is_file():
        return None
    manifest = json.loads(file.read_text(encoding="utf-8"))
    return manifest if manifest.get("format") == "blipcap-onnx" else None


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the ONNX backend requires onnxruntime: pip install 'blipcap[onnx]'") from None
    return onnxruntime


def physical_cores() -> int:
    """Physical cores (not SMT threads) this process may use; ONNX Runtime's default counts threads."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        cores = set()
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
            topo = cpu / "topology"
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        return max(1, min(usable, len(cores) or usable))
    except OSError:
        return max(1, usable)


class OnnxSession(NumpySession):
    """One batch of images being decoded by the decoder graph."""

    def __init__(self, backend: "OnnxBackend", memory: dict[str, np.ndarray], group: int, prompts: np.ndarray,
                 valid: np.ndarray, max_new: int):
        self.backend, self.memory = backend, memory
        self.ops = backend.ops
        t = backend.dims.text
        rows, p = prompts.shape
        length = t.check_length(p, max_new)
        hd = t.hidden // t.heads
        # keys held transposed, as the graph multiplies them: (layers, rows, heads, hd, L)
        self.keys = np.zeros((t.layers, rows, t.heads, hd, length), dtype=backend.cache_dtype)
        self.values = np.zeros((t.layers, rows, t.heads, length, hd), dtype=backend.cache_dtype)
        self.filled = np.zeros((rows, length), dtype=bool)
        self._prefill(prompts, valid)

    def _run(self, tokens: np.ndarray, positions: np.ndarray, new_valid: np.ndarray) -> np.ndarray:
        feed = {"tokens": tokens, "positions": positions, "new_valid": new_valid, "past_valid": self.filled}
        for i in range(len(self.keys)):  # contiguous views: ONNX Runtime reads them without a copy
            feed[f"past_kt.{i}"], feed[f"past_v.{i}"] = self.keys[i], self.values[i]
        feed.update(self.memory)
        logits, new_kt, new_v = self.backend.decoder.run(None, feed)
        t = tokens.shape[1]
        self.keys[..., self.start : self.start + t] = new_kt
        self.values[:, :, :, self.start : self.start + t] = new_v
        self.filled[:, self.start : self.start + t] = new_valid
        self.start += t
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        # beams of one image share positions and padding, so only the caches move; whole rows are
        # contiguous blocks, much faster to gather than the filled part alone (strided in the keys)
        self.keys = np.take(self.keys, rows, axis=1)
        self.values = np.take(self.values, rows, axis=1)


class OnnxBackend:
    name = "onnx"

    def __init__(self, encoder: Any, decoder: Any, dims: ModelDims, manifest: dict | None = None):
        self.encoder, self.decoder, self.dims = encoder, decoder, dims
        self.manifest = manifest or {}
        self.ops = NumpyOps()
        self.memory_names = [o.name for o in encoder.get_outputs()]  # the decoder's image inputs
        self.on_cpu = encoder.get_providers()[0] == "CPUExecutionProvider"
        # fp16 graphs keep float32 inputs and outputs (keep_io_types), so the cache stays float32
        self.cache_dtype = np.float32

    @classmethod
    def load(cls, model_dir: str | Path, dims: ModelDims, *, providers: Sequence[str] | None = None,
             threads: int | None = None, manifest: dict | None = None) -> "OnnxBackend":
        ort = _onnxruntime()
        model_dir = Path(model_dir)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = list(providers or ["CPUExecutionProvider"])
        available = set(ort.get_available_providers())
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                             f"(available: {', '.join(sorted(available))})")
        manifest = manifest if manifest is not None else read_manifest(model_dir)
        names = manifest or {}
        version = names.get("graph_version", 1)
        if version != GRAPH_VERSION:
            raise CheckpointError(
                f"{model_dir} holds ONNX graphs of interface version {version}; this blipcap reads version "
                f"{GRAPH_VERSION}: export again with `blipcap export-onnx --model <checkpoint> --out DIR`"
            )
        sessions = [
            ort.InferenceSession(str(model_dir / names.get(key, default)), sess_options=opts, providers=providers)
            for key, default in (("encoder", "encoder.onnx"), ("decoder", "decoder.onnx"))
        ]
        return cls(*sessions, dims=dims, manifest=manifest)

    # Images per encoder run on the CPU provider: on the BLIP-large shape (2 cores, int8) runs of 2
    # were as fast as one run of 8 or a little faster (a smaller working set); BENCHMARKS.md.
    cpu_encode_chunk = 2

    def encode(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, H, W) pixels -> image memory: each decoder layer's image keys and values,
        by the decoder graph's input names."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        chunk = self.cpu_encode_chunk if self.on_cpu else len(pixels)
        first = self.encoder.run(None, {"pixels": pixels[:chunk]})
        if len(pixels) <= chunk:
            return dict(zip(self.memory_names, first))
        out = [np.empty((len(pixels),) + a.shape[1:], dtype=a.dtype) for a in first]
        for i in range(0, len(pixels), chunk):
            part = first if i == 0 else self.encoder.run(None, {"pixels": pixels[i : i + chunk]})
            for whole, piece in zip(out, part):
                whole[i : i + chunk] = piece
        return dict(zip(self.memory_names, out))

    def start(self, memory: dict[str, np.ndarray], group: int, prompts: np.ndarray, valid: np.ndarray,
              max_new: int) -> tuple[OnnxSession, np.ndarray]:
        session = OnnxSession(self, memory, group, prompts, valid, max_new)
        return session, session.first_logits

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": ",".join(self.decoder.get_providers()),
                "dtype": self.manifest.get("dtype", "float32")}
