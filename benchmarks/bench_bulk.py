"""`blipcap caption DIR --output x.jsonl` against the model alone, on the same 12-megapixel JPEGs,
in one run: does the folder job hide image decoding and writing behind the model?

    python -m benchmarks.bench_bulk                        # 200 images, BLIP-large shape, CPU fp32, batch 8
    python -m benchmarks.bench_bulk --images 48
    python -m benchmarks.bench_bulk --device cuda --dtype float16 --batch-size 32

1. Builds a random-initialised checkpoint of the BLIP-large (or -base) shape in a temp dir
   (blipcap.random_checkpoint; nothing is downloaded). Random weights never emit [SEP], so every
   caption is the full 19 tokens: the same work in both measurements.
2. Writes N photo-like 4000x3000 JPEGs (smooth colour fields, texture and sensor-like noise,
   quality 90, about 4 MB each, every file different), or reuses them with --dir.
3. Model only: every image decoded and resized to the model input beforehand, with the job's own
   decoder (draft-mode JPEG decode + the preprocessor's resize), held in memory; then
   ``Captioner.caption(images, batch_size=B)`` is timed, cold like the job (no warm-up call).
4. Folder job: ``python -m blipcap caption DIR --output x.jsonl`` in a child process, timed from the
   outside (wall time: process start and model load included) and from its own summary line (first
   file to last row written: what the model-only figure is compared with).
With ``--rounds R`` the images are split into R folders and the two measurements alternate folder
by folder, so that a shared machine's changing load weighs on both alike.
5. With ``--overlap``: the input feed on and off, in this process, warm (one untimed pass first, so
   CUDA graphs are captured), alternating ``--ab-repeats`` times over all the images: model only
   (images decoded beforehand) and the folder job (``BulkJob`` into a JSONL file), each as images/s
   and the job's share of model only. On: pinned staging slots, the copy on its own stream and
   batch N+1 staged while batch N runs (backends/feed.py; torch on CUDA). Off: the plain
   synchronous copy, nothing staged ahead. In both the decode threads normalise the pixels too.
   Also how fast the decode threads alone supply images. On the CPU "on" forces the same feed on,
   only to run the code path (no device copy to overlap there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from blipcap import Captioner
from blipcap.bench import machine
from blipcap.images import Decoder
from blipcap.jobs.discover import find_images
from blipcap.jobs.local import BulkJob
from blipcap.outputs.tables import JsonlSink
from tests.helpers.summary import parse_line
from blipcap.random_checkpoint import build_random_checkpoint

SIZE = (4000, 3000)  # 12 megapixels


def _write_photo(folder: Path, i: int, seed: int) -> None:
    rng = np.random.default_rng([seed, i])  # each file its own, whichever process writes it
    w, h = SIZE
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(SIZE, Image.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).resize(SIZE, Image.BILINEAR)
    noise = Image.fromarray(rng.normal(128, 10, (h // 2, w // 2, 3)).clip(0, 255).astype(np.uint8)).resize(SIZE)
    photo = ImageChops.add(Image.blend(base, detail, 0.25), noise, offset=-128)
    tmp = folder / f".IMG_{i:04d}.jpg"
    photo.save(tmp, format="JPEG", quality=90)
    tmp.rename(folder / f"IMG_{i:04d}.jpg")


def write_photos(folder: Path, n: int, seed: int = 0, first: int = 0) -> None:
    """Photo-like 4000x3000 JPEGs number first..first+n-1 (missing ones only), written by every core."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(first, first + n) if not (folder / f"IMG_{i:04d}.jpg").is_file()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_photo, [folder] * len(todo), todo, [seed] * len(todo)))


