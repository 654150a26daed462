"""`blipcap serve` under load: 32 concurrent clients versus sequential single-image requests.

    python -m benchmarks.bench_serve                          # large shape, CPU fp32, greedy, 4 new tokens
    python -m benchmarks.bench_serve --device cuda --dtype float16 --sequential 64 --requests 512

Builds a random-initialised checkpoint of the chosen shape in a temp dir (nothing is downloaded),
starts `blipcap serve` on a free 127.0.0.1 port, and sends 640x480 JPEGs, one image per request,
first one request at a time, then from `--clients` concurrent clients, then the same concurrent load
as OpenAI chat completions (POST /v1/chat/completions, the image as a data: URL, the same options
through `caption_options`). Every caption is forced to exactly `--new-tokens` tokens (min = max) so
all phases do the same work. Reports images/s, p50 and p99 latency of each phase, the concurrent
throughput over the sequential, chat completions' throughput over /v1/caption's under the same
load, and the mean batch size the server formed (from its /metrics). All traffic stays on the
loopback interface.

With ``--model-only`` the same images (decoded beforehand), options, device and dtype are then
captioned in this process by ``Captioner.caption(images, batch_size=--max-batch-size)``, warm,
after the server has stopped: the server's concurrent images/s as a share of the model alone's
(issue 17's target on a GPU: >= 0.90).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from blipcap.bench import machine, synthetic_images
from blipcap.random_checkpoint import build_random_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def spawn_serve(serve_args: list[str], log, *, env: dict | None = None, ready_s: float = 600) -> tuple[subprocess.Popen, str]:
    """`blipcap serve SERVE_ARGS` on a free 127.0.0.1 port, logging to ``log``; returns once /readyz says 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "blipcap", "serve", *serve_args, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"blipcap serve exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def start_server(model: Path, args, log) -> tuple[subprocess.Popen, str]:
    return spawn_serve(["--model", str(model), "--device", args.device, "--dtype", args.dtype,
                        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                        "--max-queue", str(max(256, 2 * args.clients)), "--timeout-s", "3600", "--log-level",
                        "warning", "--served-model-name", "bench"], log, env={"HF_HUB_OFFLINE": "1"})


