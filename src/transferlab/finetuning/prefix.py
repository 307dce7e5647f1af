"""The frozen prefix: a backbone cut by torch.fx after its last frozen block into a prefix and a suffix that
share its modules, and the fingerprint of the prefix's weights a cache was computed with."""
from __future__ import annotations

import hashlib

from torch import fx, nn

from transferlab.models import backbones


class Uncachable(ValueError):
    """The fine-tune cannot run from a frozen-prefix cache (the message says why)."""


def cut(backbone: nn.Module, unfreeze: int | str) -> tuple[fx.GraphModule, fx.GraphModule, str]:
    """(prefix, suffix, name of the last frozen block): prefix(x) is the last frozen block's output and
    suffix(prefix(x)) == backbone(x), both sharing the backbone's modules. Raises Uncachable where the network
    has no frozen prefix or cannot be cut there."""
    if unfreeze == "all":
        raise Uncachable("finetune.unfreeze: all trains every block, so there is no frozen prefix to compute once "
                         "(only JPEG decoding could be saved); the fine-tune runs on the fly")
    found = backbones.blocks(backbone)
    if unfreeze >= len(found):
        raise Uncachable(f"finetune.unfreeze: {unfreeze} trains all {len(found)} blocks; the fine-tune runs on the fly")
    last = found[len(found) - unfreeze - 1]
    last = list(last)[-1] if isinstance(last, nn.ModuleList) else last
    names = {m: n for n, m in backbone.named_modules()}
    leaves = {names[m] for b in found for m in (b if isinstance(b, nn.ModuleList) else [b])}

    class Blocks(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return qualified_name in leaves or super().is_leaf_module(m, qualified_name)

    try:
        graph = Blocks().trace(backbone)
        boundary = next(n for n in graph.nodes if n.op == "call_module" and n.target == names[last])
        head_graph, tail_graph = fx.Graph(), fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        nodes = iter(graph.nodes)
        for node in nodes:
            env[node] = head_graph.node_copy(node, env.__getitem__)
            if node is boundary:
                break
        head_graph.output(env[boundary])
        env = {boundary: tail_graph.placeholder("frozen")}
        for extra in [n for n in graph.nodes if n.op == "placeholder"][1:]:  # optional inputs (a ViT's attn_mask=None)
            env[extra] = tail_graph.placeholder(extra.target, default_value=extra.args[0] if extra.args else None)
        for node in nodes:
            env[node] = tail_graph.node_copy(node, env.__getitem__)
    except (KeyError, StopIteration, fx.proxy.TraceError, TypeError, NotImplementedError) as exc:
        raise Uncachable(f"{type(backbone).__name__} cannot be cut after block {names[last]} "
                         f"({type(exc).__name__}: {str(exc)[:120]}); the fine-tune runs on the fly") from None
    return fx.GraphModule(backbone, head_graph), fx.GraphModule(backbone, tail_graph), names[last]


def fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state (names, shapes and values): the prefix weights a cache was computed with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
