"""Runs exported artifacts (``.tflite`` in LiteRT, ``.onnx`` in ONNX Runtime, SavedModel).

A runner maps a batch of inputs to the model's output as numpy, whatever batch size and
sequence length the artifact was fixed to: it loops over rows, pads the last chunk and
pads short sequences on the right (causal models: earlier positions are unaffected;
``*mask`` inputs get zeros there), then cuts the padding off the result.
"""

import os
import statistics
import time

import numpy as np

SERVING_KEY = "serving_default"
OUTPUT_NAME = "output"


class Runner:
    """Callable ``runner(inputs) -> np.ndarray`` over one exported artifact.

    ``runner(inputs)`` runs the artifact's (first) serving function over any number of
    rows; ``runner.run_signature(name, inputs)`` runs one named signature once, on
    inputs of its exact shapes, and returns its outputs by name (a ``.tflite`` from
    ``to_tflite_signatures`` carries several).

    Attributes:
        path: The artifact's path.
        input_details: One dict per input: ``name``, ``shape`` (``None`` = dynamic) and
            ``dtype`` (numpy dtype).
        batch_size: The artifact's fixed batch size, or ``None`` if dynamic.
        sequence_length: The artifact's fixed sequence length, or ``None`` if dynamic.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import export, reference
        >>> _ = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=16)
        >>> runner = export.load_runner("gpt.tflite")
        >>> runner.batch_size, runner.sequence_length
        (1, 16)
        >>> runner(np.zeros((4, 16), "int32")).shape  # batches of 1, run in a loop
        (4, 16, 256)
    """

    def __init__(self, path, input_details):
        self.path = path
        self.input_details = input_details
        first = input_details[0]["shape"]
        self.batch_size = first[0] if first else None
        self.sequence_length = first[1] if len(first) > 1 else None

    def _run_batch(self, feeds):  # feeds: name -> array of the artifact's exact shape
        raise NotImplementedError

    @property
    def signature_names(self):
        """The artifact's signature keys (``("serving_default",)`` for one function)."""
        return (SERVING_KEY,)

    def run_signature(self, name, inputs):
        """Runs one named signature once on inputs of its exact shapes.

        Args:
            name: A key of ``signature_names``.
            inputs: A dict of arrays keyed by the signature's input names.

        Returns:
            A dict of numpy arrays keyed by the signature's output names (quantized
            outputs dequantized to float32).

        Example:
            >>> import numpy as np
            >>> from keras_llmopt import export, reference
            >>> _ = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite",
            ...                      sequence_length=8)
            >>> runner = export.load_runner("gpt.tflite")
            >>> out = runner.run_signature("serving_default",
            ...                            {"tokens": np.zeros((1, 8), "int32")})
            >>> {k: v.shape for k, v in out.items()}
            {'output': (1, 8, 256)}
        """
        self._check_signature(name)
        if not isinstance(inputs, dict):
            raise TypeError(
                f"`inputs` must be a dict of arrays keyed by input name. Received: "
                f"{type(inputs).__name__}"
            )
        return self._run_signature(name, {k: np.asarray(v) for k, v in inputs.items()})

    def _run_signature(self, name, feeds):
        del name
        return {OUTPUT_NAME: self._run_batch(self.as_feeds(feeds))}

    def _check_signature(self, name):
        if name not in self.signature_names:
            raise ValueError(
                f"Artifact {self.path!r} has no signature {name!r}. Accepted: "
                f"{list(self.signature_names)}"
            )

    def as_feeds(self, inputs):
        """Maps an array (token ids) or a dict of arrays onto the artifact's inputs."""
        if isinstance(inputs, dict):
            names = {d["name"] for d in self.input_details}
            unknown = sorted(set(inputs) - names)
            if unknown:
                raise ValueError(
                    f"Unknown inputs {unknown} for artifact {self.path!r}. Accepted: "
                    f"{sorted(names)}"
                )
            missing = sorted(names - set(inputs))
            if missing:
                raise ValueError(f"Missing inputs {missing} for artifact {self.path!r}.")
            return {k: np.asarray(v) for k, v in inputs.items()}
        array = np.asarray(inputs)
        feeds = {}
        token_name = self._token_input_name()
        for detail in self.input_details:
            if detail["name"] == token_name:
                feeds[detail["name"]] = array
            elif "mask" in detail["name"]:
                feeds[detail["name"]] = np.ones(array.shape[:2], dtype=detail["dtype"])
            else:
                raise ValueError(
                    f"Artifact {self.path!r} has several inputs "
                    f"{[d['name'] for d in self.input_details]}; pass a dict of arrays."
                )
        return feeds

    def _token_input_name(self):
        names = [d["name"] for d in self.input_details]
        for name in names:
            if "token" in name:
                return name
        return names[0]

    def __call__(self, inputs):
        feeds = self.as_feeds(inputs)
        rows, length = next(iter(feeds.values())).shape[:2]
        if self.sequence_length is not None and length > self.sequence_length:
            raise ValueError(
                f"Inputs of length {length} are longer than the artifact's fixed "
                f"sequence_length={self.sequence_length} ({self.path!r})."
            )
        batch = self.batch_size or rows
        outputs = []
        for start in range(0, rows, batch):
            chunk = {}
            for detail in self.input_details:
                value = feeds[detail["name"]][start : start + batch]
                chunk[detail["name"]] = _pad(value, batch, self.sequence_length, detail)
            result = self._run_batch(chunk)
            outputs.append(result[: min(batch, rows - start), :length])
        return np.concatenate(outputs, axis=0)

    def example_inputs(self, seed=0):
        """A batch of the artifact's exact input shape (random token ids below 256)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for detail in self.input_details:
            shape = [d if d is not None else 1 for d in detail["shape"]]
            if "mask" in detail["name"]:
                feeds[detail["name"]] = np.ones(shape, detail["dtype"])
            elif np.issubdtype(detail["dtype"], np.integer):
                feeds[detail["name"]] = rng.integers(0, 256, shape).astype(detail["dtype"])
            else:
                feeds[detail["name"]] = rng.standard_normal(shape).astype(detail["dtype"])
        return feeds


def _pad(value, batch, length, detail):
    value = np.asarray(value).astype(detail["dtype"], copy=False)
    pad = [(0, batch - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
    if length is not None and value.ndim > 1:
        pad[1] = (0, length - value.shape[1])
    if any(after for _, after in pad):
        value = np.pad(value, pad)
    return value


def xnnpack_error(content):
    """Why LiteRT's XNNPACK delegate refuses a ``.tflite`` (given as bytes), or ``None``.

    Example:
        >>> import tensorflow as tf
        >>> f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec((2,), tf.float32)])
        >>> xnnpack_error(tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [f.get_concrete_function()], f).convert()) is None
        True
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=bytes(content)).allocate_tensors()
    except RuntimeError as error:
        if "delegate" not in str(error).lower():
            raise
        return str(error)
    return None