async def phase(base: str, bodies: list[bytes], options: dict, requests: int, clients: int,
                chat: bool = False) -> tuple[float, list]:
    """`requests` single-image requests from `clients` concurrent clients, to /v1/caption or (chat)
    /v1/chat/completions: (wall seconds, latencies)."""
    latencies: list[float] = []
    next_index = iter(range(requests))
    form = {"options": json.dumps(options)}

    async def send(http: httpx.AsyncClient, i: int) -> httpx.Response:
        body = bodies[i % len(bodies)]
        if not chat:
            return await http.post(f"{base}/v1/caption", files={"image": (f"{i}.jpg", body, "image/jpeg")}, data=form)
        url = "data:image/jpeg;base64," + base64.b64encode(body).decode()
        message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        return await http.post(f"{base}/v1/chat/completions",
                               json={"model": "bench", "messages": [message], "caption_options": options})

    async def client(http: httpx.AsyncClient):
        for i in next_index:
            t0 = time.perf_counter()
            r = await send(http, i)
            latencies.append(time.perf_counter() - t0)
            ok = r.status_code == 200 and ("choices" in r.json() if chat else "generated_text" in r.json()[0])
            if not ok:
                raise SystemExit(f"request {i} failed: {r.status_code} {r.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def summary(name: str, requests: int, wall: float, latencies: list[float]) -> dict:
    return {"phase": name, "requests": requests, "seconds": wall, "images_per_s": requests / wall,
            "p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99))}


def time_model_only(ckpt: Path, bodies: list[bytes], options: dict, args) -> float:
    """images/s of ``Captioner.caption`` alone on as many images as the concurrent phase sent."""
    from PIL import Image

    from blipcap import Captioner, CaptionOptions

    cap = Captioner.load(ckpt, device=args.device, dtype=args.dtype)
    opts = CaptionOptions(**options)
    decoded = [Image.open(io.BytesIO(body)).convert("RGB") for body in bodies]
    images = [decoded[i % len(decoded)] for i in range(args.requests)]
    for _ in range(2):  # warm-up, as the server's: on CUDA the second batch of a shape captures its graphs
        cap.caption(images[: args.max_batch_size], opts, batch_size=args.max_batch_size)
    t0 = time.perf_counter()
    cap.caption(images, opts, batch_size=args.max_batch_size)  # returns plain captions: the device is done
    return args.requests / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["large", "base", "tiny"], default="large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sequential", type=int, default=6, help="requests sent one at a time")
    ap.add_argument("--requests", type=int, default=48, help="requests sent by the concurrent clients, in all")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--model-only", action="store_true",
                    help="also the model alone on the same images, and the server's share of it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    options = {"num_beams": args.beams, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    bodies = []
    for image in synthetic_images(16):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        bodies.append(buf.getvalue())

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w+") as log:
        ckpt = build_random_checkpoint(Path(tmp) / "ckpt", args.shape)
        proc, base = start_server(ckpt, args, log)
        try:
            # warm-up: one request alone, then two full batches (first-use allocations for that size;
            # on CUDA a shape's decoder step is captured as a graph in its second batch)
            asyncio.run(phase(base, bodies, options, 1, 1))
            for _ in range(2):
                asyncio.run(phase(base, bodies, options, args.max_batch_size, args.max_batch_size))
            seq_wall, seq_lat = asyncio.run(phase(base, bodies, options, args.sequential, 1))
            before = httpx.get(f"{base}/metrics").text
            con_wall, con_lat = asyncio.run(phase(base, bodies, options, args.requests, args.clients))
            after = httpx.get(f"{base}/metrics").text
            chat_wall, chat_lat = asyncio.run(phase(base, bodies, options, args.requests, args.clients, chat=True))
            after_chat = httpx.get(f"{base}/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        model_only = time_model_only(ckpt, bodies, options, args) if args.model_only else None
    def mean_batch(first: str, last: str) -> float:
        images = metric(last, "blipcap_batch_size_sum") - metric(first, "blipcap_batch_size_sum")
        return images / (metric(last, "blipcap_batch_size_count") - metric(first, "blipcap_batch_size_count"))

    rows = [summary("sequential, 1 client", args.sequential, seq_wall, seq_lat),
            summary(f"{args.clients} concurrent clients", args.requests, con_wall, con_lat),
            summary(f"{args.clients} concurrent clients, chat completions", args.requests, chat_wall, chat_lat)]
    result = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "beams": args.beams,
              "new_tokens": args.new_tokens, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
              "phases": rows, "throughput_ratio": rows[1]["images_per_s"] / rows[0]["images_per_s"],
              "chat_over_caption": rows[2]["images_per_s"] / rows[1]["images_per_s"],
              "mean_batch_size": mean_batch(before, after), "mean_batch_size_chat": mean_batch(after, after_chat),
              "machine": machine()}
    if model_only is not None:
        result["model_only_images_per_s"] = model_only
        result["server_over_model_only"] = rows[1]["images_per_s"] / model_only
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.shape}-shaped random BLIP, {args.device} {args.dtype}, beams={args.beams}, exactly "
          f"{args.new_tokens} new tokens, --max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms}")
    print(", ".join(f"{k} {v}" for k, v in result["machine"].items()))
    print("| clients | requests | images / s | p50 latency | p99 latency |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['phase']} | {row['requests']} | {row['images_per_s']:.3f} | {row['p50_s']:.2f} s "
              f"| {row['p99_s']:.2f} s |")
    print(f"throughput ratio: {result['throughput_ratio']:.2f}x; mean batch under load: "
          f"{result['mean_batch_size']:.1f} images")
    print(f"chat completions over /v1/caption under the same load: {result['chat_over_caption']:.2f}x; "
          f"mean batch: {result['mean_batch_size_chat']:.1f} images")
    if model_only is not None:
        print(f"model only (same images decoded beforehand, batch {args.max_batch_size}, warm): {model_only:.3f} "
              f"images/s; the server under {args.clients} clients reaches {result['server_over_model_only']:.2f} "
              f"of it (target on a GPU: >= 0.90)")


if __name__ == "__main__":
    main()
