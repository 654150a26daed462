"""The README's fixture examples, run through the real CLI and the server app, their answers kept.

    .venv/bin/python tests/golden/make_golden.py tests/golden/expected   # writes the expected files

tests/golden/expected/ was written by this script on the code before the architecture change of
issue 12 (commit 7c5af4d); test_golden.py runs it again on today's code and compares byte for byte:
a refactor must not change what users see. Only stdout, the output files and the server's JSON are
compared: stderr carries timings. The input images are committed (tests/golden/photos), so the
sha256 column does not depend on the installed Pillow's encoders.

One expected file changed since, on purpose, by the hardening of issue 13 (not by the refactor):
server_bad_option.json gained "error_type" (every request-level refusal now carries it).
Three changed by issue 15, on purpose: caption_csv.captions.csv, caption_rerun.captions.jsonl and
caption_sidecar_jsonl.captions.jsonl gained the ``truncated`` column at the end of each row (copied
from a run of this script; every other byte the same), and the two XMP sidecars of caption_xmp_alt
are now named as darktable/digiKam/Immich expect (rose.png.xmp, pond.webp.xmp; renamed, same bytes).

The CLI runs in a temp folder with this clone's src/ first on PYTHONPATH: a relative PYTHONPATH=src
would not reach it from there, and another installed blipcap would answer instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-blip"
PHOTOS = HERE / "photos"

# (name, argv after `blipcap`, files read back afterwards (relative to the work folder))
CLI_RUNS = [
    ("caption_sidecar_jsonl", ["caption", "photos/", "--model", "{model}", "--sidecar", "--output", "captions.jsonl",
                               "--errors", "errors.log"], ["captions.jsonl", "errors.log", "photos/holiday/IMG_0002.txt"]),
    ("caption_rerun", ["caption", "photos/", "--model", "{model}", "--sidecar", "--output", "captions.jsonl",
                       "--errors", "errors.log"], ["captions.jsonl"]),
    ("caption_xmp_alt", ["caption", "photos/garden", "--model", "{model}", "--xmp", "--alt-text"],
     ["photos/garden/rose.png.xmp", "photos/garden/pond.webp.xmp"]),
    ("caption_print", ["caption", "photos/", "--model", "{model}", "--beams", "3"], []),
    ("caption_json", ["caption", "photos/", "--model", "{model}", "--json", "--prompt", "a red"], []),
    ("caption_csv", ["caption", "photos/", "--model", "{model}", "--output", "captions.csv", "--alt-text"],
     ["captions.csv"]),
    ("caption_metadata", ["caption", "photos/garden", "--model", "{model}", "--metadata-jsonl", "photos/garden"],
     ["photos/garden/metadata.jsonl"]),
    ("index", ["index", "photos/", "--model", "{model}", "--db", "index.db"], []),
    ("search_red", ["search", "red", "--db", "index.db"], []),
    ("search_json", ["search", "blue circles", "--json", "--db", "index.db"], []),
    ("search_none", ["search", "dog on a beach", "--db", "index.db"], []),
]


def _neutral(data: bytes, work: Path) -> bytes:
    """Absolute paths (the index's, the model id) name this clone and the temp folder: neutralised."""
    return data.replace(str(work).encode(), b"<work>").replace(str(ROOT).encode(), b"<root>")


def run_cli(work: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    exe = [sys.executable, "-m", "blipcap"]
    src_path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": src_path}
    for name, argv, files in CLI_RUNS:
        args = [a.replace("{model}", str(FIXTURE)) for a in argv]
        proc = subprocess.run(exe + args, cwd=work, capture_output=True, env=env, timeout=300)
        # absolute paths (the index's) name the temp folder: written as <work>
        out[f"{name}.stdout"] = _neutral(proc.stdout, work)
        out[f"{name}.rc"] = str(proc.returncode).encode()
        for f in files:
            out[f"{name}.{f.replace('/', '_')}"] = _neutral((work / f).read_bytes(), work)
    return out


def run_server() -> dict[str, bytes]:
    from fastapi.testclient import TestClient

    from blipcap import Captioner
    from blipcap.server import create_app

    red = (PHOTOS / "holiday" / "IMG_0001.jpg").read_bytes()
    blue = (PHOTOS / "holiday" / "IMG_0002.jpg").read_bytes()
    requests = {
        "multipart_two": dict(files=[("image", ("red.jpg", red, "image/jpeg")), ("image", ("blue.jpg", blue, "image/jpeg"))]),
        "multipart_options": dict(files=[("image", ("red.jpg", red, "image/jpeg"))],
                                  data={"options": json.dumps({"num_beams": 3, "num_return_sequences": 2})}),
        "hf_prompt": dict(json={"inputs": base64.b64encode(blue).decode(), "parameters": {"prompt": "a blue"}}),
        "json_images": dict(json={"images": [base64.b64encode(red).decode()], "options": {"max_new_tokens": 5}}),
        "not_image": dict(files=[("image", ("notes.txt", b"just some notes\n", "text/plain"))]),
        "raw_body": dict(content=red, headers={"content-type": "image/jpeg"}),
        "bad_option": dict(json={"images": [base64.b64encode(red).decode()], "options": {"num_beams": "x"}}),
    }
    out = {}
    cap = Captioner.load(FIXTURE)
    with TestClient(create_app(cap)) as client:
        for _ in range(200):  # wait for the warm-up
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        for name, kw in requests.items():
            r = client.post("/v1/caption", **kw)
            out[f"server_{name}.json"] = f"{r.status_code}\n".encode() + r.content
    return out


def produce() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(PHOTOS, work / "photos")
        out = run_cli(work)
    out.update(run_server())
    return out


if __name__ == "__main__":
    dest = Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in produce().items():
        (dest / name).write_bytes(data)
    print(f"wrote {len(list(dest.iterdir()))} files to {dest}")
