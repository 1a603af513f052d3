"""Representative (calibration) data for the TFLite converter, in the artifact's shape."""

import numpy as np


def representative_generator(data, specs, is_dict, batch_size):
    """Normalises ``representative_dataset`` to the converter's zero-argument generator.

    Accepted forms: an array of token ids ``(N, T')`` (rows are grouped ``batch_size``
    at a time and cut to the artifact's length, so validation windows of length ``T + 1``
    work as they are); a dict of such arrays (multi-input models); or a callable returning
    an iterable whose items are an array, a list of arrays in input order, or a dict.
    Integer inputs are fed as integers: they need no float range.
    """
    names = [s.name for s in specs]
    batch = batch_size or 1

    def _fit(value, spec):
        value = np.asarray(value)
        if value.ndim == len(spec.shape) - 1:
            value = value[None]
        length = spec.shape[1] if len(spec.shape) > 1 else None
        if length is not None and value.ndim > 1:
            if value.shape[1] < length:
                raise ValueError(
                    f"representative_dataset: input {spec.name!r} has length {value.shape[1]}"
                    f", shorter than the export's sequence_length={length}."
                )
            value = value[:, :length]
        return value.astype(spec.dtype)

    def _as_list(item):
        if isinstance(item, dict):
            missing = sorted(set(names) - set(item))
            if missing:
                raise ValueError(
                    f"representative_dataset: sample lacks inputs {missing}. "
                    f"Received keys: {sorted(item)}"
                )
            return [_fit(item[n], s) for n, s in zip(names, specs)]
        if isinstance(item, (list, tuple)):
            if len(item) != len(specs):
                raise ValueError(
                    f"representative_dataset: sample has {len(item)} arrays; the model has "
                    f"{len(specs)} inputs {names}"
                )
            return [_fit(v, s) for v, s in zip(item, specs)]
        if len(specs) == 1:
            return [_fit(item, specs[0])]
        # One token array for a multi-input model: masks get ones.
        tokens = np.asarray(item)
        out = []
        for spec in specs:
            if "mask" in spec.name:
                out.append(_fit(np.ones(tokens.shape[: len(spec.shape)]), spec))
            else:
                out.append(_fit(tokens, spec))
        return out

    if callable(data):

        def generator():
            count = 0
            for item in data():
                for row in _split_rows(_as_list(item), batch):
                    count += 1
                    yield row
            if not count:
                raise ValueError("representative_dataset yielded no samples.")

        return generator

    if isinstance(data, dict):
        first = _as_list(data)
    elif isinstance(data, (np.ndarray, list)):
        first = _as_list(np.asarray(data))
    else:
        raise TypeError(
            "`representative_dataset` must be an array of token ids, a dict of arrays or a "
            f"callable returning an iterable of samples. Received: {type(data).__name__}"
        )
    if len(first[0]) == 0:
        raise ValueError("`representative_dataset` is empty.")

    def generator():
        yield from _split_rows(first, batch)

    return generator


def _split_rows(arrays, batch):
    rows = len(arrays[0])
    for start in range(0, rows - batch + 1, batch):
        yield [a[start : start + batch] for a in arrays]
