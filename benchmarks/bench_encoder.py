"""The image encoder against its own matrix multiplications, per dtype and engine, in one run.

    python benchmarks/bench_encoder.py                   # ViT-L/16 at 384 (BLIP large), 4 images
    python benchmarks/bench_encoder.py --shape base --images 2

"matmuls alone" times exactly the matrix multiplications one encoder pass does (patch embedding,
qkv, attention scores and values, projection, MLP, and the decoder's cross-attention K/V
projection) as bare torch.matmul calls on tensors of the same shapes and dtype, so the ratio
encoder / matmuls shows how much time goes anywhere else (LayerNorm, GELU, softmax, copies).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blipcap.random_checkpoint import SHAPES


def best_of(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_only(dims, b: int, dtype: torch.dtype):
    v, t = dims.vision, dims.text
    n = v.num_patches + 1
    hd = v.hidden // v.heads
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x_patch, w_patch = r(b * v.num_patches, 3 * v.patch_size**2), r(3 * v.patch_size**2, v.hidden)
    x, w_qkv, w_proj = r(b * n, v.hidden), r(v.hidden, 3 * v.hidden), r(v.hidden, v.hidden)
    w_fc1, h, w_fc2 = r(v.hidden, v.mlp), r(b * n, v.mlp), r(v.mlp, v.hidden)
    q, k = r(b * v.heads, n, hd), r(b * v.heads, hd, n)
    att, val = r(b * v.heads, n, n), r(b * v.heads, n, hd)
    w_kv = r(v.hidden, 2 * t.hidden)

    def run():
        torch.matmul(x_patch, w_patch)
        for _ in range(v.layers):
            torch.matmul(x, w_qkv)
            torch.bmm(q, k)
            torch.bmm(att, val)
            torch.matmul(x, w_proj)
            torch.matmul(x, w_fc1)
            torch.matmul(h, w_fc2)
        for _ in range(t.layers):
            torch.matmul(x, w_kv)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["large", "base"], default="large")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--onnx", action="store_true", help="also the exported ONNX fp32 and int8 encoders")
    args = ap.parse_args()

    from blipcap.backends.torch import TorchBackend
    from blipcap.checkpoint import dims_from_config, read_config
    from blipcap.random_checkpoint import build_random_checkpoint

    print(f"{args.shape} image encoder, {args.images} images, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| engine | dtype | encoder s / image | matmuls alone s / image | encoder / matmuls |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        path = build_random_checkpoint(Path(tmp) / "ckpt", args.shape)
        dims = dims_from_config(read_config(path))
        size = dims.vision.image_size
        pixels = np.random.default_rng(0).normal(0, 1, (args.images, 3, size, size)).astype(np.float32)
        for dtype in ("float32", "bfloat16"):
            backend = TorchBackend.load(path, dims, device="cpu", dtype=dtype)
            backend.cpu_encode_chunk = args.images
            enc = best_of(lambda: backend.encode(pixels))
            mm = best_of(matmul_only(dims, args.images, getattr(torch, dtype)))
            print(f"| blipcap torch | {dtype} | {enc / args.images:.3f} | {mm / args.images:.3f} | {enc / mm:.2f} |")
            sys.stdout.flush()
            del backend
        if args.onnx:
            from blipcap.backends.onnx import OnnxBackend
            from blipcap.export import export_onnx

            for name, kw in (("float32", {}), ("int8", dict(int8=True))):
                out = export_onnx(path, Path(tmp) / name, **kw)
                backend = OnnxBackend.load(out, dims)
                enc = best_of(lambda: backend.encode(pixels))
                print(f"| blipcap onnx | {name} | {enc / args.images:.3f} | - | - |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
