"""Where a captioning batch spends its time: the torch profiler over one batch, by operator.

    python -m benchmarks.profile_decode                                   # CPU, random large, 8 images
    python -m benchmarks.profile_decode --device cuda --dtype float16 --images 64

Prints encode vs decode wall time (synchronised) and the top operators by self CPU time (and by
CUDA time on a GPU), so per-step Python and launch overhead shows up next to the real work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="large", choices=["large", "base", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=20)
    args = ap.parse_args()

    from blipcap import Captioner, CaptionOptions
    from blipcap.bench import synthetic_images
    from blipcap.random_checkpoint import build_random_checkpoint

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        cap = Captioner.load(build_random_checkpoint(Path(tmp) / "ckpt", args.shape), device=args.device,
                             dtype=args.dtype)
    opts = CaptionOptions(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    images = synthetic_images(args.images)
    cap.caption(images[:2], opts)
    pixels = cap.preprocessor.batch(images)
    sync()
    t0 = time.perf_counter()
    cap.backend.encode(pixels)
    sync()
    t1 = time.perf_counter()
    cap.caption(images, opts, batch_size=args.images)
    sync()
    t2 = time.perf_counter()
    print(f"encode {t1 - t0:.3f} s, whole batch {t2 - t1:.3f} s -> decode ~{(t2 - t1) - (t1 - t0):.3f} s "
          f"for {args.new_tokens} steps ({((t2 - t1) - (t1 - t0)) / args.new_tokens * 1000:.1f} ms/step)")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        cap.caption(images, opts, batch_size=args.images)
        sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))
    if cuda:
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main()
