"""`blipcap caption DIR --embed` against `--sidecar` on the same photo-like JPEGs: does writing the
caption into each file (exiftool, temp copy, fsync, rename) slow the folder job down?

    python -m benchmarks.bench_embed                       # 200 images, BLIP-large shape, CPU fp32, batch 8
    python -m benchmarks.bench_embed --images 48 --rounds 2

1. Builds a random-initialised checkpoint of the BLIP-large shape in a temp dir (nothing is downloaded).
2. Writes N 4000x3000 JPEGs as benchmarks/bench_bulk.py does (about 3 MB each), split into R folders.
3. Per folder, two identical copies: ``--sidecar`` on one, ``--embed`` on the other, in a child
   process each, their order alternating folder by folder so a shared machine's load weighs on
   both alike; the job's own summary line gives the time from the first file to the last write.
4. Then the embedding alone: EmbedSink.write on fresh copies of the files, milliseconds per file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blipcap.bench import machine
from blipcap.outputs.embed import EmbedSink
from blipcap.outputs.records import Record
from blipcap.random_checkpoint import build_random_checkpoint
from benchmarks.bench_bulk import write_photos
from tests.helpers.summary import parse_line


def run_job(folder: Path, ckpt: Path, output: str, args) -> float:
    cmd = [sys.executable, "-m", "blipcap", "caption", str(folder), output, "--model", str(ckpt),
           "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"the folder job failed ({proc.returncode}):\n{proc.stderr}")
    images, seconds, captioned = parse_line(proc.stderr)
    assert images == captioned, proc.stderr
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shape", choices=["large", "base", "tiny"], default="large", help="tiny: to try the script")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    per_round = args.images // args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_random_checkpoint(tmp / "ckpt", args.shape)
        sidecar_s = embed_s = 0.0
        ratios = []
        for r in range(args.rounds):
            part = tmp / f"part{r}"
            write_photos(part, per_round, first=r * per_round)
            copies = {"--sidecar": tmp / f"s{r}", "--embed": tmp / f"e{r}"}
            for folder in copies.values():
                shutil.copytree(part, folder)
            order = list(copies) if r % 2 == 0 else list(copies)[::-1]
            took = {flag: run_job(copies[flag], ckpt, flag, args) for flag in order}
            sidecar_s, embed_s = sidecar_s + took["--sidecar"], embed_s + took["--embed"]
            ratios.append(took["--sidecar"] / took["--embed"])
            shutil.rmtree(copies["--sidecar"])
            shutil.rmtree(copies["--embed"])
        # the embedding alone, on fresh copies of the last folder
        files = sorted((tmp / f"part{args.rounds - 1}").glob("*.jpg"))
        sink = EmbedSink("overwrite")
        records = [Record(str(p), "a random caption of nineteen tokens or so, as the job writes it", -1.0,
                          None, 4000, 3000, "m", None, "d") for p in files]
        t0 = time.perf_counter()
        failed = sink.write(records)
        per_file_ms = 1000 * (time.perf_counter() - t0) / len(files)
        sink.close()
        assert not failed, failed
    n = per_round * args.rounds
    print(f"{n} JPEGs of 4000x3000 in {args.rounds} round(s), {args.shape}-shaped random BLIP, batch "
          f"{args.batch_size}, {args.device} {args.dtype}; {machine().get('cpu', '')}; {time.strftime('%Y-%m-%d')}")
    print("| run | seconds | images / s | vs --sidecar |")
    print("| --- | --- | --- | --- |")
    print(f"| `blipcap caption DIR --sidecar` | {sidecar_s:.1f} | {n / sidecar_s:.3f} | 1.00 |")
    print(f"| `blipcap caption DIR --embed` | {embed_s:.1f} | {n / embed_s:.3f} | **{sidecar_s / embed_s:.2f}** |")
    print("per round (--embed throughput / --sidecar's): " + ", ".join(f"{x:.2f}" for x in ratios))
    print(f"embedding alone (exiftool -stay_open, temp copy, fsync, rename): {per_file_ms:.0f} ms per file")


if __name__ == "__main__":
    main()
