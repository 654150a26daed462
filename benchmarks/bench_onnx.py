"""transformers fp32 vs blipcap torch fp32 vs blipcap ONNX fp32 / int8, in one run.

    python -m benchmarks.bench_onnx                      # large shape, 8 images, 3 beams, 20 new tokens
    python -m benchmarks.bench_onnx --shape base --images 2 --new-tokens 5   # a quick look

A random-initialised checkpoint (the test suite's peaked weights) is built with transformers in a
temp dir and exported with `blipcap.export.export_onnx` (fp32; int8 with per-tensor and with
per-channel weight scales). All engines caption the same images with the same options; each is
warmed up by one untimed pass, then timed `--repeats` times in a row (transformers first, in the
fresh process, where it runs fastest). Reported: the median seconds per image (and the image
encoder's share, timed inside those passes), the ratio of medians to transformers, and the int8
graphs' top-1 agreement with fp32 per decoding step under teacher forcing (both decoders are
fed the fp32 graphs' own tokens, so one early disagreement does not cascade).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_core import build_random_checkpoint, cpu_model, images, shape_config  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def teacher_forced_agreement(fp32, int8, pixels: np.ndarray, tokens: list[list[int]], bos: int) -> float:
    """Share of decoding steps where the int8 graphs' argmax equals fp32's, on fp32's own tokens."""
    width = max(len(t) for t in tokens)
    rows = np.array([t + [t[-1]] * (width - len(t)) for t in tokens], dtype=np.int64)
    start = np.full((len(tokens), 1), bos, dtype=np.int64)
    valid = np.ones_like(start, dtype=bool)
    same = total = 0
    sessions = []
    for backend in (fp32, int8):
        session, logits = backend.start(backend.encode(pixels), 1, start, valid, width + 1)
        sessions.append((session, [logits]))
    for t in range(width):
        for session, out in sessions:
            out.append(session.step(rows[:, t]))
    a = np.stack(sessions[0][1]).argmax(-1)
    b = np.stack(sessions[1][1]).argmax(-1)
    for i, seq in enumerate(tokens):
        n = len(seq) + 1
        same += int((a[:n, i] == b[:n, i]).sum())
        total += n
    return same / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["large", "base"], default="large")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed passes per engine after its warm-up, one after another; the median is reported")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import transformers

    from blipcap import Captioner
    from blipcap.bench import time_caption
    from blipcap.options import CaptionOptions
    from blipcap.export import export_onnx

    imgs = images(args.images)
    gen = dict(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
               suppress_artefacts=False)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_random_checkpoint(tmp / "ckpt", seed=0, **shape_config(args.shape))
        exports = {}
        for name, kw in (("onnx fp32", {}), ("onnx int8 (per-tensor)", dict(int8=True, per_channel=False)),
                         ("onnx int8 (per-channel)", dict(int8=True, per_channel=True))):
            _, secs = timed(lambda: export_onnx(ckpt, tmp / name.replace(" ", "_"), **kw))
            exports[name] = (tmp / name.replace(" ", "_"), secs)

        if not args.skip_transformers:
            ref = transformers.BlipForConditionalGeneration.from_pretrained(ckpt).eval()
            proc = transformers.BlipImageProcessorPil.from_pretrained(ckpt)
            hf = {k: v for k, v in gen.items() if k != "suppress_artefacts"}

            def run_ref(batch):
                with torch.inference_mode():
                    return ref.generate(pixel_values=proc(batch, return_tensors="pt").pixel_values, **hf)

            run_ref(imgs)  # warm-up: one untimed pass over the same batch, as for every engine
            rows["transformers fp32"] = float(np.median([timed(lambda: run_ref(imgs))[1] for _ in range(args.repeats)]))
            del ref

        engines = {"blipcap torch fp32": Captioner.load(ckpt, backend="torch", device="cpu", dtype="float32")}
        engines.update({name: Captioner.load(path, backend="onnx") for name, (path, _) in exports.items()})
        tokens = {}
        encode_s = {}
        opts = CaptionOptions(**gen)
        for name, cap in engines.items():
            cap.caption(imgs, opts, batch_size=args.images)  # warm-up pass, untimed
            passes = [time_caption(cap, imgs, opts, args.images) for _ in range(args.repeats)]
            rows[name] = float(np.median([total for total, _, _ in passes]))
            encode_s[name] = float(np.median([enc for _, enc, _ in passes]))  # read inside the passes
            tokens[name] = passes[-1][2]
        pixels = engines["onnx fp32"].preprocessor.batch(imgs)
        agreement = {
            name: teacher_forced_agreement(engines["onnx fp32"].backend, engines[name].backend, pixels,
                                           tokens["onnx fp32"], engines[name].codec.bos_id)
            for name in engines if "int8" in name
        }
        same_as_torch = float(np.mean([a == b for a, b in zip(tokens["onnx fp32"], tokens["blipcap torch fp32"])]))

    base = rows.get("transformers fp32")
    result = {
        "shape": args.shape, "images": args.images, "beams": args.beams, "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "s_per_image": {k: v / args.images for k, v in rows.items()},
        "encoder_s_per_image": {k: v / args.images for k, v in encode_s.items()},
        "ratio_to_transformers": {k: base / v for k, v in rows.items()} if base else None,
        "int8_top1_agreement_teacher_forced": agreement,
        "onnx_fp32_captions_equal_torch": same_as_torch,
        "export_s": {k: v for k, (_, v) in exports.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.shape}-shaped random BLIP, {args.images} images, {args.beams} beams, {args.new_tokens} new tokens, "
          f"median of {args.repeats} timed passes each, {result['cpu']}, {result['threads']} threads, {result['date']}")
    print("| engine | s / image | of which image encoder | vs transformers fp32 |")
    print("| --- | --- | --- | --- |")
    for name, secs in rows.items():
        enc = f"{encode_s[name] / args.images:.3f}" if name in encode_s else "-"
        ratio = f"{base / secs:.2f}x" if base else "-"
        print(f"| {name} | {secs / args.images:.3f} | {enc} | {ratio} |")
    for name, value in agreement.items():
        print(f"{name}: top-1 agreement with onnx fp32 per step (teacher forced): {100 * value:.1f}%")
    print(f"onnx fp32 captions identical to torch fp32: {100 * same_as_torch:.0f}% of images")


if __name__ == "__main__":
    main()
