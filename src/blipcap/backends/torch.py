"""The PyTorch backend: builds the model from a checkpoint, places it, and runs encode/prefill/step.

Owns devices and dtypes. The model is built on the meta device and its parameters are assigned
straight from the (memory-mapped) checkpoint tensors, so loading makes no random initialisation and
no second copy at float32; on the CPU the linear layers' weights are then re-laid-out once for
oneDNN (cpu_pack.py), replacing the dense ones, and each copied weight's mapped pages are dropped.
Decoding state lives in `TorchSession`: the preallocated self-attention cache, the rows' next
positions and their padding mask; on CUDA in `static.StaticSession`, whose fixed-shape step is
replayed as a CUDA graph. `auto_batch_size` sizes batches from a memory estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..arrays import TorchOps
from ..checkpoint import ModelDims, load_state_dict
from .cpu_pack import pack_linears, packing_available
from .feed import InFlight, PinnedFeed
from .nn import BlipCaptioner
from .static import BucketPool, StaticSession, gather_rows

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


def resolve_image_kv_dtype(image_kv_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The image keys/values' type: the model's ("auto"), or one asked for. float16 is allowed on the
    CPU here: only the attention over the image reads it (SDPA's kernel, float32 inside)."""
    if image_kv_dtype == "auto":
        return model_dtype
    if image_kv_dtype not in _DTYPES:
        raise ValueError(f"image_kv_dtype must be one of auto, {', '.join(_DTYPES)}; got {image_kv_dtype!r}")
    return _DTYPES[image_kv_dtype]


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes of the loaded parameters (already resident when a batch size is picked)
    per_image: int  # bytes one more image in a batch needs: image K/V, encoder activations, its rows' caches


def pick_batch_size(estimate: MemoryEstimate, free_bytes: int, limit: int) -> int:
    """Images per batch that fit `free_bytes` (the weights are loaded already, so free memory
    excludes them), with a fifth kept back for the allocator's slack, kernel workspaces and CUDA
    graph pools; a multiple of 8 from 8 up, so that batches fall into few shapes."""
    fit = int(0.8 * free_bytes) // max(1, estimate.per_image)
    n = max(1, min(limit, fit))
    return n - n % 8 if n >= 8 else n


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


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
        self.cache, self._spare = gather_rows(self.cache, self._spare, rows)


