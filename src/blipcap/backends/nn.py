"""The BLIP captioning model in PyTorch, written for inference.

A ViT image encoder (pre-LN) and a BERT-style text decoder (post-LN) with causal self-attention,
cross-attention to the image and an LM head. Decoding state is explicit: the image memory holds the
cross-attention keys/values of every decoder layer, computed once per image; the self-attention
cache is a preallocated tensor that the step writes into. Rows of a decode batch are laid out
image-major (`group` rows per image: beams or samples), so cross-attention folds a group's queries
into one sequence and reads its image's keys/values without copying them per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import ModelDims, TextDims, VisionDims


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, heads, T, head_dim)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)  # (B, T, hidden)


class _ExportedAttention(torch.autograd.Function):
    """Unmasked multi-head attention of (B, T, hidden) queries over keys/values given either as
    (B, N, hidden) or already split into heads, (B, heads, N, hd); returns (B, T, hidden). Exports as
    ONNX Runtime's fused com.microsoft.MultiHeadAttention, which takes both layouts as they are (no
    transposes to or from heads); runs as scaled_dot_product_attention in PyTorch."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int):
        k, v = (x if x.dim() == 4 else _heads(x, heads) for x in (k, v))
        return _merge(F.scaled_dot_product_attention(_heads(q, heads), k, v))

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())
        return out


