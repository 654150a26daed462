"""The PyTorch backend: builds the model from a checkpoint, places it, and runs encode/prefill/step.

Owns devices and dtypes. The model is built on the meta device and its parameters are assigned
straight from the (memory-mapped) checkpoint tensors, so loading makes no random initialisation and
no second copy at float32; on the CPU the linear layers' weights are then re-laid-out once for
oneDNN (cpu_pack.py), replacing the dense ones, and each copied weight's mapped pages are dropped.
Decoding state lives in `TorchSession`: the preallocated self-attention cache, the rows' next
positions and their padding mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arrays import TorchOps
from ..checkpoint import ModelDims, load_state_dict
from .cpu_pack import pack_linears, packing_available
from .nn import BlipCaptioner
from .static import BucketPool, StaticSession

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # fp16 on GPUs; fp32 on CPUs, where it is the reference numerics
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    if dtype == "float16" and device.type != "cuda":
        raise ValueError("float16 is for CUDA; on the CPU use bfloat16 or float32")
    return _DTYPES[dtype]


class TorchSession:
    """One batch of images being decoded: the cache and the bookkeeping `step` needs."""

    def __init__(self, backend: "TorchBackend", cross: torch.Tensor, group: int, prompts: np.ndarray,
                 valid: np.ndarray, max_new: int):
        self.backend, self.cross = backend, cross  # beams share ``cross``: rows = images x group
        self.ops = backend.ops
        model, dev = backend.model, backend.device
        t = model.dims.text
        rows, p = prompts.shape
        self.length = t.check_length(p, max_new)
        self.cache = torch.zeros(
            (t.layers, 2, rows, t.heads, self.length, t.hidden // t.heads), dtype=backend.dtype, device=dev
        )
        self._spare: torch.Tensor | None = None  # the reorder's second buffer
        self.valid = torch.ones((rows, self.length), dtype=torch.bool, device=dev)
        self.valid[:, :p] = torch.from_numpy(valid).to(dev)
        n_pad = torch.from_numpy((~valid).sum(axis=1)).to(dev)
        self.positions = torch.arange(p, device=dev)[None, :] - n_pad[:, None]  # (rows, P)
        self.start = p
        tokens = torch.from_numpy(prompts).to(dev)
        # causal over the prompt, minus padding; each slot also sees itself so a padded query
        # never has an empty row (which would turn into NaNs that leak through the values)
        causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
        mask = (causal[None] & self.valid[:, None, :p]) | torch.eye(p, dtype=torch.bool, device=dev)[None]
        self.first_logits = self._run(tokens, self.positions.clamp(min=0), 0, mask[:, None])
        self.next_pos = self.positions[:, -1] + 1

    @torch.inference_mode()
    def _run(self, tokens, positions, start, mask) -> torch.Tensor:
        logits = self.backend.model.text(tokens, positions, self.cache, start, mask, self.cross)
        return logits.float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = self.valid[:, None, None, : self.start + 1]
        logits = self._run(tokens[:, None], self.next_pos[:, None], self.start, mask)
        self.start += 1
        self.next_pos = self.next_pos + 1
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        # Beams of one image share positions and padding, so only the cache moves: whole rows
        # (contiguous blocks) gathered into a second buffer that then swaps in. On the CPU that is
        # ~2.4x faster than moving the strided filled part in place (benchmarks/bench_kernels.py),
        # and reusing the buffer avoids page-faulting a fresh allocation every step.
        if self._spare is None:
            self._spare = torch.empty_like(self.cache)
        torch.index_select(self.cache, 2, rows, out=self._spare)
        self.cache, self._spare = self._spare, self.cache


class TorchBackend:
    name = "torch"

    def __init__(self, model: BlipCaptioner, device: torch.device, dtype: torch.dtype,
                 cuda_graphs: bool | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.dims: ModelDims = model.dims
        self.ops = TorchOps(device)
        # CUDA: decode with the fixed-shape step (static.py), captured as CUDA graphs unless
        # cuda_graphs is False. The CPU keeps the dynamic step; `static_step = True` runs the
        # fixed-shape one eagerly there (what the tests compare).
        self.cuda_graphs = device.type == "cuda" and cuda_graphs is not False
        self.static_step = self.cuda_graphs
        self.buckets = BucketPool()

    @classmethod
    def load(cls, model_dir: str | Path, dims: ModelDims, device: str = "auto", dtype: str = "auto",
             pack: bool = True, cuda_graphs: bool | None = None) -> "TorchBackend":
        """`pack`: on the CPU, pre-pack the linear layers for oneDNN (cpu_pack.py); export passes False.
        `cuda_graphs`: on CUDA, replay each decoder step as a captured graph (None: yes)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        with torch.device("meta"):
            model = BlipCaptioner(dims)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        state, pages = load_state_dict(model_dir, dims, shapes, convert=lambda t: t.to(device=dev, dtype=dt))
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
        del state
        if pack and dev.type == "cpu" and packing_available():
            pack_linears(model, release=pages.release)
        return cls(model, dev, dt, cuda_graphs)

    # Images per vision-encoder call on the CPU: bounds activation memory (a ViT-L layer holds
    # ~50 MB of activations per 2 images); 2 measured as fast as 4 on the large shape with packed
    # weights, 1 ~12% slower (BENCHMARKS.md).
    cpu_encode_chunk = 2

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) float32 pixels -> image memory: cross-attention K/V for every decoder layer."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        chunk = self.cpu_encode_chunk if self.device.type == "cpu" else x.shape[0]
        d = self.dims
        v, t = d.vision, d.text
        out = x.new_empty((t.layers, 2, x.shape[0], t.heads, v.num_patches + 1, t.hidden // t.heads))
        for i in range(0, x.shape[0], chunk):
            self.model.encode(x[i : i + chunk], out=out[:, :, i : i + chunk])
        return out

    def start(self, memory: torch.Tensor, group: int, prompts: np.ndarray, valid: np.ndarray,
              max_new: int) -> tuple[TorchSession | StaticSession, torch.Tensor]:
        """Prefill the prompts (rows = images x group) and return the session and first logits."""
        kind = StaticSession if self.static_step else TorchSession
        session = kind(self, memory, group, prompts, valid, max_new)
        return session, session.first_logits

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.cuda_graphs}
