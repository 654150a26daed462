"""The CPU fast path: oneDNN-packed linears and releasing mapped checkpoint pages."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import safetensors.torch as st
import torch

from blipcap.backends.cpu_pack import PackedLinear, pack_linears, packing_available
from blipcap.backends.torch import TorchBackend
from blipcap.checkpoint import MappedPages, dims_from_config, read_config

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
needs_onednn = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN linear ops")


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_matches_dense(dtype):
    g = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(48, 80).to(dtype)
    x = torch.randn(3, 7, 48, generator=g).to(dtype)
    want = dense(x).float()
    got = PackedLinear(dense)(x).float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max().item())


@needs_onednn
def test_cpu_backend_is_packed_and_agrees_with_the_unpacked_model(random_ckpt):
    """The parity tests load through this path, so they check packed numerics against transformers;
    here the packed model is also compared with the same weights unpacked, layer for layer."""
    dims = dims_from_config(read_config(random_ckpt))
    packed = TorchBackend.load(random_ckpt, dims, device="cpu", dtype="float32")
    plain = TorchBackend.load(random_ckpt, dims, device="cpu", dtype="float32", pack=False)
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.model.modules())
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    pixels = np.random.default_rng(0).standard_normal((3, 3, dims.vision.image_size, dims.vision.image_size))
    packed.cpu_encode_chunk = 2  # 3 images: one chunk of 2 written into the output, then 1
    a, b = packed.encode(pixels.astype(np.float32)), plain.encode(pixels.astype(np.float32))
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@linux_only
def test_mapped_pages_are_released_only_for_that_files_mappings(tmp_path):
    path = tmp_path / "w.safetensors"
    big = torch.arange(4 * 1024 * 1024, dtype=torch.float32)  # 16 MiB: many whole pages
    st.save_file({"big": big}, str(path))
    mapped = st.load_file(str(path))["big"]
    pages = MappedPages(path)
    assert pages.ranges, "the safetensors file should be memory-mapped"
    anonymous = big.clone()
    assert not pages.release(anonymous)  # never advise memory that is not this file's mapping
    assert torch.equal(anonymous, big)
    assert pages.release(mapped)
    # the pages were dropped, not lost: reading faults the same bytes back in from the file
    assert torch.equal(mapped, big)
    other = MappedPages(tmp_path / "no-such-file.safetensors")
    assert not other.ranges and not other.release(mapped)


@linux_only
def test_mapped_pages_follow_the_hub_caches_symlinks(tmp_path):
    """The Hub cache links snapshots/<rev>/model.safetensors to blobs/<hash>; /proc/self/maps names
    the blob, so the snapshot path must resolve to it."""
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    st.save_file({"w": torch.ones(1024 * 1024)}, str(blob))
    link = tmp_path / "snapshots" / "rev" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    mapped = st.load_file(str(link))["w"]
    pages = MappedPages(link)
    assert pages.ranges and pages.release(mapped)
    assert torch.equal(mapped, torch.ones(1024 * 1024))


def test_pack_linears_replaces_each_linear_and_releases_its_weight():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 4)))
    if not packing_available():
        pytest.skip("this PyTorch build has no oneDNN linear ops")
    x = torch.randn(2, 8)
    want = model(x)
    released = []
    assert pack_linears(model, release=released.append) == 2
    assert [tuple(w.shape) for w in released] == [(8, 8), (4, 8)]
    assert torch.allclose(model(x), want, atol=1e-6)
