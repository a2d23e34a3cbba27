"""A static runner's linear layers on packed weights (:mod:`args_fast.engine.packed_linear`), for the
compiled CPU step: Q, K and V as one GEMM, gate and up as one, every other projection and the output
head each on its own packed copy. The runner's modules are rewired, the Hugging Face model is not
touched (the packed layers hold its modules, so the engine still sees its parameters change)."""
from __future__ import annotations

from ..packed_linear import PackedLinear, packable
from .transformer import FusedGatedMLP, GatedMLP, PackedQKV, PlainMLP, SplitQKV, StaticRunner


def pack_linears(runner: StaticRunner, rows: int, head_rows: int) -> StaticRunner:
    """Rewire ``runner`` (in place, and returned) onto :class:`PackedLinear` layers; ``rows`` is the
    expected number of rows through the blocks per step, ``head_rows`` through the head."""
    for block in runner.blocks:
        qkv = block.qkv
        if isinstance(qkv, SplitQKV):
            block.qkv = PackedLinear([qkv.q, qkv.k, qkv.v], rows)
        elif isinstance(qkv, PackedQKV):
            block.qkv = PackedLinear([qkv.qkv], rows, split=qkv.sizes)
        block.out = PackedLinear([block.out], rows)
        mlp = block.mlp
        if isinstance(mlp, GatedMLP):
            block.mlp = FusedGatedMLP(PackedLinear([mlp.gate, mlp.up], rows), PackedLinear([mlp.down], rows), mlp.act)
        elif isinstance(mlp, PlainMLP):
            mlp.fc1, mlp.fc2 = PackedLinear([mlp.fc1], rows), PackedLinear([mlp.fc2], rows)
    for name in ("project_in", "project_out"):
        if packable(getattr(runner, name)):
            setattr(runner, name, PackedLinear([getattr(runner, name)], rows))
    runner.head = PackedLinear([runner.head], head_rows)
    return runner


def repack_changed(runner) -> None:
    """Pack again the weights of every packed layer of ``runner`` whose weights changed since."""
    for module in runner.modules():
        if isinstance(module, PackedLinear):
            module.repack_if_changed()