class TorchBackend:
    name = "torch"

    def __init__(self, model: BlipCaptioner, device: torch.device, dtype: torch.dtype,
                 cuda_graphs: bool | None = None, image_kv_dtype: torch.dtype | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        # the type the image keys/values are kept in: the model's own unless asked (nn.TextBlock
        # runs the cross-attention products in it and the softmax in float32)
        self.image_kv_dtype = image_kv_dtype or dtype
        self.dims: ModelDims = model.dims
        self.ops = TorchOps(device)
        # CUDA: decode with the fixed-shape step (static.py), captured as CUDA graphs unless
        # cuda_graphs is False. The CPU keeps the dynamic step; `static_step = True` runs the
        # fixed-shape one eagerly there (what the tests compare).
        self.cuda_graphs = device.type == "cuda" and cuda_graphs is not False
        self.static_step = self.cuda_graphs
        self.buckets = BucketPool()
        # CUDA: pixels go through pinned staging slots and a copy stream (feed.py); None: the plain copy
        self.feed = PinnedFeed(device, dtype) if device.type == "cuda" else None

    @classmethod
    def load(cls, model_dir: str | Path, dims: ModelDims, device: str = "auto", dtype: str = "auto",
             pack: bool = True, cuda_graphs: bool | None = None, image_kv_dtype: str = "auto") -> "TorchBackend":
        """`pack`: on the CPU, pre-pack the linear layers for oneDNN (cpu_pack.py); export passes False.
        `cuda_graphs`: on CUDA, replay each decoder step as a captured graph (None: yes).
        `image_kv_dtype`: the image keys/values' type (auto: `dtype`)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        kv = resolve_image_kv_dtype(image_kv_dtype, dt)
        with torch.device("meta"):
            model = BlipCaptioner(dims)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        state, pages = load_state_dict(model_dir, dims, shapes, convert=lambda t: t.to(device=dev, dtype=dt))
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
        del state
        if pack and dev.type == "cpu" and packing_available():
            pack_linears(model, release=pages.release)
        return cls(model, dev, dt, cuda_graphs, kv)

    # Images per vision-encoder call on the CPU: bounds activation memory (a ViT-L layer holds
    # ~50 MB of activations per 2 images); 2 measured as fast as 4 on the large shape with packed
    # weights, 1 ~12% slower (BENCHMARKS.md).
    cpu_encode_chunk = 2

    @property
    def async_input(self) -> bool:
        """Whether ``stage`` copies to the device asynchronously (CUDA), so staging ahead pays."""
        return self.feed is not None

    def stage(self, shape: tuple[int, ...], fill: Callable[[np.ndarray | None], np.ndarray]) -> np.ndarray | InFlight:
        """A batch's pixels for ``encode``: ``fill(out)`` writes them (float32 ``shape``) into ``out``,
        on CUDA a pinned staging slot whose copy to the device then starts (any thread; feed.py);
        elsewhere ``fill(None)`` makes them as before."""
        return fill(None) if self.feed is None else self.feed.fill(shape, fill)

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray | InFlight) -> torch.Tensor:
        """(B, 3, H, W) float32 pixels (or what ``stage`` made of them) -> image memory:
        cross-attention K/V for every decoder layer."""
        if isinstance(pixels, InFlight):
            x = pixels.get()
        elif self.feed is not None:
            x = self.feed(pixels)
        else:
            x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        chunk = self.cpu_encode_chunk if self.device.type == "cpu" else x.shape[0]
        d = self.dims
        v, t = d.vision, d.text
        out = x.new_empty((t.layers, 2, x.shape[0], t.heads, v.num_patches + 1, t.hidden // t.heads),
                          dtype=self.image_kv_dtype)
        for i in range(0, x.shape[0], chunk):
            self.model.encode(x[i : i + chunk], out=out[:, :, i : i + chunk])
        return out

    def start(self, memory: torch.Tensor, group: int, prompts: np.ndarray, valid: np.ndarray,
              max_new: int) -> tuple[TorchSession | StaticSession, torch.Tensor]:
        """Prefill the prompts (rows = images x group) and return the session and first logits."""
        kind = StaticSession if self.static_step else TorchSession
        session = kind(self, memory, group, prompts, valid, max_new)
        return session, session.first_logits

    def memory_estimate(self, group: int, length: int) -> "MemoryEstimate":
        """What a batch costs on this device: the weights, and per image its share of the decode."""
        v, t = self.dims.vision, self.dims.text
        item = torch.finfo(self.dtype).bits // 8
        n = v.num_patches + 1
        cuda = self.device.type == "cuda"
        image_kv = t.layers * 2 * n * t.hidden * (torch.finfo(self.image_kv_dtype).bits // 8)  # every layer reads
        # the encoder at its widest layer: residual, q/k/v, MLP, and attention scores in case the
        # kernel materialises them; on the CPU images are encoded two at a time, not all at once
        encode = (n * (5 * v.hidden + v.mlp) + v.heads * n * n) * item if cuda else 0
        cache = 2 * t.layers * 2 * length * t.hidden * item  # a row's self-attention cache and its spare
        search = 8 * t.vocab * 4  # a row's float32 logits and the search's copies of them
        pixels = 2 * 3 * v.image_size**2 * 4  # float32 on the host, then on the device
        # the image K/V twice on CUDA: the encoder's output and the static bucket's copy
        per_image = (2 if cuda else 1) * image_kv + encode + pixels + group * (cache + search)
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return MemoryEstimate(weights, per_image)

    def auto_batch_size(self, group: int, length: int, free_bytes: int | None = None) -> int:
        """The largest batch whose estimate fits the free memory (read from the device unless given):
        at most 256 images on CUDA, 8 on the CPU (larger batches measured no faster there)."""
        if free_bytes is None:
            free_bytes = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else _available_ram()
        limit = 256 if self.device.type == "cuda" else 8
        return pick_batch_size(self.memory_estimate(group, length), free_bytes, limit)

    def info(self) -> dict[str, Any]:
        info = {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.cuda_graphs}
        if self.image_kv_dtype != self.dtype:
            info["image_kv_dtype"] = str(self.image_kv_dtype).replace("torch.", "")
        return info
