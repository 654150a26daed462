"""The Ray engine on one machine: the same folder with 1 and 2 workers, beside the local engine.

    python -m benchmarks.bench_ray                       # 32 images, BLIP-base shape, greedy, batch 4
    python -m benchmarks.bench_ray --shape large --images 16 --json

1. Builds a random-initialised checkpoint of the BLIP-base (or -large) shape in a temp dir
   (blipcap.random_checkpoint; nothing is downloaded). Random weights never emit [SEP], so every
   caption is the full 19 tokens: the same work in every run.
2. Writes N 640x480 JPEGs (blipcap.bench.synthetic_images, quality 90) to a temp folder.
3. local: ``python -m blipcap caption DIR --output x.parquet`` in a child process, timed from the
   outside (process start, imports and model load included) and from its summary line (first file
   to last row written).
4. ray: one local Ray for the script (all CPUs, no dashboard), then for 1 and 2 workers a fresh
   ``RayJob`` (what ``caption --engine ray --ray-address ...`` runs) into a fresh output folder,
   timed around ``run()``: planning, actor start and model load (one per worker) included. Each
   worker reserves (CPUs - 0.25) / workers CPUs, so Ray gives its torch floor(that) >= 1 threads.
Captions of every run are compared with the local engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the local Ray on 127.0.0.1

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

from blipcap.bench import machine, synthetic_images  # noqa: E402
from blipcap.jobs.ray_job import IO_CPUS, ModelSpec, PoolSpec, RayJob  # noqa: E402
from tests.helpers.summary import parse_line  # noqa: E402
from blipcap.random_checkpoint import build_random_checkpoint  # noqa: E402


def captions(path: Path) -> dict[str, str]:
    table = pq.read_table(path, columns=["path", "caption"])
    return dict(zip(table.column("path").to_pylist(), table.column("caption").to_pylist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=["base", "large"], default="base")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:  # the checkpoint alone is ~0.9 GB
        run_all(args, Path(tmp))


def run_all(args: argparse.Namespace, tmp: Path) -> None:
    ckpt = build_random_checkpoint(tmp / "ckpt", args.shape)
    folder = tmp / "images"
    folder.mkdir()
    for i, image in enumerate(synthetic_images(args.images)):
        image.save(folder / f"{i:04d}.jpg", quality=90)

    runs = []
    out = tmp / "local.parquet"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "blipcap", "caption", str(folder), "--model", str(ckpt),
                           "--batch-size", str(args.batch_size), "--output", str(out)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    job = parse_line(proc.stderr)[1]
    reference = captions(out)
    runs.append({"engine": "local", "workers": "-", "threads": "torch default", "seconds": wall, "job_seconds": job})

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for workers in args.workers:
            share = (cpus - IO_CPUS) / workers
            pool = PoolSpec(workers=workers, cpus_per_worker=share, batch_size=args.batch_size)
            out = tmp / f"ray-{workers}"
            t0 = time.perf_counter()
            summary = RayJob([str(folder)], str(out), ModelSpec(str(ckpt)), pool, quiet=True).run()
            seconds = time.perf_counter() - t0
            assert summary.captioned == args.images, summary.line()
            same = sum(reference[p] == c for p, c in captions(out).items())
            runs.append({"engine": "ray", "workers": workers, "threads": f"{max(1, int(share))} each",
                         "cpus_per_worker": round(share, 3), "seconds": seconds, "same_captions": same})
    finally:
        ray.shutdown()

    for r in runs:
        r["images_per_s"] = args.images / r["seconds"]
    info = {"machine": machine(), "ray": ray.__version__, "shape": args.shape, "images": args.images,
            "image_size": "640x480 JPEG", "batch_size": args.batch_size, "runs": runs}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['machine']} ray {ray.__version__}; BLIP-{args.shape} shape (random), {args.images} images, "
          f"batch {args.batch_size}, greedy, 19 new tokens")
    print("| engine | workers | torch threads | s (wall, model loads included) | images / s | captions equal to local |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in runs:
        same = f"{r['same_captions']}/{args.images}" if "same_captions" in r else "-"
        print(f"| {r['engine']} | {r['workers']} | {r['threads']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} "
              f"| {same} |")
    print(f"local job alone (its summary line, after the model load): {runs[0]['job_seconds']:.1f} s")


if __name__ == "__main__":
    main()
