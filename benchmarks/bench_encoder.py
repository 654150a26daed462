"""The image encoder against its own matrix multiplications, per dtype and engine, in one run.

    python -m benchmarks.bench_encoder                   # ViT-L/16 at 384 (BLIP large), 4 images
    python -m benchmarks.bench_encoder --shape base --images 2

"matmuls alone" times exactly the matrix multiplications one encoder pass does (patch embedding,
qkv, attention scores and values, projection, MLP, and the decoder's cross-attention K/V
projection) as bare calls on tensors of the same shapes and dtype, each with the kernel the encoder
uses for it: the linear layers through oneDNN on pre-packed weights (blipcap's CPU path,
backends/cpu_pack.py; plain torch.matmul where packing is unavailable), the attention products as
torch.matmul on (batch x heads) stacks. So encoder / matmuls shows how much time goes anywhere else
(LayerNorm, GELU, softmax, copies, attention's own overheads). The encoder runs the images in the
backend's CPU chunks, as captioning does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_core import best_of  # noqa: E402


def linear_matmuls(dims, b: int, dtype: torch.dtype):
    """The encoder's linear-layer products (patch embedding, qkv, projection, MLP, the decoder's
    cross-attention K/V) alone, through the kernel the encoder uses for them."""
    from blipcap.backends.cpu_pack import PackedLinear, packing_available

    v, t = dims.vision, dims.text
    n = v.num_patches + 1
    g = torch.Generator().manual_seed(0)

    def linear(d_in, d_out):
        dense = torch.nn.Linear(d_in, d_out, bias=False).to(dtype)
        return PackedLinear(dense) if packing_available() else dense

    x_patch = torch.randn(b * v.num_patches, 3 * v.patch_size**2, generator=g).to(dtype)
    x, h = torch.randn(b * n, v.hidden, generator=g).to(dtype), torch.randn(b * n, v.mlp, generator=g).to(dtype)
    patch, kv = linear(3 * v.patch_size**2, v.hidden), linear(v.hidden, 2 * t.hidden)
    qkv, proj, fc1, fc2 = (linear(v.hidden, 3 * v.hidden), linear(v.hidden, v.hidden), linear(v.hidden, v.mlp),
                           linear(v.mlp, v.hidden))

    @torch.inference_mode()
    def run():
        patch(x_patch)
        for _ in range(v.layers):
            qkv(x)
            proj(x)
            fc1(x)
            fc2(h)
        for _ in range(t.layers):
            kv(x)

    return run


def attention_matmuls(dims, b: int, dtype: torch.dtype):
    """The attention products (scores, then values) of every layer alone, as torch.bmm."""
    v = dims.vision
    n, hd = v.num_patches + 1, v.hidden // v.heads
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(b * v.heads, n, hd, generator=g).to(dtype), torch.randn(b * v.heads, hd, n, generator=g).to(dtype)
    att, val = torch.randn(b * v.heads, n, n, generator=g).to(dtype), torch.randn(b * v.heads, n, hd, generator=g).to(dtype)

    def run():
        for _ in range(v.layers):
            torch.bmm(q, k)
            torch.bmm(att, val)

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
            chunk = backend.cpu_encode_chunk
            enc = best_of(lambda: backend.encode(pixels))
            lin = best_of(linear_matmuls(dims, chunk, getattr(torch, dtype))) * args.images / chunk
            att = best_of(attention_matmuls(dims, chunk, getattr(torch, dtype))) * args.images / chunk
            mm = lin + att
            print(f"| blipcap torch | {dtype} | {enc / args.images:.3f} | {mm / args.images:.3f} "
                  f"(attention products {att / args.images:.3f}) | {enc / mm:.2f} |")
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
