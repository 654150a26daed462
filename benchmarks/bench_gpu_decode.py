"""Who should decode the folder job's JPEGs on a GPU machine: CPU threads or the GPU? Issue 17 asks
to measure both ("decode JPEGs on the GPU with torchvision.io.decode_jpeg(device="cuda") where
torchvision is installed"). In one process, on the same 12-megapixel JPEGs (benchmarks/bench_bulk.py's):

1. CPU threads: the folder job's own decoding (``Decoder.of(..., pixels=True)``: draft-mode JPEG
   decode at 1/2-1/8 scale, the preprocessor's Pillow resize, float32 normalise), ``--workers``
   threads, file reading included.
2. GPU: the files read on the same threads, then ``torchvision.io.decode_jpeg(batch, device=...)``
   (nvJPEG; full-size decode: nvJPEG has no draft scaling), bicubic antialiased resize to the model
   input, rounding to 8 bits as Pillow's resize does, and the same normalisation, batch by batch,
   the device synchronised before the clock stops.

Reports images/s of each against blipcap's model-only rate from the same run (fp16, batch
``--batch-size``, the images decoded beforehand): decoding that supplies images faster than the
model takes them is enough, and is what the folder job needs. Also how close the GPU's pixels come
to the CPU's (mean / max absolute difference, after normalisation) and the share of identical
tokens in captions made from either (random weights: a strict test of sensitivity).

    python -m benchmarks.bench_gpu_decode --dir /tmp/blipcap-photos --images 512     # on a GPU
    python -m benchmarks.bench_gpu_decode --device cpu --dtype float32 --shape tiny --images 8 --batch-size 4
        # to try it: without torchvision the CPU figures, then exit status 1

A GPU decoding input path for the folder job is built only if this shows the CPU threads cannot keep
up with the model (it cannot give Pillow-identical pixels, so captions would differ from the CPU's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.bench_bulk import write_photos
from blipcap import Captioner
from blipcap.bench import agreement, machine
from blipcap.images import Decoder
from blipcap.images.decode import read_file
from blipcap.random_checkpoint import build_random_checkpoint


def photos(root: Path, n: int) -> list[Path]:
    found = sorted(root.rglob("IMG_*.jpg"))
    if len(found) < n:
        write_photos(root / "gpu-decode", n)
        found = sorted(root.rglob("IMG_*.jpg"))
    return found[:n]


def gpu_pixels(datas: list[bytes], pre, device: str):
    """JPEG bytes -> (B, 3, H, W) float32 model input on ``device``, as close to Pillow's as the GPU gets."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas], mode=ImageReadMode.RGB,
                      device=device)
    mean = torch.tensor(pre.mean, device=device).view(3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(3, 1, 1)
    out = torch.empty((len(raw), 3, *pre.size), device=device)
    for i, img in enumerate(raw):  # one at a time: a float32 12-megapixel image is 144 MB
        small = F.interpolate(img[None].float(), size=pre.size, mode="bicubic", antialias=True, align_corners=False)
        out[i] = (small[0].round().clamp(0, 255) * pre.rescale_factor - mean) / std
    return out


def gpu_decode_all(names: list[str], pool, pre, device: str, b: int, sync) -> tuple[float, float, np.ndarray]:
    """Every file read on the pool's threads and decoded on ``device`` in batches of ``b``:
    (seconds, of which reading, the pixels on the host)."""
    import torch

    gpu_pixels([read_file(p) for p in names[:2]], pre, device)  # warm-up: nvJPEG handles, kernels
    sync()
    t0 = time.perf_counter()
    read_s, out = 0.0, []
    for i in range(0, len(names), b):
        t1 = time.perf_counter()
        datas = list(pool.map(read_file, names[i : i + b]))
        read_s += time.perf_counter() - t1
        out.append(gpu_pixels(datas, pre, device))
    sync()
    seconds = time.perf_counter() - t0
    return seconds, read_s, torch.cat(out).float().cpu().numpy()


def main() -> int:
    """0, or 1 where GPU decoding failed (the CPU figures are printed all the same)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--dir", type=Path, help="JPEGs to reuse (bench_bulk's --dir); missing ones are written")
    ap.add_argument("--shape", choices=["large", "base", "tiny"], default="large")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(args.dir or Path(tmp) / "photos", args.images)
        cap = Captioner.load(build_random_checkpoint(Path(tmp) / "ckpt", args.shape), device=args.device,
                             dtype=args.dtype)
        pre, n, b = cap.preprocessor, len(paths), args.batch_size
        decoder = Decoder.of(pre, cap.max_pixels, pixels=True)
        names = [str(p) for p in paths]
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(read_file, names[:b]))  # page cache warm for the first batch too, like the rest
            t0 = time.perf_counter()
            cpu = list(pool.map(decoder.file, names))
            cpu_s = time.perf_counter() - t0

            try:
                gpu_s, read_s, gpu = gpu_decode_all(names, pool, pre, args.device, b, sync)
            except Exception as e:  # torchvision missing or nvJPEG unusable: the CPU figures still count
                print(f"GPU JPEG decoding failed: {type(e).__name__}: {e}")
                gpu_s = read_s = gpu = None
        for _ in range(2):  # warm-up: kernels chosen; on CUDA a shape's second batch captures its graphs
            cap.caption(cpu[:b], batch_size=b)
        sync()
        t0 = time.perf_counter()
        from_cpu = cap.caption(cpu, batch_size=b)
        model_s = time.perf_counter() - t0
        diff = same = None
        if gpu is not None:
            diff = np.abs(gpu - np.stack([d.pixels for d in cpu]))
            # the same Decoded images with the GPU's pixels in place of the CPU's (the model takes them as they are)
            from_gpu = cap.caption([dataclasses.replace(d, pixels=px) for d, px in zip(cpu, gpu)], batch_size=b)
            same = agreement([c.token_ids for c in from_cpu], [c.token_ids for c in from_gpu])

    model_rate = n / model_s
    result = {"images": n, "workers": args.workers, "batch_size": b, "device": args.device, "dtype": args.dtype,
              "shape": args.shape, "cpu_decode_images_per_s": n / cpu_s, "model_only_images_per_s": model_rate,
              **machine(), "date": time.strftime("%Y-%m-%d")}
    if gpu is not None:
        result.update(gpu_decode_images_per_s=n / gpu_s, gpu_decode_read_s=read_s,
                      pixel_mean_abs_diff=float(diff.mean()), pixel_max_abs_diff=float(diff.max()),
                      identical_tokens_gpu_vs_cpu_pixels=same)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if gpu is not None else 1
    print(f"{n} JPEGs of 4000x3000, {args.shape}-shaped random BLIP {args.device} {args.dtype}, batch {b}; "
          f"{result.get('cpu', '')}" + (f", {result['gpu']}" if "gpu" in result else ""))
    print("| images come from | images / s | vs model only |")
    print("| --- | --- | --- |")
    print(f"| CPU: {args.workers} threads, draft decode + Pillow resize + normalise | {n / cpu_s:.1f} | "
          f"{n / cpu_s / model_rate:.2f} |")
    if gpu is not None:
        print(f"| GPU: torchvision decode_jpeg on {args.device} + resize + normalise (file reading on "
              f"{args.workers} threads: {read_s:.2f} s of it) | {n / gpu_s:.1f} | {n / gpu_s / model_rate:.2f} |")
    print(f"| model only (blipcap, images decoded beforehand) | {model_rate:.1f} | 1.00 |")
    if gpu is not None:
        print(f"GPU pixels vs CPU pixels (normalised units): mean |diff| {diff.mean():.4f}, max {diff.max():.3f}; "
              f"identical tokens in captions from either: {same:.1%}")
    return 0 if gpu is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
