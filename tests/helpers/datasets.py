"""Dataset inputs built from the fixture's shape images: WebDataset shards (tarfile), img2dataset-style
Parquet, and Hugging Face Image-feature datasets (the ``datasets`` library), each beside the same
images as files, and the bytes a reader asked for (a counting ``open_input``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.helpers.folders import jpeg_bytes, write_shapes

CORRUPT = jpeg_bytes()[:700]  # a truncated JPEG: an error row, never a failed job


def shape_files(folder: Path, n: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``n`` shape images as files, sorted: (path, the caption the fixture gives)."""
    return sorted((Path(p), c) for p, c in write_shapes(folder, n, seed=seed).items())


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A WebDataset shard: for each (key, {ext: bytes}) the members key.ext, in order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return path


def img2dataset_samples(files: list[tuple[Path, str]], start: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    """img2dataset's layout: key.jpg (here PNG bytes under .png), key.txt (the alt text), key.json."""
    return [(f"{start + i:09d}", {"png": p.read_bytes(), "txt": b"alt text from the web", "json": b"{}"})
            for i, (p, _) in enumerate(files)]


def write_img2dataset_parquet(path: Path, files: list[tuple[Path, str]], extra: list[bytes | None] = (),
                              row_group_size: int = 4) -> Path:
    """img2dataset's Parquet: key, the image bytes in ``jpg``, caption (the alt text), url; ``extra``
    rows after the files' (None: a null image cell)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [p.read_bytes() for p, _ in files] + list(extra)
    table = pa.table({"key": [f"{i:09d}" for i in range(len(blobs))], "jpg": pa.array(blobs, pa.binary()),
                      "caption": ["alt text"] * len(blobs), "url": [f"http://x/{i}" for i in range(len(blobs))]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def hf_image_dataset(files: list[tuple[Path, str]], extra: list[bytes] = ()):
    """A ``datasets.Dataset`` with an Image feature (embedded bytes) and a label column."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    images = [{"bytes": p.read_bytes(), "path": None} for p, _ in files] + [{"bytes": b, "path": None} for b in extra]
    return datasets.Dataset.from_dict({"image": images, "label": [f"l{i}" for i in range(len(images))]},
                                      features=features)


class CountingOpen:
    """Stands in for blipcap.jobs.sources.open_input: counts every byte read through the files it opens."""

    def __init__(self, real):
        self.real, self.bytes = real, 0

    def __call__(self, path):
        return _Counted(self.real(path), self)


class _Counted(io.RawIOBase):
    def __init__(self, f, counter: CountingOpen):
        self.f, self.counter = f, counter

    def readable(self):
        return True

    def seekable(self):
        return True

    def read(self, n=-1):
        data = self.f.read(n)
        self.counter.bytes += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def close(self):
        self.f.close()
        super().close()
