"""``StaticRunner``: a compact decoder-only transformer run over a :class:`StaticKVCache` (gpt-fast style).

One class covers the Llama family (Llama-2/3, Mistral, Qwen2, SmolLM), OPT and GPT-2: they differ
only in position encoding (RoPE / learned), norm placement, QKV packing and MLP shape, which
``loading.py`` reads off the Hugging Face model. The runner *borrows* the Hugging Face modules
(projections, norms, embeddings, heads), so it holds no copy of the weights and follows the HF
model's device and dtype; what it replaces is the glue: positions, the cache, attention, residuals.

Two entry points, both with static shapes:

* ``prefill(ids, attention_mask, cache)``: left-padded prompts, plain masked attention (SDPA),
  writes K/V into slots [0, P) of every layer and sets the cache's per-row prefix window.
* ``decode(ids (B, T), cache, attention)``: T tokens per row *at the same position* (the row's next
  one), query j writes its K/V into slot ``prefix_end + j`` and sees the row's prefix plus its own
  slot (``attention`` has the ``args_fast.engine.ops.candidate_attention`` contract). T = 1 is a plain
  decode step; T = k scores k ARGS candidates in one pass. The cache's prefix window is read from
  device tensors, so a captured CUDA graph replays at any length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kv_cache import StaticKVCache
from ..ops import positions_from_mask, prefix_mask


@dataclass
class Spec:
    """What differs between the supported families (filled in by ``loading.py``)."""
    family: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    pre_norm: bool = True              # OPT-350m normalises after the residual add
    inv_freq: torch.Tensor | None = None   # RoPE (Llama family); None = learned positions
    rope_scaling: float = 1.0          # RoPE "attention factor" (yarn); 1.0 for default/linear/llama3
    position_offset: int = 0           # OPT's learned positions start at index 2
    # A sliding attention window is not applied: every token sees its whole prefix. ARGSDecoder refuses
    # requests longer than a model's window (hf.sliding_window) on the backends that run this.


class GatedMLP(nn.Module):   # Llama family: down(act(gate(x)) * up(x))
    def __init__(self, gate, up, down, act):
        super().__init__()
        self.gate, self.up, self.down, self.act = gate, up, down, act

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class FusedGatedMLP(nn.Module):   # GatedMLP with gate and up as one projection returning both
    def __init__(self, gate_up, down, act):
        super().__init__()
        self.gate_up, self.down, self.act = gate_up, down, act

    def forward(self, x):
        gate, up = self.gate_up(x)
        return self.down(self.act(gate) * up)


class PlainMLP(nn.Module):   # OPT, GPT-2: fc2(act(fc1(x)))
    def __init__(self, fc1, fc2, act):
        super().__init__()
        self.fc1, self.fc2, self.act = fc1, fc2, act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SplitQKV(nn.Module):
    def __init__(self, q, k, v):
        super().__init__()
        self.q, self.k, self.v = q, k, v

    def forward(self, x):
        return self.q(x), self.k(x), self.v(x)


class PackedQKV(nn.Module):  # GPT-2's c_attn: one projection, then split
    def __init__(self, qkv, sizes):
        super().__init__()
        self.qkv, self.sizes = qkv, list(sizes)

    def forward(self, x):
        return self.qkv(x).split(self.sizes, dim=-1)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, spec: Spec, index: int, qkv, out, attn_norm, mlp_norm, mlp, scale: float):
        super().__init__()
        self.spec, self.index, self.scale = spec, index, scale
        self.qkv, self.out, self.attn_norm, self.mlp_norm, self.mlp = qkv, out, attn_norm, mlp_norm, mlp

    def forward(self, x, rope, attend):
        s = self.spec
        h = self.attn_norm(x) if s.pre_norm else x
        batch, length, _ = h.shape
        q, k, v = self.qkv(h)
        q = q.view(batch, length, s.n_heads, s.head_dim).transpose(1, 2)
        k = k.view(batch, length, s.n_kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(batch, length, s.n_kv_heads, s.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        a = attend(self.index, q, k, v).transpose(1, 2).reshape(batch, length, s.n_heads * s.head_dim)
        x = x + self.out(a)
        if not s.pre_norm:
            x = self.attn_norm(x)
        x = x + self.mlp(self.mlp_norm(x) if s.pre_norm else x)
        if not s.pre_norm:
            x = self.mlp_norm(x)
        return x


class StaticRunner(nn.Module):
    """Causal LM (``head`` = lm_head, V outputs) or scalar reward model (``head`` = score, 1 output)."""

    def __init__(self, spec: Spec, embed, blocks, *, positions=None, project_in=None, final_norm=None,
                 project_out=None, head, is_reward: bool):
        super().__init__()
        self.spec, self.embed, self.blocks = spec, embed, nn.ModuleList(blocks)
        self.positions, self.project_in = positions, project_in
        self.final_norm, self.project_out, self.head = final_norm, project_out, head
        self.is_reward = is_reward
        if spec.inv_freq is not None:
            self.register_buffer("inv_freq", spec.inv_freq.float().clone(), persistent=False)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_cache(self, batch: int, slots: int) -> StaticKVCache:
        s = self.spec
        return StaticKVCache(self.n_layers, batch, s.n_kv_heads, slots, s.head_dim, dtype=self.dtype,
                             device=self.device)

    # ------------------------------------------------------------------------------ shared pieces
    def _embed(self, ids, positions):
        x = self.embed(ids)
        if self.project_in is not None:
            x = self.project_in(x)
        if self.positions is not None:
            x = x + self.positions(positions + self.spec.position_offset)
            return x, None
        # RoPE as Hugging Face computes it: angles in float32, cos/sin cast to the activation dtype.
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]             # (B, 1, T, D)
        scaling = self.spec.rope_scaling
        return x, ((emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype))

    def _finish(self, x):
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x

    def _run(self, x, rope, attend):
        for block in self.blocks:
            x = block(x, rope, attend)
        return self._finish(x)

    def outputs(self, hidden):
        """Head on final hidden states: logits (..., V) for an LM, rewards (...) for a reward model; fp32."""
        out = self.head(hidden).float()
        return out.squeeze(-1) if self.is_reward else out

    # ------------------------------------------------------------------------------ entry points
    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Left-padded prompts (B, P) -> final hidden states (B, P, H); K/V land in slots [0, P)."""
        batch, length = ids.shape
        if length > cache.slots:
            raise ValueError(f"prompt of {length} tokens does not fit the cache's {cache.slots} slots")
        positions = positions_from_mask(attention_mask)
        visible = prefix_mask(attention_mask)

        def attend(layer, q, k, v):
            cache.keys[layer, :, :, :length] = k
            cache.values[layer, :, :, :length] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.blocks[layer].scale,
                                                  enable_gqa=k.shape[1] != q.shape[1])

        x, rope = self._embed(ids, positions)
        hidden = self._run(x, rope, attend)
        cache.prefix_end.fill_(length)
        cache.prefix_start.copy_(length - attention_mask.long().sum(-1))
        return hidden

    def decode(self, ids: torch.Tensor, cache: StaticKVCache, attention) -> torch.Tensor:
        """(B, T) tokens, all at each row's next position -> hidden (B, T, H). Query j writes slot
        ``prefix_end + j`` and attends over its row's prefix plus that slot. The prefix window is not
        advanced here: the caller commits (T = k candidates) or advances ``prefix_end`` (T = 1)."""
        batch, length = ids.shape
        positions = (cache.prefix_end - cache.prefix_start)[:, None].expand(batch, length)
        slots = cache.prefix_end[:, None] + torch.arange(length, device=ids.device)   # (B, T)
        layer_index = torch.arange(self.n_layers, device=ids.device)[:, None, None]      # broadcasts to (B, T)

        def attend(layer, q, k, v):
            # one index_put on the whole cache tensor, (layer, row, :, slot) -> a (B, T, H, D) block: a write
            # through a view (cache.keys[layer].transpose(...)[...] = ...) makes torch.compile copy the
            # whole cache every step; on the base tensor it stays an in-place write
            where = (layer_index[layer], cache.batch_index, slice(None), slots)
            cache.keys[where] = k.transpose(1, 2)
            cache.values[where] = v.transpose(1, 2)
            return attention(q, cache.keys[layer], cache.values[layer], cache.prefix_start, cache.prefix_end,
                             self.blocks[layer].scale)

        x, rope = self._embed(ids, positions)
        return self._run(x, rope, attend)
