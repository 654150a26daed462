"""The same `blipcap bench` command on two source trees (two commits), rounds interleaved in one run.

    git worktree add /tmp/before 7c5af4d
    python -m benchmarks.bench_trees /tmp/before . -- --random large --dtype float32 --images 8

Each round runs the command once per tree, in a fresh process with that tree's src/ first on
PYTHONPATH, alternating which goes first; the medians of seconds per image (and of its encoder
share) are compared. For a refactor that must not change speed (issue 12): a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from blipcap.bench import machine


def run(tree: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.abspath(tree), "src"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "blipcap", "bench", *args, "--json"], env=env, check=True,
                         capture_output=True, text=True, cwd=os.path.abspath(tree)).stdout
    first = json.loads(out)["runs"][0]
    return {"s_per_image": first["s_per_image"], "encode_s": (first.get("encode_seconds") or 0.0) / max(1, first["images"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    args = argv[cut + 1:]  # after --: the arguments of blipcap bench
    results: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(a.rounds):
        order = [("before", a.before), ("after", a.after)][:: 1 if r % 2 == 0 else -1]
        for name, tree in order:
            results[name].append(run(tree, args))
            print(f"round {r + 1} {name}: {results[name][-1]['s_per_image']:.3f} s/image", file=sys.stderr, flush=True)
    med = {k: statistics.median(x["s_per_image"] for x in v) for k, v in results.items()}
    print(json.dumps({"machine": machine(), "command": "blipcap bench " + " ".join(args), "rounds": a.rounds,
                      "s_per_image": {k: [round(x["s_per_image"], 4) for x in v] for k, v in results.items()},
                      "median_s_per_image": med, "after_over_before": med["after"] / med["before"]}, indent=2))


if __name__ == "__main__":
    main()
