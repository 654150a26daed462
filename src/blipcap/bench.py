"""`blipcap bench`: time blipcap (and, optionally, transformers) on the same images and options.

Owns the measurement: load time, seconds per image split into image encoding and decoding,
images/s, peak resident memory, and, with `against="transformers"`, transformers' figures at fp32
and at bf16 (fp16 on a GPU) from the same run, the ratios, and token agreement.
"""

from __future__ import annotations

import copy
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Timing:
    engine: str
    dtype: str
    seconds: float  # wall time to caption all images (after a one-image warm-up)
    images: int
    encode_seconds: float | None = None
    load_seconds: float | None = None
    peak_rss_mb: float | None = None
    preprocess_seconds: float | None = None  # images to pixels on the host (part of `seconds`)

    @property
    def s_per_image(self) -> float:
        return self.seconds / self.images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@dataclass
class BenchResult:
    model: str
    options: dict
    machine: dict
    runs: list[Timing] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)  # engine -> share of identical tokens vs blipcap

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for run, d in zip(self.runs, out["runs"]):
            d.update(s_per_image=run.s_per_image, images_per_s=run.images_per_s)
        base = self.runs[0].seconds if self.runs else None
        # how many times faster blipcap's run is than each other run
        out["speedup"] = {f"{r.engine} {r.dtype}": r.seconds / base for r in self.runs[1:]} if base else {}
        return out


