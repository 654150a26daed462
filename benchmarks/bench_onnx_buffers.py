"""The ONNX backend's kept image-memory arrays (backends/onnx._Buffers) against new arrays for every
batch, in one process, alternating: captioning time per image and the encoder's share.

    python -m benchmarks.bench_onnx_buffers EXPORT_DIR [--rounds 4]

EXPORT_DIR: a `blipcap export-onnx` directory (e.g. `--int8` of `random_checkpoint`'s large shape).
Same 8 images, 3 beams, exactly 20 new tokens, batch 8; the captions must be equal in both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


class _Fresh:
    """New arrays for every batch (the behaviour before _Buffers)."""

    def take(self, like, n):
        return [np.empty((n,) + a.shape[1:], a.dtype) for a in like]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    from blipcap import CaptionOptions, Captioner
    from blipcap.backends.onnx import _Buffers
    from blipcap.bench import machine, synthetic_images

    cap = Captioner.load(args.export, backend="onnx")
    opts = CaptionOptions(num_beams=3, max_new_tokens=20, min_new_tokens=20, suppress_artefacts=False)
    images = synthetic_images(8)
    encode = cap.backend.encode
    spent = [0.0]

    def timed_encode(pixels):
        t = time.perf_counter()
        out = encode(pixels)
        spent[0] += time.perf_counter() - t
        return out

    cap.backend.encode = timed_encode
    results: dict[str, list[tuple[float, float]]] = {"new arrays every batch": [], "kept arrays (_Buffers)": []}
    tokens = {}
    cap.caption(images, options=opts, batch_size=8)  # warm-up
    for _ in range(args.rounds):
        for name, buffers in (("new arrays every batch", _Fresh()), ("kept arrays (_Buffers)", _Buffers())):
            cap.backend._buffers = buffers
            cap.caption(images, options=opts, batch_size=8)  # the kept arrays' first batch allocates them
            spent[0] = 0.0
            t = time.perf_counter()
            got = cap.caption(images, options=opts, batch_size=8)
            results[name].append(((time.perf_counter() - t) / len(images), spent[0] / len(images)))
            tokens[name] = [c.token_ids for c in got]
    m = machine()
    print(f"{args.export}; 8 images, batch 8, 3 beams, 20 new tokens; {m.get('cpu')}, {m.get('date')}")
    print("| image memory | s / image (median of rounds) | encode s / image | rounds |")
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        total, enc = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"| {name} | {total:.3f} | {enc:.3f} | {', '.join(f'{r[0]:.3f}' for r in runs)} |")
    a, b = (statistics.median(r[0] for r in runs) for runs in results.values())
    print(f"kept / new: {b / a:.3f} of the time; captions equal: {len(set(map(str, tokens.values()))) == 1}")


if __name__ == "__main__":
    main()
