"""blipcap vs transformers, side by side in one process, on a random-initialised BLIP checkpoint.

    python -m benchmarks.bench_core                      # large shape, 8 images, 3 beams, 20 new tokens
    python -m benchmarks.bench_core --shape base --images 4

Builds the checkpoint with transformers in a temp dir (nothing is downloaded or committed), captions
the same images with both at fp32 and reports seconds per image, the speed ratio, and the share of
output tokens that are identical. The random weights are the test suite's (peaked next-token
distributions), so agreement measures numerics rather than coin flips between equal logits.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from blipcap.bench import agreement, machine
from blipcap.bench import synthetic_images as images
from tests.helpers.checkpoints import build_random_checkpoint, shape_config


def cpu_model() -> str:
    return machine()["cpu"]


def best_of(fn, repeat: int = 3) -> float:
    """Seconds of the fastest of `repeat` calls of fn, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["large", "base"], default="large")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import transformers

    from blipcap import Captioner

    torch.manual_seed(0)
    imgs = images(args.images)
    gen = dict(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_random_checkpoint(Path(tmp) / "ckpt", seed=0, **shape_config(args.shape))

        t0 = time.perf_counter()
        cap = Captioner.load(ckpt, device="cpu", dtype="float32")
        ours_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = transformers.BlipForConditionalGeneration.from_pretrained(ckpt).eval()
        ref_load = time.perf_counter() - t0
        # the PIL backend: the same resize as blipcap, and no torchvision needed
        processor = transformers.BlipImageProcessorPil.from_pretrained(ckpt)

        # warm both up with one untimed pass over the same batch (first-call allocations, oneDNN
        # kernel selection for these shapes): the timed pass measures steady-state throughput
        cap.caption(imgs, batch_size=len(imgs), **gen)
        with torch.inference_mode():
            ref.generate(pixel_values=processor(imgs, return_tensors="pt").pixel_values, **gen)

        t0 = time.perf_counter()
        with torch.inference_mode():
            pix = processor(imgs, return_tensors="pt").pixel_values
            out = ref.generate(pixel_values=pix, **gen)
        ref_s = time.perf_counter() - t0
        ref_tokens = [row[1:] for row in out.tolist()]

        t0 = time.perf_counter()
        caps = cap.caption(imgs, batch_size=args.images, suppress_artefacts=False, **gen)
        ours_s = time.perf_counter() - t0
        our_tokens = [c.token_ids for c in caps]

    result = {
        "shape": args.shape, "images": args.images, "beams": args.beams, "new_tokens": args.new_tokens,
        "dtype": "float32", "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "transformers": transformers.__version__, "torch": torch.__version__,
        "transformers_s_per_image": ref_s / args.images, "blipcap_s_per_image": ours_s / args.images,
        "speedup": ref_s / ours_s, "token_agreement": agreement(our_tokens, ref_tokens),
        "load_s": {"blipcap": ours_load, "transformers": ref_load},
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.shape}-shaped random BLIP, {args.images} images, {args.beams} beams, {args.new_tokens} new tokens, "
          f"fp32, {result['threads']} threads, {result['cpu']}")
    print("| engine | s / image | images / s | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| transformers {transformers.__version__} | {ref_s / args.images:.3f} | {args.images / ref_s:.3f} | 1.00x |")
    print(f"| blipcap | {ours_s / args.images:.3f} | {args.images / ours_s:.3f} | {ref_s / ours_s:.2f}x |")
    print(f"identical output tokens: {100 * result['token_agreement']:.1f}%")
    print(f"load: blipcap {ours_load:.2f} s, transformers {ref_load:.2f} s")


if __name__ == "__main__":
    main()