def machine() -> dict[str, Any]:
    import platform

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": model, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    tf = sys.modules.get("tensorflow")  # only when the TF backend ran: never imported for this
    if tf is not None:
        info["tensorflow"] = tf.__version__
    return info


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Smooth colour fields at 640x480: deterministic, and not all alike to an image encoder."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((640, 480), Image.BILINEAR)
            for _ in range(n)]


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _TimedEncode:
    """A backend whose ``encode`` calls are timed (waiting for CUDA's kernels to finish); the rest is
    the wrapped backend's."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, 0.0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode(self, pixels):
        _cuda_sync(self.backend)  # CUDA runs asynchronously: nothing earlier may count as encoding
        t0 = time.perf_counter()
        out = self.backend.encode(pixels)
        _cuda_sync(self.backend)  # ... and the encoder's kernels must have finished, not just launched
        self.seconds += time.perf_counter() - t0
        return out


def _cuda_sync(backend) -> None:
    device = getattr(backend, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


class _TimedPreprocess:
    """A preprocessor whose ``batch`` calls (images -> pixels, on the host) are timed."""

    def __init__(self, pre):
        self.pre, self.seconds = pre, 0.0

    def __getattr__(self, name):
        return getattr(self.pre, name)

    def batch(self, images, out=None):
        t0 = time.perf_counter()
        out = self.pre.batch(images, out=out)
        self.seconds += time.perf_counter() - t0
        return out


def time_caption(cap, images, opts, batch_size: int) -> tuple[float, float, list[list[int]]]:
    """One timed `cap.caption` pass: (seconds, of which image encoding, token ids per image).

    The encoder's share is read inside the pass, from a copy of the captioner whose backend times
    each `encode` call, so it adds up with the decoding's rest to the pass's own time.
    """
    total, enc, _, tokens = time_caption_split(cap, images, opts, batch_size)
    return total, enc, tokens


def time_caption_split(cap, images, opts, batch_size) -> tuple[float, float, float, list[list[int]]]:
    """`time_caption` with the host's preprocessing timed too: (seconds, encoding, preprocessing,
    tokens); what remains of the seconds is decoding (the search and the decoder steps)."""
    timed = copy.copy(cap)  # shallow: the same model, codec and preprocessor
    timed.backend = encoder = _TimedEncode(cap.backend)
    timed.preprocessor = pre = _TimedPreprocess(cap.preprocessor)
    t0 = time.perf_counter()
    caps = timed.caption(images, opts, batch_size=batch_size)
    total = time.perf_counter() - t0
    return total, encoder.seconds, pre.seconds, [c.token_ids for c in caps]


def _time_blipcap(cap, images, opts, batch_size: int) -> tuple[float, float, float, list[list[int]]]:
    cap.caption(images, opts, batch_size=batch_size)  # warm-up: one untimed pass, as for transformers
    return time_caption_split(cap, images, opts, batch_size)


def _time_transformers(path: Path, images, opts, dtype: str, device: str) -> tuple[float, list[list[int]]]:
    return time_transformers(path, images, opts, dtype, device)


def time_transformers(path: Path, images, opts, dtype: str, device: str, repeats: int = 1,
                      batch_size: int | None = None) -> tuple[float, list[list[int]]]:
    """transformers' generate on the same images and options: (median seconds of `repeats` timed
    passes after one warm-up pass, tokens per image); `batch_size` images per call (default: all)."""
    import torch
    import transformers

    torch_dtype = getattr(torch, dtype)
    model = transformers.BlipForConditionalGeneration.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    # the PIL backend resizes as blipcap does and needs no torchvision (transformers >= 5)
    proc_cls = getattr(transformers, "BlipImageProcessorPil", transformers.BlipImageProcessor)
    proc = proc_cls.from_pretrained(path)
    gen = dict(num_beams=opts.num_beams, max_new_tokens=opts.max_new_tokens, min_new_tokens=opts.min_new_tokens)

    def run(batch):
        with torch.inference_mode():
            pix = proc(batch, return_tensors="pt").pixel_values.to(device, torch_dtype)
            return model.generate(pixel_values=pix, **gen)

    step = batch_size or len(images)

    def run_all():
        return [row for i in range(0, len(images), step) for row in run(images[i : i + step]).tolist()]

    run_all()  # warm-up: one untimed pass over the same images, as for blipcap
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = run_all()  # .tolist() waits for the device
        times.append(time.perf_counter() - t0)
    secs = float(np.median(times))
    sep = model.config.text_config.sep_token_id
    tokens = []
    for row in out:
        gen_ids = row[1:]
        tokens.append(gen_ids[: gen_ids.index(sep)] if sep in gen_ids else gen_ids)
    return secs, tokens


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = total = 0
    for x, y in zip(a, b):
        total += max(len(x), len(y))
        same += sum(p == q for p, q in zip(x, y))
    return same / max(total, 1)


def run_bench(model: str | None = None, *, random: str | None = None, backend: str = "auto", device: str = "auto",
              dtype: str = "auto", batch_size: int = 8, images: int = 8, beams: int = 3, new_tokens: int = 20,
              against: str | None = None, image_kv_dtype: str = "auto") -> BenchResult:
    from .captioner import Captioner
    from .options import CaptionOptions
    from .spec import ModelSpec

    if (model is None) == (random is None):
        raise ValueError("give exactly one of a model or --random SHAPE")
    opts = CaptionOptions(num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          suppress_artefacts=False)  # fixed-length captions: every engine does the same work
    imgs = synthetic_images(images)
    with tempfile.TemporaryDirectory(prefix="blipcap-bench-") as tmp:
        path = Path(model) if model else None
        # building and exporting run in child processes, so this process's peak memory is captioning's
        if random:
            path = Path(tmp) / f"random-{random}"
            _child("from blipcap.random_checkpoint import build_random_checkpoint as b; b(sys.argv[1], sys.argv[2])",
                   str(path), random)
        load_from = path
        if backend == "onnx" and random:
            load_from = Path(tmp) / "onnx"
            _child("from blipcap.export import export_onnx as e; e(sys.argv[1], sys.argv[2], int8=sys.argv[3] == 'int8')",
                   str(path), str(load_from), dtype)
        t0 = time.perf_counter()
        spec = ModelSpec(str(load_from if path else model), backend=backend,
                         **({} if backend == "onnx" else dict(device=device, dtype=dtype, image_kv_dtype=image_kv_dtype)))
        cap = Captioner.load(spec)
        load_s = time.perf_counter() - t0
        info = cap.backend.info()
        dtype_label = info["dtype"] + (f", image K/V {info['image_kv_dtype']}" if "image_kv_dtype" in info else "")
        total, enc, pre, ours = _time_blipcap(cap, imgs, opts, batch_size)
        result = BenchResult(model=str(model or f"random {random}"), machine=machine(),
                             options=dict(images=images, beams=beams, new_tokens=new_tokens, batch_size=batch_size,
                                          backend=info["backend"], device=info["device"]))
        result.runs.append(Timing("blipcap", dtype_label, total, images, enc, load_s, _peak_rss_mb(), pre))
        del cap
        if against == "transformers":
            hf_path = path if path is not None else _resolve_for_transformers(model)
            dev = "cuda" if info["device"].startswith("cuda") else "cpu"
            for hf_dtype in ("float32", "float16" if dev == "cuda" else "bfloat16"):
                secs, tokens = _time_transformers(hf_path, imgs, opts, hf_dtype, dev)
                result.runs.append(Timing("transformers", hf_dtype, secs, images))
                result.agreement[f"transformers {hf_dtype}"] = agreement(ours, tokens)
    return result


def _child(code: str, *args: str) -> None:
    import subprocess

    subprocess.run([sys.executable, "-c", "import sys; " + code, *args], check=True)


def _resolve_for_transformers(model: str) -> Path:
    from .hub import resolve

    return resolve(model).path


def format_table(result: BenchResult) -> str:
    m, o = result.machine, result.options
    lines = [
        f"model: {result.model}; {o['images']} images, batch {o['batch_size']}, {o['beams']} beams, "
        f"{o['new_tokens']} new tokens; backend {o['backend']} on {o['device']}",
        f"machine: {m.get('cpu')}, {m.get('threads', '?')} threads{', ' + m['gpu'] if 'gpu' in m else ''}; {m['date']}",
        "",
        "| engine | dtype | s / image | preprocess s / image | encode s / image | decode s / image | images / s "
        "| blipcap speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = result.runs[0].seconds
    for r in result.runs:
        pre = f"{r.preprocess_seconds / r.images:.3f}" if r.preprocess_seconds is not None else "-"
        enc = f"{r.encode_seconds / r.images:.3f}" if r.encode_seconds is not None else "-"
        rest = r.seconds - (r.encode_seconds or 0.0) - (r.preprocess_seconds or 0.0)
        dec = f"{rest / r.images:.3f}" if r.encode_seconds is not None else "-"
        lines.append(f"| {r.engine} | {r.dtype} | {r.s_per_image:.3f} | {pre} | {enc} | {dec} | {r.images_per_s:.3f} | "
                     f"{r.seconds / base:.2f}x |")
    first = result.runs[0]
    lines.append("")
    lines.append(f"blipcap load: {first.load_seconds:.2f} s; peak RSS: {first.peak_rss_mb:.0f} MB")
    for engine, share in result.agreement.items():
        lines.append(f"identical tokens, blipcap vs {engine}: {100 * share:.1f}%")
    return "\n".join(lines)
