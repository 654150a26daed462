"""Images/s captioning WebDataset shards against the same images as files, in one run: does reading
samples out of a tar shard cost the job anything?

    python -m benchmarks.bench_datasets                      # 48 images in 4 rounds, BLIP-large shape, CPU
    python -m benchmarks.bench_datasets --images 16 --rounds 2 --shape tiny   # to try the script

1. Builds a random-initialised checkpoint of the BLIP-large (or -base) shape in a temp dir
   (blipcap.random_checkpoint; nothing is downloaded): every caption is the full 19 tokens.
2. Writes N photo-like 4000x3000 JPEGs (benchmarks/bench_bulk.py's), split into R folders, and packs
   each folder into a WebDataset shard as img2dataset lays them out (key.jpg, key.txt, key.json).
3. Per round, alternately: ``blipcap caption FOLDER --output x.jsonl`` and ``blipcap caption
   SHARD.tar --output y.jsonl`` in child processes; each job's own summary line gives the time from
   its first image to its last row written (process start and model load excluded), and the child's
   CPU seconds (user + system, model load included) are read from the OS: on a shared, loaded
   machine wall time swings with the neighbours, CPU time much less. The captions of the two are
   compared by sha256.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from blipcap.bench import machine
from blipcap.random_checkpoint import build_random_checkpoint
from benchmarks.bench_bulk import SIZE, write_photos
from tests.helpers.summary import parse_line


def pack_shard(folder: Path, shard: Path) -> None:
    """The folder's JPEGs as one WebDataset shard: key.jpg, key.txt, key.json per image, in name order."""
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(sorted(folder.glob("*.jpg"))):
            for ext, data in (("jpg", path.read_bytes()), ("txt", b"alt text"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def caption(target: Path, out: Path, ckpt: Path, args) -> tuple[float, float, dict[str, str]]:
    """`blipcap caption TARGET --output OUT`: (job seconds, child CPU seconds, sha256 -> caption)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "blipcap", "caption", str(target), "--output", str(out), "--model", str(ckpt),
           "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"the job failed ({proc.returncode}):\n{proc.stderr}")
    images, seconds, captioned = parse_line(proc.stderr)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert images == captioned == len(rows), proc.stderr
    return seconds, cpu, {row["sha256"]: row["caption"] for row in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shape", choices=["large", "base", "tiny"], default="large")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    per_round = args.images // args.rounds

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_random_checkpoint(tmp / "ckpt", args.shape)
        files_s = shards_s = files_cpu = shards_cpu = 0.0
        n, same, rounds = 0, 0, []
        for r in range(args.rounds):
            folder, shard = tmp / f"part{r}", tmp / f"part{r}.tar"
            write_photos(folder, per_round, first=r * per_round)
            pack_shard(folder, shard)
            # alternate which goes first, so that a shared machine's load weighs on both alike
            order = [("files", folder), ("shard", shard)][:: 1 if r % 2 == 0 else -1]
            got = {kind: caption(target, tmp / f"{kind}{r}.jsonl", ckpt, args) for kind, target in order}
            (f_s, f_cpu, f_caps), (s_s, s_cpu, s_caps) = got["files"], got["shard"]
            same += sum(s_caps.get(sha) == text for sha, text in f_caps.items())
            n, files_s, shards_s = n + per_round, files_s + f_s, shards_s + s_s
            files_cpu, shards_cpu = files_cpu + f_cpu, shards_cpu + s_cpu
            rounds.append({"images": per_round, "files_s": f_s, "shard_s": s_s, "ratio": f_s / s_s,
                           "files_cpu_s": f_cpu, "shard_cpu_s": s_cpu})
            print(f"round {r}: files {per_round / f_s:.3f} images/s, shard {per_round / s_s:.3f} images/s, "
                  f"ratio {f_s / s_s:.2f}; CPU s files {f_cpu:.1f}, shard {s_cpu:.1f}", file=sys.stderr, flush=True)

    result = {"shape": args.shape, "images": n, "rounds": rounds, "image_size": f"{SIZE[0]}x{SIZE[1]}",
              "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
              "files_images_per_s": n / files_s, "shard_images_per_s": n / shards_s, "ratio": files_s / shards_s,
              "files_cpu_s": files_cpu, "shard_cpu_s": shards_cpu, "same_captions": same, **machine(), "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n} JPEGs of {SIZE[0]}x{SIZE[1]} in {args.rounds} round(s), {args.shape}-shaped random BLIP, greedy, "
          f"batch {args.batch_size}, {args.device} {args.dtype}; {result.get('cpu', '')}")
    print("| input | seconds | images / s | vs files |")
    print("| --- | --- | --- | --- |")
    print(f"| the images as files: `blipcap caption DIR --output x.jsonl` | {files_s:.1f} | {n / files_s:.3f} | 1.00 |")
    print(f"| one WebDataset shard per round: `blipcap caption SHARD.tar --output x.jsonl` | {shards_s:.1f} | "
          f"{n / shards_s:.3f} | **{files_s / shards_s:.2f}** |")
    print("per round (shard vs files): " + ", ".join(f"{r['ratio']:.2f}" for r in rounds))
    print(f"CPU seconds (user + system, model loads included): files {files_cpu:.1f}, shards {shards_cpu:.1f} "
          f"(shards/files {shards_cpu / files_cpu:.2f})")
    print(f"identical captions (by sha256): {same}/{n}")


if __name__ == "__main__":
    main()
