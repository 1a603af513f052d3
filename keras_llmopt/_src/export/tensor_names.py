"""Short, model-wide unique names for the tensors a ``.tflite`` does not expose."""

import collections

import numpy as np


def shorten_tensor_names(model):
    """Names each tensor no input, output or signature exposes ``t<index>``; returns how many.

    Exposed and variable tensors keep their names; tensors of subgraph ``g > 0`` are
    ``s<g>t<index>``; a short name already in use gets ``_`` appended until it is unique
    in the model.

    Example:
        >>> from tensorflow.lite.python import schema_py_generated as schema
        >>> from keras_llmopt import export, reference
        >>> r = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=8,
        ...                      compact_file=False, verify=False)
        >>> model = schema.ModelT.InitFromPackedBuf(open(r.path, "rb").read(), 0)
        >>> shorten_tensor_names(model) > 0
        True
    """
    exposed = collections.defaultdict(set)
    for index, subgraph in enumerate(model.subgraphs or ()):
        for indices in (subgraph.inputs, subgraph.outputs):
            if indices is not None:
                exposed[index].update(int(i) for i in np.asarray(indices).reshape(-1))
    for signature in model.signatureDefs or ():
        for tensor_map in list(signature.inputs or ()) + list(signature.outputs or ()):
            exposed[signature.subgraphIndex].add(int(tensor_map.tensorIndex))
    renamed = 0
    subgraphs = list(enumerate(model.subgraphs or ()))
    kept = {
        index: {
            p for p, t in enumerate(subgraph.tensors or ()) if p in exposed[index] or t.isVariable
        }
        for index, subgraph in subgraphs
    }
    # Unique in the whole model, not only in its subgraph: tools such as the AI Edge
    # Quantizer look tensors up by name across the signatures.
    used = {subgraph.tensors[p].name for index, subgraph in subgraphs for p in kept[index]}
    for index, subgraph in subgraphs:
        for position, tensor in enumerate(subgraph.tensors or ()):
            if position in kept[index]:
                continue
            name = (f"t{position}" if index == 0 else f"s{index}t{position}").encode()
            while name in used:
                name += b"_"
            used.add(name)
            tensor.name = name
            renamed += 1
    return renamed
