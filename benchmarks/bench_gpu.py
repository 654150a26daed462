"""blipcap on a GPU against transformers fp16, on the same images and options, in one process
(what benchmarks/gpu.sh runs on a lent GPU):

    python -m benchmarks.bench_gpu                      # large shape, 64 images, batch 64, 3 beams, 20 tokens
    python -m benchmarks.bench_gpu --shape tiny --images 8 --batch-size 8 --device cpu   # to try the script

A random-initialised checkpoint of the shape (nothing downloaded); every caption exactly
--new-tokens long, so every engine does the same work. Runs: blipcap fp16 with CUDA graphs, fp16
without (cuda_graphs=False: the dynamic step, as before graphs), bf16 with graphs, fp16 at --big-batch images per batch, and
transformers fp16; each warmed up by one untimed pass, then the median of --repeats timed passes.
Prints a table (s/image split into host preprocessing, image encoding and decoding; images/s;
speed-up over transformers fp16; identical tokens vs transformers fp16) and writes --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from blipcap import CaptionOptions, Captioner
from blipcap.bench import agreement, machine, synthetic_images, time_caption_split, time_transformers
from blipcap.random_checkpoint import build_random_checkpoint


def run_blipcap(path, images, opts, device, dtype, batch_size, repeats, graphs=None):
    import torch

    cap = Captioner.load(path, device=device, dtype=dtype, cuda_graphs=graphs)
    auto = cap.auto_batch_size(opts)
    for _ in range(2):  # warm-up: a shape is captured as a CUDA graph from its second batch on
        cap.caption(images, opts, batch_size=batch_size)
    runs = [time_caption_split(cap, images, opts, batch_size) for _ in range(repeats)]
    total, enc, pre, tokens = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    del cap
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return dict(seconds=total, encode=enc, preprocess=pre, tokens=tokens, auto_batch=auto, peak_gib=peak,
                all_seconds=[r[0] for r in runs])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="large", choices=["large", "base", "tiny"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--big-batch", type=int, default=256, help="one more blipcap fp16 run at this batch (0: none)")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    opts = CaptionOptions(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          suppress_artefacts=False)
    images = synthetic_images(args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="blipcap-gpu-") as tmp:
        path = build_random_checkpoint(Path(tmp) / "ckpt", args.shape)
        half = "float16" if cuda else "bfloat16"
        plan = [("blipcap", half, True, args.batch_size, images), ("blipcap", half, False, args.batch_size, images),
                ("blipcap", "bfloat16", True, args.batch_size, images)]
        if args.big_batch and cuda:
            plan.append(("blipcap", half, True, args.big_batch, synthetic_images(args.big_batch, seed=1)))
        for engine, dtype, graphs, batch, imgs in plan:
            r = run_blipcap(path, imgs, opts, args.device, dtype, batch, args.repeats, graphs)
            rows.append(dict(engine=engine, dtype=dtype, graphs=graphs and cuda, batch=batch, images=len(imgs), **r))
            print(f"  {engine} {dtype} graphs={graphs and cuda} batch {batch}: {r['seconds']:.3f} s "
                  f"(auto batch would be {r['auto_batch']})", file=sys.stderr, flush=True)
        secs, tokens = time_transformers(path, images, opts, half, "cuda" if cuda else "cpu", repeats=args.repeats,
                                         batch_size=args.batch_size)
        ref = dict(engine="transformers", dtype=half, graphs=False, batch=args.batch_size, images=len(images),
                   seconds=secs, encode=None, preprocess=None, tokens=tokens)
        rows.append(ref)

    ref_per_image = ref["seconds"] / ref["images"]
    lines = [
        f"{args.shape} shape, {args.beams} beams, {args.new_tokens} new tokens; {machine()}",
        "",
        "| engine | dtype | CUDA graphs | batch | s / image | preprocess | encode | decode | images / s "
        "| vs transformers | identical tokens |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        n = r["images"]
        per = r["seconds"] / n
        split = ["-", "-", "-"]
        if r["encode"] is not None:
            rest = r["seconds"] - r["encode"] - r["preprocess"]
            split = [f"{r['preprocess'] / n:.4f}", f"{r['encode'] / n:.4f}", f"{rest / n:.4f}"]
        same = f"{100 * agreement(r['tokens'], ref['tokens']):.1f}%" if n == ref["images"] else "-"
        lines.append(f"| {r['engine']} | {r['dtype']} | {'yes' if r['graphs'] else 'no'} | {r['batch']} | "
                     f"{per:.4f} | {' | '.join(split)} | {n / r['seconds']:.1f} | {ref_per_image / per:.2f}x | {same} |")
    ours = rows[0]
    speedup = ref_per_image / (ours["seconds"] / ours["images"])
    share = agreement(ours["tokens"], ref["tokens"])
    lines += ["", f"target (issue 17): blipcap {ours['dtype']} >= 5x transformers {half} with >= 98% identical tokens: "
                  f"{speedup:.2f}x, {100 * share:.1f}% -> {'met' if speedup >= 5 and share >= 0.98 else 'NOT met'}"]
    for r in rows:
        if r.get("peak_gib") is not None:
            lines.append(f"blipcap {r['dtype']} batch {r['batch']}: peak GPU memory {r['peak_gib']:.1f} GiB, "
                         f"--batch-size auto would pick {r['auto_batch']}; timed passes "
                         f"{', '.join(f'{s:.3f}' for s in r['all_seconds'])} s (median {statistics.median(r['all_seconds']):.3f})")
    print("\n".join(lines))
    if args.json:
        for r in rows:
            r.pop("tokens")
        args.json.write_text(json.dumps(dict(rows=rows, speedup=speedup, agreement=share, machine=machine()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