def run_job(folder: Path, out: Path, ckpt: Path, args) -> tuple[float, float, list[dict]]:
    """`blipcap caption FOLDER --output OUT` in a child process: (job seconds, wall seconds, rows)."""
    cmd = [sys.executable, "-m", "blipcap", "caption", str(folder), "--output", str(out), "--model", str(ckpt),
           "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype,
           *(["--workers", str(args.workers)] if args.workers else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the folder job failed ({proc.returncode}):\n{proc.stderr}")
    images, seconds, captioned = parse_line(proc.stderr)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert images == captioned == len(rows), proc.stderr
    return seconds, wall, rows


def overlap_ab(cap, parts: list[Path], decoder, tmp: Path, batch_size: int, workers: int | None,
               repeats: int) -> dict:
    """Model only and the folder job, in this process and warm, with the input feed on and off
    (see the module docstring); medians of ``repeats`` alternating passes."""
    import statistics

    import torch
    from blipcap.backends.feed import PinnedFeed

    backend = cap.backend
    on = backend.feed if backend.feed is not None else PinnedFeed("cpu", backend.dtype)
    paths = [p for part in parts for p in find_images([str(part)])]
    threads = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:  # decoded beforehand, as in step 3
        images = list(pool.map(decoder.file, paths))
    decode_rate = len(paths) / (time.perf_counter() - t0)  # what the job's decode threads can supply
    cap.caption(images, batch_size=batch_size)  # warm-up: graphs captured, kernels chosen
    times: dict[str, dict[str, list[float]]] = {"on": {"model": [], "job": []}, "off": {"model": [], "job": []}}
    for r in range(repeats):
        for mode in ("on", "off"):
            backend.feed = on if mode == "on" else None
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            cap.caption(images, batch_size=batch_size)
            times[mode]["model"].append(time.perf_counter() - t0)
            job = BulkJob(paths, [JsonlSink(tmp / f"ab-{mode}-{r}.jsonl")], batch_size=batch_size, workers=workers)
            times[mode]["job"].append(job.run(cap).seconds)
    backend.feed = on if backend.device.type == "cuda" else None
    n = len(paths)
    out = {}
    for mode, t in times.items():
        model_s, job_s = statistics.median(t["model"]), statistics.median(t["job"])
        out[mode] = {"model_only_images_per_s": n / model_s, "job_images_per_s": n / job_s,
                     "job_share_of_model_only": model_s / job_s, "model_only_s": t["model"], "job_s": t["job"]}
    return {"images": n, "repeats": repeats, "decode_threads": threads, "decode_images_per_s": decode_rate, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate model-only and job runs over this many parts of the images (a shared "
                         "machine's load then weighs on both alike)")
    ap.add_argument("--shape", choices=["large", "base", "tiny"], default="large", help="tiny: to try the script")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workers", type=int, help="the job's decoding threads (default: the CLI's own default)")
    ap.add_argument("--dir", type=Path, help="keep the generated JPEGs here (reused when present)")
    ap.add_argument("--overlap", action="store_true",
                    help="also the input feed on vs off, in this process and warm (module docstring, 5.)")
    ap.add_argument("--ab-repeats", type=int, default=2, help="alternating passes of --overlap's A/B")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    per_round = args.images // args.rounds

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.dir or tmp / "photos"
        t0 = time.perf_counter()
        parts = [root / f"part{r}" for r in range(args.rounds)]
        for r, part in enumerate(parts):
            write_photos(part, per_round, first=r * per_round)
        gen_s = time.perf_counter() - t0
        ckpt = build_random_checkpoint(tmp / "ckpt", args.shape)
        cap = Captioner.load(ckpt, device=args.device, dtype=args.dtype)
        decoder = Decoder.of(cap.preprocessor, cap.max_pixels, pixels=True)  # the folder job's own decoding

        n = model_s = job_s = wall_s = decode_s = 0.0
        same, rounds, sizes = 0, [], []
        for r, part in enumerate(parts):
            paths = find_images([str(part)])
            sizes += [os.path.getsize(p) for p in paths]
            # model only: the same images, decoded and resized beforehand with the job's own decoder
            t0 = time.perf_counter()
            images = [decoder.file(p) for p in paths]
            decode_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            caps = cap.caption(images, batch_size=args.batch_size)
            m_s = time.perf_counter() - t0
            del images
            # the folder job, as a user runs it
            j_s, w_s, rows = run_job(part, tmp / f"x{r}.jsonl", ckpt, args)
            by_path = {row["path"]: row["caption"] for row in rows}
            same += sum(by_path[p] == c.text for p, c in zip(paths, caps))
            n, model_s, job_s, wall_s = n + len(paths), model_s + m_s, job_s + j_s, wall_s + w_s
            rounds.append({"images": len(paths), "model_only_s": m_s, "job_s": j_s, "ratio": m_s / j_s})
        ab = overlap_ab(cap, parts, decoder, tmp, args.batch_size, args.workers, args.ab_repeats) if args.overlap else None

    n = int(n)
    mb = sum(sizes) / len(sizes) / 1e6
    result = {
        "shape": args.shape, "images": n, "rounds": rounds, "image_size": f"{SIZE[0]}x{SIZE[1]}",
        "mean_file_mb": round(mb, 2), "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
        "model_only_images_per_s": n / model_s, "job_images_per_s": n / job_s, "ratio": model_s / job_s,
        "job_wall_s": wall_s, "job_s": job_s, "model_only_s": model_s,
        "decode_resize_s_per_image_one_thread": decode_s / n, "same_captions": same, "generate_s": gen_s,
        "command": f"blipcap caption DIR --output x.jsonl --model CKPT --batch-size {args.batch_size} "
                   f"--device {args.device} --dtype {args.dtype}" + (f" --workers {args.workers}" if args.workers else ""),
        **machine(), "date": time.strftime("%Y-%m-%d"),
    }
    if ab is not None:
        result["overlap_ab"] = ab
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n} JPEGs of {SIZE[0]}x{SIZE[1]} ({mb:.1f} MB each) in {args.rounds} round(s), {args.shape}-shaped random "
          f"BLIP, greedy, 19 tokens, batch {args.batch_size}, {args.device} {args.dtype}; {result.get('cpu', '')}"
          + (f", {result['gpu']}" if "gpu" in result else ""))
    print("| run | seconds | images / s | vs model only |")
    print("| --- | --- | --- | --- |")
    print(f"| model only (images decoded and resized in memory beforehand) | {model_s:.1f} | {n / model_s:.3f} | 1.00 |")
    print(f"| `{result['command']}` (job: first file to last row) | {job_s:.1f} | {n / job_s:.3f} | "
          f"**{model_s / job_s:.2f}** |")
    print(f"| the same, wall clock (process start and model load included) | {wall_s:.1f} | {n / wall_s:.3f} | "
          f"{model_s / wall_s:.2f} |")
    print("per round (model only / job): " + ", ".join(f"{r['ratio']:.2f}" for r in rounds))
    print(f"decode + resize + normalise alone, one thread: {1000 * decode_s / n:.0f} ms per image; "
          f"identical captions in both runs: {same}/{n}")
    if ab is not None:
        cpu_note = "" if args.device.startswith("cuda") else " (CPU: the feed forced on, code path only)"
        print(f"\ninput feed on vs off{cpu_note}: in-process, warm, {ab['images']} images, median of "
              f"{ab['repeats']} alternating passes; target (issue 17): the job >= 0.90 of model only")
        print("| input feed | model only images / s | folder job images / s | job / model only |")
        print("| --- | --- | --- | --- |")
        for mode, label in (("on", "pinned, own copy stream, next batch staged ahead"),
                            ("off", "plain synchronous copy, nothing staged")):
            r = ab[mode]
            print(f"| {mode}: {label} | {r['model_only_images_per_s']:.2f} | {r['job_images_per_s']:.2f} | "
                  f"**{r['job_share_of_model_only']:.2f}** |")
        on, off = ab["on"], ab["off"]
        bound = ab["decode_images_per_s"] < on["model_only_images_per_s"]
        print(f"decoding alone on {ab['decode_threads']} threads: {ab['decode_images_per_s']:.1f} images/s"
              + (": slower than model only, so the job is bound by decoding there, whatever the feed" if bound else ""))
        print(f"feed on / off: model only {on['model_only_images_per_s'] / off['model_only_images_per_s']:.2f}x, "
              f"folder job {on['job_images_per_s'] / off['job_images_per_s']:.2f}x; GPU JPEG decoding "
              f"(torchvision.io.decode_jpeg on cuda) vs these threads: benchmarks/bench_gpu_decode.py")


if __name__ == "__main__":
    main()