class TFLiteRunner(Runner):
    """Runs a ``.tflite`` file with LiteRT (``ai_edge_litert``), XNNPACK on.

    If XNNPACK refuses the model, it runs on LiteRT's builtin kernels and
    ``xnnpack_error`` says why (``None`` when XNNPACK runs it).
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.xnnpack_error = None
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except RuntimeError as error:
            if "delegate" not in str(error).lower():
                raise
            # XNNPACK refuses some valid models (e.g. sparse int8 FULLY_CONNECTED); LiteRT's
            # builtin kernels still run them, more slowly.
            self.xnnpack_error = str(error)
            self.interpreter = Interpreter(
                model_path=path,
                num_threads=num_threads,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            self.interpreter.allocate_tensors()
        self._signatures = self.interpreter.get_signature_list()
        self._signature_runners = {}
        self._inputs = self.interpreter.get_input_details()
        self._output = self.interpreter.get_output_details()[0]
        details = [
            {
                "name": clean_name(d["name"], self._signatures),
                "shape": tuple(
                    None if s < 0 else int(n) for n, s in zip(d["shape"], d["shape_signature"])
                ),
                "dtype": np.dtype(d["dtype"]),
                "index": d["index"],
                "quantization": d["quantization"],
            }
            for d in self._inputs
        ]
        super().__init__(path, details)

    def _run_batch(self, feeds):
        for detail in self.input_details:
            value = feeds[detail["name"]]
            scale, zero = detail["quantization"]
            if scale and not np.issubdtype(value.dtype, np.integer):
                value = np.round(value / scale + zero).astype(detail["dtype"])
            self.interpreter.set_tensor(detail["index"], value)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])
        return _dequantize(out, self._output)

    @property
    def signature_names(self):
        """The file's SignatureDef keys (``("serving_default",)`` for older files)."""
        return tuple(self._signatures) or (SERVING_KEY,)

    def _run_signature(self, name, feeds):
        if not self._signatures:
            return super()._run_signature(name, feeds)
        runner = self._signature_runners.get(name)
        if runner is None:
            runner = self.interpreter.get_signature_runner(name)
            self._signature_runners[name] = runner
        details = runner.get_input_details()
        unknown = sorted(set(feeds) - set(details))
        missing = sorted(set(details) - set(feeds))
        if unknown or missing:
            raise ValueError(
                f"Signature {name!r} of {self.path!r} takes inputs {sorted(details)}. "
                f"Received: {sorted(feeds)} (unknown {unknown}, missing {missing})"
            )
        values = {}
        for key, detail in details.items():
            value = feeds[key]
            if tuple(value.shape) != tuple(detail["shape"]):
                raise ValueError(
                    f"Signature {name!r} input {key!r} has shape {tuple(detail['shape'])}. "
                    f"Received: shape {tuple(value.shape)}"
                )
            scale, zero = detail["quantization"]
            if scale and not np.issubdtype(value.dtype, np.integer):
                value = np.round(value / scale + zero)
            values[key] = value.astype(detail["dtype"], copy=False)
        produced = runner(**values)
        outputs = runner.get_output_details()
        return {key: _dequantize(value, outputs[key]) for key, value in produced.items()}


