"""ModelSpec: which model to load and how, as one small value the CLI, the server, the Ray job and
bench build once and `Captioner.load` takes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .hub import DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    model: str = DEFAULT_MODEL  # short name (large, base), Hub repo id, checkpoint or export-onnx directory
    revision: str | None = None  # a Hub branch, tag or commit
    backend: str = "auto"  # torch, onnx, or auto: ONNX Runtime for an export directory, else PyTorch
    device: str = "auto"  # auto: CUDA when available (torch backend)
    dtype: str = "auto"  # torch backend: float32, bfloat16, float16
    threads: int | None = None  # ONNX Runtime intra-op threads (default: physical cores)
    providers: tuple[str, ...] | None = None  # ONNX Runtime execution providers
    cache_dir: str | None = None  # the Hub cache (default: HF_HUB_CACHE)
    local_files_only: bool = False  # never download
    cuda_graphs: bool | None = None  # torch on CUDA: replay each decoder step as a CUDA graph (None: yes)
    image_kv_dtype: str = "auto"  # torch: the image keys/values' type (auto: the model's dtype; bfloat16 halves them)

    def __post_init__(self) -> None:
        # paths and lists from callers; kept as str/tuple so the spec hashes and pickles plainly
        object.__setattr__(self, "model", os.fspath(self.model))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
