"""Where a TF-backend caption's time goes, beside the torch backend's: is numpy at the boundary fast enough?

    .venv-tf/bin/python benchmarks/bench_tf_search.py [--model DIR | --random large] [--images 8 --beams 3]

The TF backend hands decoding.py its logits as numpy (NumpyOps, as ONNX Runtime does) rather than
through TF array ops. This splits one warm `caption` pass (beam search, fixed-length captions) into
image encoding, the model's decoder steps, cache reorders, and the rest: the search itself plus, for
TF, turning each step's (rows, vocab) logits into numpy. The same split for the torch backend (its
search on torch tensors) is the yardstick.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from blipcap import CaptionOptions, Captioner
from blipcap.bench import synthetic_images


def split(cap: Captioner, images, opts: CaptionOptions) -> dict[str, float]:
    spent = {"encode": 0.0, "steps": 0.0, "reorder": 0.0, "to_numpy": 0.0}
    calls = {"steps": 0}
    backend = cap.backend

    def timed(key, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[key] += time.perf_counter() - t0
            return out
        return run

    start = backend.start

    def timed_start(*a, **k):
        session, logits = start(*a, **k)
        step, reorder = session.step, session.reorder

        def step_timed(tokens):
            calls["steps"] += 1
            return timed("steps", step)(tokens)
        session.step, session.reorder = step_timed, timed("reorder", reorder)
        return session, logits

    backend.encode, backend.start = timed("encode", backend.encode), timed_start
    decode = getattr(getattr(backend, "model", None), "decode", None)
    if backend.name == "tf":  # the boundary itself: the (rows, vocab) logits tensor -> numpy, per step
        class Timed:  # times .numpy() on the decode's logits
            def __init__(self, t):
                self.t = t

            def numpy(self):
                t0 = time.perf_counter()
                out = self.t.numpy()
                spent["to_numpy"] += time.perf_counter() - t0
                return out

        backend.model.decode = lambda *a: (lambda out: (Timed(out[0]), *out[1:]))(decode(*a))
    try:
        t0 = time.perf_counter()
        cap.caption(images, opts, batch_size=len(images))
        total = time.perf_counter() - t0
    finally:
        for name in ("encode", "start"):
            delattr(backend, name)
        if backend.name == "tf":
            backend.model.decode = decode
    rest = total - spent["encode"] - spent["steps"] - spent["reorder"]
    n = calls["steps"]
    return {"total_s": total, "encode_s": spent["encode"], "steps": n, "step_ms": 1e3 * spent["steps"] / n,
            "reorder_ms": 1e3 * spent["reorder"] / n, "to_numpy_ms": 1e3 * spent["to_numpy"] / n,
            "search_and_rest_ms": 1e3 * rest / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model")
    which.add_argument("--random", choices=["large", "base", "tiny"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=20)
    args = ap.parse_args()
    opts = CaptionOptions(num_beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          suppress_artefacts=False)
    images = synthetic_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else Path(tmp) / "ckpt"
        if args.random:
            from blipcap.random_checkpoint import build_random_checkpoint

            build_random_checkpoint(path, args.random)
        for backend in ("torch", "tf"):
            cap = Captioner.load(path, backend=backend, device="cpu", dtype="float32")
            split(cap, images[:2], opts)  # warm-up (traces the tf.functions)
            r = split(cap, images, opts)
            print(f"{backend:5s} total {r['total_s']:.2f} s, encode {r['encode_s']:.2f} s, {r['steps']} steps: "
                  f"step {r['step_ms']:.1f} ms, reorder {r['reorder_ms']:.2f} ms, "
                  f"search and rest {r['search_and_rest_ms']:.2f} ms (of which logits to numpy "
                  f"{r['to_numpy_ms']:.3f} ms) per step", flush=True)
            del cap


if __name__ == "__main__":
    sys.exit(main())