def _dequantize(value, detail):
    scale, zero = detail["quantization"]
    if scale and detail["dtype"] != np.float32:
        value = (value.astype(np.float32) - zero) * scale
    return np.asarray(value, dtype=np.float32)


class ONNXRunner(Runner):
    """Runs a ``.onnx`` file with ONNX Runtime on CPU."""

    def __init__(self, path, num_threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        details = [
            {
                "name": i.name,
                "shape": tuple(d if isinstance(d, int) else None for d in i.shape),
                "dtype": np.dtype(_ONNX_TYPES.get(i.type, "float32")),
            }
            for i in self.session.get_inputs()
        ]
        super().__init__(path, details)

    def _run_batch(self, feeds):
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)

    def _run_signature(self, name, feeds):
        del name
        names = [o.name for o in self.session.get_outputs()]
        produced = self.session.run(None, self.as_feeds(feeds))
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, produced)}


class SavedModelRunner(Runner):
    """Runs a SavedModel folder's ``serving_default`` signature with TensorFlow."""

    def __init__(self, path, num_threads=None):
        import tensorflow as tf

        del num_threads
        self._loaded = tf.saved_model.load(path)
        self._function = self._loaded.signatures["serving_default"]
        _, kwargs = self._function.structured_input_signature
        details = [
            {
                "name": name,
                "shape": tuple(spec.shape.as_list()),
                "dtype": np.dtype(spec.dtype.as_numpy_dtype),
            }
            for name, spec in kwargs.items()
        ]
        super().__init__(path, details)

    def _run_batch(self, feeds):
        out = self._function(**feeds)
        return np.asarray(next(iter(out.values())), dtype=np.float32)

    @property
    def signature_names(self):
        """The SavedModel's signature keys."""
        return tuple(self._loaded.signatures)

    def _run_signature(self, name, feeds):
        out = self._loaded.signatures[name](**feeds)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


_ONNX_TYPES = {
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


def clean_name(name, signature_keys=(SERVING_KEY,)):
    """A LiteRT tensor name without the signature prefix and output index.

    Example:
        >>> clean_name("serving_default_tokens:0")
        'tokens'
    """
    name = name.split(":")[0]
    for key in sorted(signature_keys or (SERVING_KEY,), key=len, reverse=True):
        if name.startswith(key + "_"):
            return name[len(key) + 1 :]
    return name


def load_runner(path, num_threads=None):
    """Opens an exported artifact for inference.

    Args:
        path: A ``.tflite`` file (LiteRT), a ``.onnx`` file (ONNX Runtime) or a
            SavedModel folder.
        num_threads: CPU threads for the runtime (``None``: its default).

    Returns:
        A ``Runner``: ``runner(tokens)`` with int32 tokens ``(B, T)`` (or a dict of
        arrays for multi-input models) returns float32 outputs ``(B, T, ...)``;
        ``runner.signature_names`` lists the artifact's signatures and
        ``runner.run_signature(name, {input: array})`` returns ``{output: array}``.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import export, reference
        >>> _ = export.to_onnx(reference.build_gpt("tiny"), "gpt.onnx")
        >>> runner = export.load_runner("gpt.onnx", num_threads=2)
        >>> runner(np.zeros((8, 32), "int32")).shape
        (8, 32, 256)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike. Received: path={path!r}")
    path = os.fspath(path)
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(
            f"`num_threads` must be a positive int or None. Received: num_threads={num_threads!r}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"No artifact at path={path!r}")
    if os.path.isdir(path):
        return SavedModelRunner(path, num_threads)
    if path.endswith(".tflite"):
        return TFLiteRunner(path, num_threads)
    if path.endswith(".onnx"):
        return ONNXRunner(path, num_threads)
    raise ValueError(
        f"Cannot tell the artifact's format. Received: path={path!r}; accepted: a .tflite "
        "or .onnx file, or a SavedModel folder"
    )


def measure_latency(path, num_threads=1, warmup=5, repeats=30, inputs=None):
    """Median wall time of one forward pass of an artifact, in milliseconds.

    One pass is one invocation at the artifact's own fixed batch and sequence length
    (dynamic axes: 1 row, its sequence length or 1).

    Args:
        path: The artifact (see :func:`load_runner`).
        num_threads: CPU threads for the runtime.
        warmup: Passes run first and not timed.
        repeats: Timed passes; the median is returned.
        inputs: Optional dict of inputs of the artifact's exact shape.

    Example:
        >>> from keras_llmopt import export, reference
        >>> _ = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=16)
        >>> milliseconds = export.measure_latency("gpt.tflite", num_threads=2, repeats=5)
        >>> milliseconds > 0
        True
    """
    for name, value in (("warmup", warmup), ("repeats", repeats)):
        if not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise ValueError(
                f"`{name}` must be a non-negative int (repeats >= 1). Received: {name}={value!r}"
            )
    runner = load_runner(path, num_threads=num_threads)
    feeds = runner.example_inputs() if inputs is None else runner.as_feeds(inputs)
    for _ in range(warmup):
        runner._run_batch(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner._run_batch(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
