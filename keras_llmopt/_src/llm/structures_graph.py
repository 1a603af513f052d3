"""Prunable structures of a functional or Sequential model, found from its graph.

- Attention: every ``MultiHeadAttention`` / ``GroupedQueryAttention`` layer.
- MLPs: a ``Dense`` "down" layer whose input comes from one or two ``Dense`` "up"
  layers through element-wise operations only (activations, dropout, a gating
  multiply), mapping the width ``d`` to ``F`` and back to ``d``, with nothing else
  reading the channels in between.
- Blocks: the residual stream is the chain of two-input additions one input of which
  is upstream of the other; a block starts at an addition whose branch holds an
  attention layer (every addition is a block when no branch does).
"""

import collections

import keras

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.llm import structures

ELEMENTWISE = frozenset(
    {
        "Activation", "Dropout", "ReLU", "LeakyReLU", "ELU", "Gelu", "Relu", "Silu",
        "Sigmoid", "Tanh", "Swish", "Identity", "GaussianNoise", "GaussianDropout",
        "Softplus", "HardSigmoid", "Mish", "Selu", "Elu", "LeakyRelu", "HardSilu", "Relu6",
        "Cast", "AlphaDropout", "SpatialDropout1D",
    }
)  # fmt: skip
GATES = frozenset({"Multiply"})
ATTENTION_CLASSES = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)


class _Graph:
    def __init__(self, graph):
        self.nodes = keras_compat.graph_nodes(graph)
        self.producer = {}
        self.consumers = collections.defaultdict(list)
        for op, ins, outs in self.nodes:
            for t in outs:
                self.producer[id(t)] = (op, ins)
            for t in ins:
                self.consumers[id(t)].append(op)
        self._ancestors = {}

    def ancestors(self, tensor):
        """Ids of every tensor upstream of ``tensor`` (itself excluded)."""
        key = id(tensor)
        if key not in self._ancestors:
            found = set()
            if key in self.producer:
                for t in self.producer[key][1]:
                    found.add(id(t))
                    found |= self.ancestors(t)
            self._ancestors[key] = found
        return self._ancestors[key]


def _trace_ups(graph, tensor):
    """The Dense layers feeding ``tensor`` through element-wise ops, or ``None``."""
    if len(graph.consumers[id(tensor)]) != 1 or id(tensor) not in graph.producer:
        return None
    op, ins = graph.producer[id(tensor)]
    if isinstance(op, keras.layers.Dense):
        return [op]
    name = keras_compat.operation_name(op)
    if name in ELEMENTWISE and len(ins) == 1:
        return _trace_ups(graph, ins[0])
    if name in GATES and len(ins) == 2:
        first, second = _trace_ups(graph, ins[0]), _trace_ups(graph, ins[1])
        return first + second if first and second else None
    return None


def _mlps(graph, paths):
    found = []
    for op, ins, _ in graph.nodes:
        if not isinstance(op, keras.layers.Dense) or len(ins) != 1 or not op.built:
            continue
        ups = _trace_ups(graph, ins[0])
        if not ups or any(not up.built for up in ups):
            continue
        width, d = (int(n) for n in op.kernel.shape)
        if all(tuple(up.kernel.shape) == (d, width) for up in ups) and len(set(ups)) == len(ups):
            found.append(structures.MLP(paths[id(op)], ups, op, width))
    return found


def _attention(graph, paths):
    found = []
    for op, _, _ in graph.nodes:
        if isinstance(op, ATTENTION_CLASSES) and op.built:
            p = keras_compat.attention_internals.projections(op)
            if len(p) == 4:
                found.append(
                    structures.attention_of(
                        paths[id(op)], op, p["query"], p["key"], p["value"], p["output"]
                    )
                )
    return [a for a in found if a is not None]


def _residual_adds(graph):
    adds = []
    for op, ins, outs in graph.nodes:
        if keras_compat.operation_name(op) != "Add" or len(ins) != 2 or len(outs) != 1:
            continue
        for residual in (0, 1):
            if id(ins[residual]) in graph.ancestors(ins[1 - residual]):
                adds.append((op, residual, ins, outs[0]))
                break
    return adds


def _branch_ops(graph, add):
    _, residual, ins, _ = add
    upstream = graph.ancestors(ins[residual]) | {id(ins[residual])}
    inside = (graph.ancestors(ins[1 - residual]) | {id(ins[1 - residual])}) - upstream
    ops = []
    for op, _, outs in graph.nodes:
        if any(id(t) in inside for t in outs) and op not in ops:
            ops.append(op)
    return ops


def _chain(adds):
    """The longest run of additions each feeding the next as its residual input."""
    by_input = {id(ins[residual]): add for add in adds for (_, residual, ins, _) in [add]}
    best = []
    outputs = {id(add[3]) for add in adds}
    for add in adds:
        _, residual, ins, _ = add
        if id(ins[residual]) in outputs:
            continue  # not a chain start
        run = [add]
        while id(run[-1][3]) in by_input:
            run.append(by_input[id(run[-1][3])])
        best = max(best, run, key=len)
    return best


def _common_name(names, index):
    """The names' common prefix (``block_0``), else the first name, else ``block <index>``."""
    if not names:
        return f"block {index}"
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("_/.-")
    return prefix if len(prefix) >= 3 else names[0]


def _blocks(graph, paths):
    chain = _chain(_residual_adds(graph))
    branches = [_branch_ops(graph, add) for add in chain]
    has_attention = [any(isinstance(op, ATTENTION_CLASSES) for op in ops) for ops in branches]
    groups = []
    for add, ops, starts in zip(chain, branches, has_attention):
        if not groups or starts or not any(has_attention):
            groups.append(([], []))
        groups[-1][0].append(add)
        groups[-1][1].extend(op for op in ops if op not in groups[-1][1])
    blocks = []
    for index, (adds, ops) in enumerate(groups):
        layers = [op for op in ops if isinstance(op, keras.layers.Layer)]
        layers += [a[0] for a in adds if isinstance(a[0], keras.layers.Layer)]
        first = _common_name([paths[id(layer)] for layer in layers if id(layer) in paths], index)
        block_in = adds[0][2][adds[0][1]]
        blocks.append(
            structures.Block(
                index=index,
                path=first,
                layers=layers,
                parameters=structures.parameters_of(layers),
                adds=[(a[0], a[1]) for a in adds],
                stream=(block_in, adds[-1][3]),
            )
        )
    return blocks


def graph_structures(model):
    """The :class:`~keras_llmopt._src.llm.structures.Structures` of a functional / Sequential model.

    Returns ``None`` for a model without a functional graph (subclassed).

    Example:
        >>> from keras_llmopt import reference
        >>> found = graph_structures(reference.build_gpt("tiny"))
        >>> len(found.attention), len(found.mlps), len(found.blocks)
        (2, 2, 2)
        >>> found.mlps[0].path, found.mlps[0].width, found.attention[0].num_heads
        ('block_0_mlp_down', 256, 2)
    """
    graph = keras_compat.graph_of(model)
    if graph is None:
        return None
    paths = {id(node.layer): node.path for node in layer_tree.walk_layers(model)}
    walked = _Graph(graph)
    attention, mlps, blocks = (
        _attention(walked, paths),
        _mlps(walked, paths),
        _blocks(walked, paths),
    )
    for block in blocks:
        members = {id(layer) for layer in block.layers}
        for record in attention:
            if id(record.layer) in members:
                record.block = block.index
        for record in mlps:
            if id(record.down) in members:
                record.block = block.index
    return structures.Structures("graph", attention, mlps, blocks)
