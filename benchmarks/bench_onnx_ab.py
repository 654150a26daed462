"""ONNX exports side by side: which of two (or more) graph variants captions faster, and how closely.

    python -m benchmarks.bench_onnx_ab REF_EXPORT EXPORT [EXPORT ...] [--repeats 5]

Every export is loaded into one process and captions the same 8 synthetic images (3 beams, exactly
20 new tokens) once untimed, then `--repeats` rounds in which each export captions them once, in
turn, so machine noise spreads over all of them alike. Reported per export: the median seconds per
image, split into image encoding and the rest (decoding, the search, preprocessing), and its top-1
agreement per decoding step with REF_EXPORT (usually an fp32 export) under teacher forcing.

To compare a graph change, export the same checkpoint with the code before and after it (e.g. from
a `git worktree` of the earlier commit) and pass both directories.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.bench_onnx import teacher_forced_agreement  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from blipcap import Captioner
    from blipcap.bench import synthetic_images, time_caption
    from blipcap.options import CaptionOptions

    opts = CaptionOptions(num_beams=3, max_new_tokens=20, min_new_tokens=20, suppress_artefacts=False)
    imgs = synthetic_images(args.images)
    caps = {d: Captioner.load(d, backend="onnx") for d in args.exports}
    times: dict[str, list[tuple[float, float]]] = {d: [] for d in caps}
    for cap in caps.values():
        cap.caption(imgs, opts, batch_size=args.images)  # warm-up
    for _ in range(args.repeats):
        for d, cap in caps.items():
            total, encode, _ = time_caption(cap, imgs, opts, args.images)
            times[d].append((total / args.images, encode / args.images))
    ref = Captioner.load(args.reference, backend="onnx")
    tokens = [c.token_ids for c in ref.caption(imgs, opts, batch_size=args.images)]
    pixels = ref.preprocessor.batch(imgs)
    print(f"{args.images} images, 3 beams, 20 new tokens, median of {args.repeats} rounds; agreement vs {args.reference}")
    print("| export | s / image | image encoder | the rest | top-1 agreement per step |")
    print("| --- | --- | --- | --- | --- |")
    for d, cap in caps.items():
        t = np.array(times[d])
        agree = teacher_forced_agreement(ref.backend, cap.backend, pixels, tokens, ref.codec.bos_id)
        print(f"| {d} | {np.median(t[:, 0]):.3f} | {np.median(t[:, 1]):.3f} | {np.median(t[:, 0] - t[:, 1]):.3f} | "
              f"{100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
