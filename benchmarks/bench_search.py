"""`blipcap serve --index` under measurement: search latency over 100,000 captions and thumbnails/s
of 12-megapixel JPEGs, both through the HTTP routes of a real server process (no model loaded).

    python -m benchmarks.bench_search                     # 100,000 captions, 40 photos of 4000x3000
    python -m benchmarks.bench_search --rows 1000000 --photos 100 --clients 4

Builds, in a temp dir, an index of `--rows` generated captions ("a brown dog running on a beach",
from word lists: no model, no files behind them) plus `--photos` generated 4000x3000 JPEGs (smooth
colour fields with grain, ~2-4 MB each, EXIF orientation on every other one), starts `blipcap serve
--index` on a free 127.0.0.1 port with its thumbnail cache in the temp dir, and then:
  * search: `--searches` GET /v1/search (limit 24) one at a time over a keep-alive connection,
    cycling through queries of one common word, two or three words, a rare word, words no caption
    has all of (the any-word fallback) and "a" (in every caption); p50/p99 per kind and overall;
  * thumbnails: GET /v1/thumbnail/{id} of every photo with an empty cache, from `--clients`
    concurrent clients (thumbnails/s), then again from the cache, then 304s with If-None-Match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from blipcap.bench import machine
from blipcap.outputs.index import Index
from blipcap.outputs.records import Record

from .bench_serve import spawn_serve

ADJECTIVES = "brown black white red small large old young wooden tall green blue striped fluffy wet".split()
NOUNS = ("dog cat man woman child horse bird car bicycle boat train bus table chair cake pizza tree flower "
         "building bridge mountain lake surfboard kite umbrella bench clock sheep cow elephant giraffe").split()
VERBS = "sitting standing running lying walking flying parked eating playing riding".split()
PLACES = ("on a beach|in a field|on a street|in a kitchen|next to a window|on a table|in the snow|"
          "in front of a building|on a grassy hill|under a tree|in a living room|near the water").split("|")
QUERIES = {
    "one common word": ["dog", "beach", "red", "table", "running"],
    "two or three words": ["brown dog beach", "red car street", "cat sitting window", "old clock building"],
    "rare word": ["xylophone", "giraffe lake", "striped umbrella snow"],
    "no caption has all": ["purple dog piano", "zebra on a beach", "dog astronaut"],
    "every caption (\"a\")": ["a"],  # the worst case: bm25 ranks all 100,000 rows
}


def captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield (f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"
               + (" with a xylophone" if rng.random() < 0.0005 else ""))


def build_index(db: Path, rows: int) -> None:
    index = Index(db)
    batch = []
    for i, caption in enumerate(captions(rows)):
        batch.append(Record(f"/bench/photos/{i:07d}.jpg", caption, -0.5, None, 640, 480, "bench", None, "d"))
        if len(batch) == 10_000:
            index.put(batch)
            batch = []
    index.put(batch)
    index.close()


def photo(i: int, size=(4000, 3000)) -> Image.Image:
    """A smooth colour field with grain, so a JPEG of it weighs what a phone photo does."""
    rng = np.random.default_rng(i)
    w, h = size
    y, x = np.mgrid[0:h // 8, 0:w // 8].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80) - c) for c in range(3)], -1)
    small = Image.fromarray(((base + 1) * 110 + 10).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(small, np.int16) + grain, 0, 255).astype(np.uint8))


def add_photos(db: Path, folder: Path, n: int) -> list[int]:
    folder.mkdir()
    records = []
    for i in range(n):
        path = folder / f"photo{i:03d}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 2 else 1
        photo(i).save(path, quality=90, exif=exif)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        records.append(Record(str(path), f"a benchmark photo number {i}", -0.5, sha, 3000, 4000, "bench", None, "d"))
    index = Index(db)
    index.put(records)
    ids = [row[0] for row in index.db.execute("SELECT id FROM images WHERE path LIKE ? ORDER BY path",
                                              (str(folder) + "/%",))]
    index.close()
    return ids


def start_server(db: Path, cache: Path, log) -> tuple[subprocess.Popen, str]:
    return spawn_serve(["--index", str(db), "--log-level", "warning"], log, env={"XDG_CACHE_HOME": str(cache)},
                       ready_s=120)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def bench_search(base: str, n: int) -> dict:
    kinds = [(kind, q) for kind, qs in QUERIES.items() for q in qs]
    times: dict[str, list[float]] = {kind: [] for kind in QUERIES}
    with httpx.Client(base_url=base, timeout=30) as client:
        for kind, q in kinds:  # warm-up: SQLite's page cache, the server's connections
            client.get("/v1/search", params={"q": q, "limit": 24}).raise_for_status()
        for i in range(n):
            kind, q = kinds[i % len(kinds)]
            t = time.perf_counter()
            client.get("/v1/search", params={"q": q, "limit": 24}).raise_for_status()
            times[kind].append(time.perf_counter() - t)
    every = [t for ts in times.values() for t in ts]
    out = {kind: {"p50_ms": pct(ts, 50), "p99_ms": pct(ts, 99)} for kind, ts in times.items()}
    out["all"] = {"p50_ms": pct(every, 50), "p99_ms": pct(every, 99), "requests": len(every)}
    return out


def bench_thumbnails(base: str, ids: list[int], clients: int) -> dict:
    def fetch(client: httpx.Client, id: int, etag: str | None = None) -> httpx.Response:
        r = client.get(f"/v1/thumbnail/{id}", headers={"If-None-Match": etag} if etag else {})
        if r.status_code not in (200, 304):
            raise SystemExit(f"thumbnail {id}: HTTP {r.status_code} {r.text}")
        return r

    result = {}
    with httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients)) as client, \
            ThreadPoolExecutor(clients) as pool:
        etags = {}
        for phase in ("cold (made from the JPEGs)", "cached on disk", "304 (If-None-Match)"):
            t = time.perf_counter()
            answers = list(pool.map(lambda i: (i, fetch(client, i, etags.get(i) if phase.startswith("304") else None)),
                                    ids))
            seconds = time.perf_counter() - t
            etags = {i: r.headers["etag"] for i, r in answers}
            result[phase] = {"per_s": len(ids) / seconds, "seconds": seconds}
        result["thumbnail_bytes_mean"] = int(np.mean([len(fetch(client, i).content) for i in ids[:8]]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="generated captions in the index")
    ap.add_argument("--photos", type=int, default=40, help="12-MP JPEGs to make thumbnails of")
    ap.add_argument("--searches", type=int, default=600)
    ap.add_argument("--clients", type=int, default=os.cpu_count() or 2, help="concurrent thumbnail clients")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="blipcap-bench-search-") as tmp:
        tmp = Path(tmp)
        db = tmp / "index.db"
        t = time.perf_counter()
        build_index(db, args.rows)
        built = time.perf_counter() - t
        t = time.perf_counter()
        ids = add_photos(db, tmp / "photos", args.photos)
        made = time.perf_counter() - t
        photo_mb = np.mean([p.stat().st_size for p in (tmp / "photos").iterdir()]) / 1e6
        with (tmp / "serve.log").open("w") as log:
            proc, base = start_server(db, tmp / "cache", log)
            try:
                search = bench_search(base, args.searches)
                thumbs = bench_thumbnails(base, ids, args.clients)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    result = {"rows": args.rows + args.photos, "index_build_s": built, "photos": args.photos,
              "photo_mb_mean": photo_mb, "photos_made_s": made, "clients": args.clients, "search": search,
              "thumbnails": thumbs, "machine": machine(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"index of {result['rows']:,} captions built in {built:.1f} s; {args.photos} photos of 4000x3000, "
          f"{photo_mb:.1f} MB each on average")
    print(f"{'search (limit 24), over HTTP':<34}{'p50 ms':>9}{'p99 ms':>9}")
    for kind, v in search.items():
        print(f"  {kind:<32}{v['p50_ms']:>9.1f}{v['p99_ms']:>9.1f}")
    print(f"thumbnails of 12-MP JPEGs, {args.clients} clients (mean {thumbs.pop('thumbnail_bytes_mean'):,} bytes)")
    for phase, v in thumbs.items():
        print(f"  {phase:<32}{v['per_s']:>9.1f} /s")
    print(", ".join(f"{k} {v}" for k, v in result["machine"].items()), f"; load average {result['load_average']}")


if __name__ == "__main__":
    main()