class VisionBlock(nn.Module):
    def __init__(self, d: VisionDims):
        super().__init__()
        self.heads = d.heads
        self.ln1 = nn.LayerNorm(d.hidden, eps=d.eps)
        self.qkv = nn.Linear(d.hidden, 3 * d.hidden)
        self.proj = nn.Linear(d.hidden, d.hidden)
        self.ln2 = nn.LayerNorm(d.hidden, eps=d.eps)
        self.fc1 = nn.Linear(d.hidden, d.mlp)
        self.fc2 = nn.Linear(d.mlp, d.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if torch.onnx.is_in_onnx_export():
            x = x + self.proj(self._exported_attention(self.ln1(x)))
        else:
            qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
            x = x + self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    def _exported_attention(self, h: torch.Tensor) -> torch.Tensor:
        """The ONNX graph's attention: q, k and v as three products with their own (constant-folded)
        weights, so none is sliced out of a fused output, into ONNX Runtime's fused
        MultiHeadAttention on (B, T, hidden), so nothing is transposed to or from heads."""
        w, bias = self.qkv.weight, self.qkv.bias
        d = w.shape[1]
        q, k, v = (F.linear(h, w[i * d : (i + 1) * d], bias[i * d : (i + 1) * d]) for i in range(3))
        return _ExportedAttention.apply(q, k, v, self.heads)


class VisionEncoder(nn.Module):
    def __init__(self, d: VisionDims):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d.hidden, kernel_size=d.patch_size, stride=d.patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d.hidden))
        self.pos_embed = nn.Parameter(torch.empty(1, d.num_patches + 1, d.hidden))
        self.blocks = nn.ModuleList(VisionBlock(d) for _ in range(d.layers))
        self.ln_post = nn.LayerNorm(d.hidden, eps=d.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # (B, P, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)  # (B, 1 + P, D)


class TextBlock(nn.Module):
    def __init__(self, d: TextDims):
        super().__init__()
        self.heads = d.heads
        self.self_qkv = nn.Linear(d.hidden, 3 * d.hidden)
        self.self_out = nn.Linear(d.hidden, d.hidden)
        self.ln_self = nn.LayerNorm(d.hidden, eps=d.eps)
        self.cross_q = nn.Linear(d.hidden, d.hidden)
        self.cross_kv = nn.Linear(d.encoder_hidden, 2 * d.hidden)
        self.cross_out = nn.Linear(d.hidden, d.hidden)
        self.ln_cross = nn.LayerNorm(d.hidden, eps=d.eps)
        self.fc1 = nn.Linear(d.hidden, d.mlp)
        self.fc2 = nn.Linear(d.mlp, d.hidden)
        self.ln_ffn = nn.LayerNorm(d.hidden, eps=d.eps)

    def cross_kv_of(self, memory: torch.Tensor) -> torch.Tensor:
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return torch.stack([_heads(k, self.heads), _heads(v, self.heads)])  # (2, B_img, heads, N, head_dim)

    def forward(
        self,
        x: torch.Tensor,  # (rows, T, D): the new tokens only
        cache: torch.Tensor,  # (2, rows, heads, L, head_dim): this layer's self-attention cache
        start: int,  # cache slot of x's first token
        mask: torch.Tensor,  # (rows, 1, T, start + T) bool, True = may attend
        cross: torch.Tensor,  # (2, B_img, heads, N, head_dim)
    ) -> torch.Tensor:
        q, k, v = self._qkv(x)
        t = x.shape[1]
        cache[0, :, :, start : start + t] = k
        cache[1, :, :, start : start + t] = v
        end = start + t
        a = F.scaled_dot_product_attention(q, cache[0, :, :, :end], cache[1, :, :, :end], attn_mask=mask)
        return self._rest(x, a, cross)

    def forward_static(self, x: torch.Tensor, cache: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor,
                       cross: torch.Tensor) -> torch.Tensor:
        """One new token per row with every shape fixed: the slot is a (1,) tensor, attention runs over
        the whole cache and the mask (rows, 1, 1, L) hides the slots not filled yet, so the same
        kernels run every step (what a CUDA graph replays)."""
        q, k, v = self._qkv(x)
        cache[0].index_copy_(2, slot, k)
        cache[1].index_copy_(2, slot, v)
        a = F.scaled_dot_product_attention(q, cache[0], cache[1], attn_mask=mask)
        return self._rest(x, a, cross)

    def forward_explicit(self, x: torch.Tensor, past_kt: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor,
                         cross_k: torch.Tensor, cross_v: torch.Tensor):
        """The same block with the past as inputs and the new keys/values as outputs (ONNX export).

        The past keys are held transposed, past_kt (rows, heads, hd, L), the values as past_v
        (rows, heads, L, hd), so the graph multiplies them as given every step; the image keys and
        values, cross_k and cross_v (B_img, heads, N, hd), go to ONNX Runtime's MultiHeadAttention,
        which reads that layout in place. No per-step transpose or split of the largest tensors.
        mask (rows, 1, T, L + T) -> x, new keys (rows, heads, hd, T), new values (rows, heads, T, hd).
        """
        q, k, v = self._qkv(x)
        kt = k.transpose(-1, -2)
        keys_t, values = torch.cat([past_kt, kt], dim=-1), torch.cat([past_v, v], dim=2)
        scores = torch.matmul(q * q.shape[-1] ** -0.5, keys_t).masked_fill(~mask, float("-inf"))
        a = torch.matmul(scores.softmax(dim=-1), values)
        return self._rest(x, a, (cross_k, cross_v)), kt, v

    def _qkv(self, x: torch.Tensor):
        rows, t, d = x.shape
        return self.self_qkv(x).view(rows, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def _rest(self, x: torch.Tensor, a: torch.Tensor, cross) -> torch.Tensor:
        """Self-attention output, cross-attention and the FFN."""
        rows, t, _ = x.shape
        x = self.ln_self(x + self.self_out(_merge(a)))
        # Cross-attention: rows are image-major, `group` per image (beams or samples), so a group's
        # queries become one longer sequence over that image's keys/values, which are never copied
        # per row (no mask: every image token is visible).
        images = cross[0].shape[0]
        q = self.cross_q(x).reshape(images, rows // images * t, -1)  # image-major rows: no copy
        k, v = cross[0], cross[1]  # (B_img, heads, N, hd) each
        if torch.onnx.is_in_onnx_export():
            a = _ExportedAttention.apply(q, k, v, self.heads)
        elif q.is_cuda or k.dtype != q.dtype:
            # (image K/V kept narrower than the model, image_kv_dtype: SDPA takes the narrow type and
            # keeps its scores and softmax in float32; fp16 on the CPU 24.6 -> 17.6 ms a step, bench_kernels.py)
            a = _merge(F.scaled_dot_product_attention(_heads(q, self.heads).to(k.dtype), k, v)).to(q.dtype)
        else:
            # on the CPU, SDPA's kernel for these few query rows over 577 keys is slower than two
            # batched products that read the keys/values once (one step's cross-attention for 8
            # images x 3 beams: 16.9 -> 14.4 ms fp32, 17.5 -> 8.6 ms bf16; benchmarks/bench_kernels.py)
            qh = _heads(q, self.heads)
            a = _merge(torch.matmul(torch.matmul(qh * qh.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(dim=-1), v))
        x = self.ln_cross(x + self.cross_out(a.reshape(rows, t, -1)))
        return self.ln_ffn(x + self.fc2(F.gelu(self.fc1(x))))


def _embedding(n: int, d: int) -> nn.Embedding:
    # Given a weight, nn.Embedding skips its random init, which on the meta device (where
    # TorchBackend builds the model) would import torch._dynamo: 1.3 s of a 1.8 s load.
    return nn.Embedding(n, d, _weight=torch.empty(n, d))


class LMHead(nn.Module):
    def __init__(self, d: TextDims):
        super().__init__()
        self.dense = nn.Linear(d.hidden, d.hidden)
        self.ln = nn.LayerNorm(d.hidden, eps=d.eps)
        self.decoder = nn.Linear(d.hidden, d.vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(x))))


class TextDecoder(nn.Module):
    def __init__(self, d: TextDims):
        super().__init__()
        self.dims = d
        self.tok_embed = _embedding(d.vocab, d.hidden)
        self.pos_embed = _embedding(d.max_positions, d.hidden)
        self.ln_embed = nn.LayerNorm(d.hidden, eps=d.eps)
        self.blocks = nn.ModuleList(TextBlock(d) for _ in range(d.layers))
        self.head = LMHead(d)

    def forward(
        self,
        tokens: torch.Tensor,  # (rows, T)
        positions: torch.Tensor,  # (rows, T) absolute positions (left padding already subtracted)
        cache: torch.Tensor,  # (layers, 2, rows, heads, L, head_dim), written in place
        start: int,
        mask: torch.Tensor,  # (rows, 1, T, start + T) bool
        cross: torch.Tensor,  # (layers, 2, B_img, heads, N, head_dim)
    ) -> torch.Tensor:
        x = self.ln_embed(self.tok_embed(tokens) + self.pos_embed(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i], start, mask, cross[i])
        return self.head(x[:, -1])  # (rows, vocab): only the newest position is ever needed

    def step_static(self, tokens: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, slot: torch.Tensor,
                    mask: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """`forward` for one token per row (rows, 1), with the cache slot as a (1,) tensor and the mask
        (rows, 1, 1, L) over the whole cache: no shape depends on the step (TextBlock.forward_static)."""
        x = self.ln_embed(self.tok_embed(tokens) + self.pos_embed(positions))
        for i, block in enumerate(self.blocks):
            x = block.forward_static(x, cache[i], slot, mask, cross[i])
        return self.head(x[:, -1])


class ExplicitStep(nn.Module):
    """The decoder as a pure function of an explicit past (what the ONNX decoder graph computes).

    The past is the whole preallocated cache with a validity mask, so the caller passes one
    contiguous buffer every step and writes the returned new keys/values into it. Every layer's
    past keys, past values, image keys and image values are inputs of their own (see
    `input_names`): slicing them out of one stacked input would copy all of them on every step.
    """

    def __init__(self, text: TextDecoder):
        super().__init__()
        self.text = text

    @staticmethod
    def input_names(layers: int) -> list[str]:
        per_layer = [f"{kind}.{i}" for i in range(layers) for kind in ("past_kt", "past_v", "cross_k", "cross_v")]
        return ["tokens", "positions", "new_valid", "past_valid", *per_layer]

    def forward(
        self,
        tokens: torch.Tensor,  # (rows, T) int64
        positions: torch.Tensor,  # (rows, T) int64
        new_valid: torch.Tensor,  # (rows, T) bool: False for left padding of a prompt
        past_valid: torch.Tensor,  # (rows, L) bool: filled, non-padding slots
        *per_layer: torch.Tensor,  # per layer: past K^T, past V, image K^T, image V
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, t = tokens.shape
        # comparisons of aranges rather than eye/tril, which ONNX Runtime lacks for booleans
        idx = torch.arange(t, device=tokens.device)
        eye, causal = idx[:, None] == idx[None, :], idx[:, None] >= idx[None, :]
        new = (causal[None] & new_valid[:, None, :]) | eye[None]  # (rows, T, T); a slot always sees itself
        mask = torch.cat([past_valid[:, None, :].expand(rows, t, past_valid.shape[1]), new], dim=2)[:, None]
        x = self.text.ln_embed(self.text.tok_embed(tokens) + self.text.pos_embed(positions))
        keys, values = [], []
        for i, block in enumerate(self.text.blocks):
            past_kt, past_v, cross_k, cross_v = per_layer[4 * i : 4 * i + 4]
            x, kt, v = block.forward_explicit(x, past_kt, past_v, mask, cross_k, cross_v)
            keys.append(kt)
            values.append(v)
        # (rows, V), new keys (layers, rows, heads, hd, T), new values (layers, rows, heads, T, hd)
        return self.text.head(x[:, -1]).float(), torch.stack(keys), torch.stack(values)


class BlipCaptioner(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.vision = VisionEncoder(dims.vision)
        self.text = TextDecoder(dims.text)

    def encode(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> cross-attention K/V of every decoder layer (layers, 2, B, heads, N, hd).

        `out`: a tensor of that shape (or a view of a larger one) to write into, layer by layer,
        instead of stacking a new one (which holds every layer's K/V twice at its peak).
        """
        memory = self.vision(pixels)
        if out is None:
            return torch.stack([block.cross_kv_of(memory) for block in self.text.blocks])
        for i, block in enumerate(self.text.blocks):
            kv = block.cross_kv_of(memory)
            if out.dtype == torch.float16 and kv.dtype != torch.float16:
                kv = kv.clamp_(-65504.0, 65504.0)  # float16's range: an outlier saturates, never inf
            out[i] = kv
        return out


class EncoderGraph(nn.Module):
    """pixels -> image memory, as a module of its own (what the ONNX encoder graph computes).

    The memory comes out as one tensor per decoder layer and kind, in the layout the decoder graph
    reads without copying (`output_names`): keys and values (B, heads, N, hd) each.
    """

    def __init__(self, model: BlipCaptioner):
        super().__init__()
        self.model = model

    @staticmethod
    def output_names(layers: int) -> list[str]:
        return [f"{kind}.{i}" for i in range(layers) for kind in ("cross_k", "cross_v")]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.vision(pixels)
        out = []
        b, n, _ = memory.shape
        for block in self.model.text.blocks:
            k, v = block.cross_kv(memory).chunk(2, dim=-1)  # each (B, N, hidden)
            h = block.heads
            k, v = k.reshape(b, n, h, -1), v.reshape(b, n, h, -1)
            out += [k.transpose(1, 2), v.transpose(1, 2)]
        return tuple(out)
