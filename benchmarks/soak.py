"""A bounded soak of `blipcap serve` on 127.0.0.1: good requests from concurrent clients, first alone,
then mixed with hostile traffic (bad bodies, bad options, oversized bodies, bombs, idle and slow
connections), then checks that every good request got its right caption and the server is healthy.

    python -m benchmarks.soak                         # tiny fixture model; prints the figures as JSON
    python -m benchmarks.soak --good 200 --hostile 200

tests/hardening/test_soak.py runs it with small counts; RELIABILITY.md has a run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import socket
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.helpers.folders import png_header_only
from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny-blip"


def _png(spec) -> bytes:
    buf = io.BytesIO()
    make_image(*spec).save(buf, "PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _good(client: httpx.AsyncClient, spec, latencies: list, wrong: list, statuses: Counter) -> None:
    t0 = time.perf_counter()
    r = await client.post("/v1/caption", files=[("image", ("i.png", _png(spec), "image/png"))])
    latencies.append(time.perf_counter() - t0)
    statuses[f"good {r.status_code}"] += 1
    if r.status_code != 200 or r.json()[0]["generated_text"] != caption_for(*spec):
        wrong.append((spec, r.status_code, r.text[:200]))


async def _hostile(client: httpx.AsyncClient, port: int, kind: str, statuses: Counter, limit_mb: float) -> None:
    if kind in ("idle", "slow"):
        def hold() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                if kind == "slow":
                    for chunk in (b"POST /v1/caption HTTP/1.1\r\n", b"Host: x\r\n", b"Content-Length: 10\r\n"):
                        s.sendall(chunk)
                        time.sleep(0.7)
                try:
                    head = s.recv(64)
                except OSError:
                    return "reset"
                return head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1") else "closed"
        statuses[f"{kind} {await asyncio.to_thread(hold)}"] += 1
        return
    if kind == "not_image":
        r = await client.post("/v1/caption", files=[("image", ("n.txt", b"hello", "text/plain"))])
    elif kind == "bad_options":
        body = {"images": [base64.b64encode(_png(("red", "circle", "left"))).decode()],
                "options": {"temperature": "NaN", "do_sample": True}}
        r = await client.post("/v1/caption", content=json.dumps(body).replace('"NaN"', "NaN"),
                              headers={"content-type": "application/json"})
    elif kind == "bad_json":
        r = await client.post("/v1/caption", content=b"{" * 5000, headers={"content-type": "application/json"})
    elif kind == "oversized":
        r = await client.post("/v1/caption", content=b"\0" * int((limit_mb + 1) * 1024 * 1024),
                              headers={"content-type": "image/png"})
    elif kind == "bomb":
        r = await client.post("/v1/caption", content=png_header_only(30_000, 30_000), headers={"content-type": "image/png"})
    else:
        raise ValueError(kind)
    statuses[f"{kind} {r.status_code}"] += 1


HOSTILE = ("not_image", "bad_options", "bad_json", "oversized", "bomb", "idle", "slow")


async def soak(base: str, *, good: int, hostile: int, clients: int, seed: int = 0, limit_mb: float = 2.0) -> dict:
    port = int(base.rsplit(":", 1)[1])
    rng = random.Random(seed)
    specs = [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS]
    statuses: Counter = Counter()
    wrong: list = []
    out: dict = {}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        for phase, n_hostile in (("alone", 0), ("under_attack", hostile)):
            latencies: list[float] = []
            jobs = [_good(client, rng.choice(specs), latencies, wrong, statuses) for _ in range(good)]
            jobs += [_hostile(client, port, HOSTILE[i % len(HOSTILE)], statuses, limit_mb) for i in range(n_hostile)]
            rng.shuffle(jobs)
            sem = asyncio.Semaphore(clients)

            async def bounded(job):
                async with sem:
                    await job

            t0 = time.perf_counter()
            await asyncio.gather(*(bounded(j) for j in jobs))
            out[phase] = {"seconds": round(time.perf_counter() - t0, 2), "good_p50_ms": round(1000 * statistics.median(latencies), 1),
                          "good_p99_ms": round(1000 * _percentile(latencies, 0.99), 1)}
        health = (await client.get("/healthz")).status_code
    out.update(statuses=dict(sorted(statuses.items())), wrong=wrong, healthz=health)
    return out


def main() -> None:
    from tests.server.test_server_e2e import launch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=200)
    ap.add_argument("--hostile", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    with launch(FIXTURE, "--log-level", "warning", "--max-upload-mb", "2", "--header-timeout-s", "2",
                "--timeout-s", "20") as (base, proc):
        before = rss_mb(proc.pid)
        result = asyncio.run(soak(base, good=args.good, hostile=args.hostile, clients=args.clients))
        time.sleep(1)
        result.update(rss_before_mb=round(before, 1), rss_after_mb=round(rss_mb(proc.pid), 1))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
