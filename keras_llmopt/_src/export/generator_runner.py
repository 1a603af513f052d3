"""``load_generator``: generate text from a LiteRT generator file (prefill + decode).

The runner drives the file through LiteRT's ``CompiledModel`` API, the one LiteRT-LM
and Android apps use, the way LiteRT-LM does: each prompt row owns one set of cache
buffers, passed to a signature as its ``kv_cache_*`` inputs *and* outputs, so the
caches stay in place from step to step and from signature to signature (no copy of
the cache in or out per token; only the tokens, positions and mask are written and
the logits read). The prompt's first ``T - 1`` tokens go through the prefill buckets
(largest bucket that fits first; a remainder shorter than every bucket is padded, the
padding's cache slots being overwritten by the decode steps before any query may see
them, or goes through ``decode`` where padding would overrun the cache), then
``decode`` runs once per token, the last prompt token first. The same schedule and
the same :class:`Sampler` as ``generation.generate`` give the same tokens for the
same logits and seed.
"""

import time

import numpy as np

from keras_llmopt._src.export import generator_signatures as names
from keras_llmopt._src.export.files import check_path
from keras_llmopt._src.generation.generate import StopTracker, check_length, check_prompt
from keras_llmopt._src.generation.sampling import Sampler, sampling_config


def _compiled_model(path, num_threads):
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    options = Options(
        hardware_accelerators=HardwareAccelerator.CPU,
        cpu_options=CpuOptions(num_threads=int(num_threads or 0)),
    )
    return CompiledModel.from_file(path, options=options)


class _Signature:
    """One signature's token, position and mask buffers (and logits, for decode)."""

    def __init__(self, model, key):
        self.key = key
        self.model = model
        details = model.get_input_tensor_details(key)
        self.length = int(details[names.INPUT_POS]["shape"][0])
        self.has_mask = names.MASK in details
        self.inputs = {
            name: model.create_input_buffer_by_name(key, name)
            for name in (names.TOKENS, names.INPUT_POS, names.MASK)
            if name in details
        }
        outputs = model.get_output_tensor_details(key)
        self.logits = None
        if names.LOGITS in outputs:
            self.logits = model.create_output_buffer_by_name(key, names.LOGITS)
            self.logits_size = int(np.prod(outputs[names.LOGITS]["shape"]))

    def run(self, tokens, start, caches, cache_length):
        """Runs on ``tokens`` ``[1, length]`` at ``start``, updating ``caches`` in place."""
        positions = np.arange(start, start + tokens.shape[1], dtype="int32")
        self.inputs[names.TOKENS].write(np.ascontiguousarray(tokens, "int32"))
        self.inputs[names.INPUT_POS].write(positions)
        if self.has_mask:
            self.inputs[names.MASK].write(names.causal_mask(positions, cache_length))
        outputs = dict(caches)
        if self.logits is not None:
            outputs[names.LOGITS] = self.logits
        self.model.run_by_name(self.key, {**self.inputs, **caches}, outputs)
        if self.logits is None:
            return None
        return self.logits.read(self.logits_size, np.float32)


class GeneratorRunner:
    """Runs a generator ``.tflite`` (see ``to_tflite_generator``) with LiteRT.

    Attributes:
        path: The file.
        cache_length: Positions of its caches (prompt + new tokens must fit).
        prefill_lengths: Its prefill buckets, longest first.
        num_slots: Key/value cache pairs.
        vocab_size: Width of the decode logits.
        last_stats: Figures of the last call: ``prompt_tokens``, ``new_tokens``,
            ``prefill_seconds``, ``decode_seconds``, ``prefill_tokens_per_second``,
            ``decode_tokens_per_second``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> _ = export.to_tflite_generator(model, "gen.tflite", cache_length=16,
        ...                                prefill_lengths=(4, 1))
        >>> runner = export.load_generator("gen.tflite")
        >>> runner.cache_length, runner.prefill_lengths
        (16, (4, 1))
        >>> runner.generate([[72, 105, 33]], max_new_tokens=5).shape
        (1, 8)
        >>> runner.last_stats["new_tokens"]
        5
    """

    def __init__(self, path, num_threads=None):
        self.path = check_path(path)
        self._model = _compiled_model(self.path, num_threads)
        signatures = self._model.get_signature_list()
        if names.DECODE not in signatures:
            raise ValueError(
                f"{self.path!r} is not a generator file: it has signatures "
                f"{sorted(signatures)}, no {names.DECODE!r}. Write one with "
                "export.to_tflite_generator"
            )
        inputs = self._model.get_input_tensor_details(names.DECODE)
        self.num_slots = sum(1 for key in inputs if key.startswith("kv_cache_k_"))
        self._cache_inputs = {
            key: (tuple(int(n) for n in detail["shape"]), np.dtype(detail["dtype"]))
            for key, detail in inputs.items()
            if key.startswith("kv_cache_")
        }
        if names.MASK in inputs:
            self.cache_length = int(inputs[names.MASK]["shape"][-1])
        else:
            self.cache_length = int(next(iter(self._cache_inputs.values()))[0][1])
        self._decode = _Signature(self._model, names.DECODE)
        self.vocab_size = self._decode.logits_size
        buckets = {}
        for key in signatures:
            if key.startswith("prefill"):
                signature = _Signature(self._model, key)
                buckets[signature.length] = signature
        self._prefills = dict(sorted(buckets.items(), reverse=True))
        self.prefill_lengths = tuple(self._prefills)
        self.last_stats = {}

    def empty_caches(self):
        """Zero caches for one row, keyed by input name."""
        return {key: np.zeros(shape, dtype) for key, (shape, dtype) in self._cache_inputs.items()}

    def _cache_buffers(self, values=None):
        """One row's cache buffers (shared by every signature), zero or from ``values``."""
        values = values or self.empty_caches()
        buffers = {}
        for key in self._cache_inputs:
            buffers[key] = self._model.create_input_buffer_by_name(names.DECODE, key)
            buffers[key].write(np.ascontiguousarray(values[key]))
        return buffers

    def _read_caches(self, buffers):
        return {
            key: buffers[key].read(int(np.prod(shape)), dtype).reshape(shape)
            for key, (shape, dtype) in self._cache_inputs.items()
        }

    def prefill(self, tokens, caches, start=0):
        """Writes ``tokens`` ``[1, n]`` into ``caches`` from ``start``; returns the caches.

        Example:
            >>> runner = load_generator("gen.tflite")
            >>> caches = runner.prefill(np.array([[1, 2, 3, 4, 5, 6]]), runner.empty_caches())
            >>> float(np.abs(caches["kv_cache_k_0"][0, :6]).sum()) > 0
            True
        """
        buffers = self._cache_buffers(caches)
        self._prefill(np.asarray(tokens), buffers, start)
        return self._read_caches(buffers)

    def _prefill(self, tokens, buffers, start):
        remaining = tokens
        while remaining.shape[1]:
            fitting = [n for n in self._prefills if n <= remaining.shape[1]]
            shortest = min(self._prefills, default=None)
            if fitting:
                length = fitting[0]
                signature, chunk = self._prefills[length], remaining[:, :length]
            elif shortest is not None and start + shortest <= self.cache_length:
                # Shorter than every bucket: padded with its last token (the padding's
                # slots are overwritten before any query may see them).
                length, signature = shortest, self._prefills[shortest]
                pad = np.repeat(remaining[:, -1:], length - remaining.shape[1], axis=1)
                chunk = np.concatenate([remaining, pad], axis=1)
            else:  # padding would overrun the cache: decode writes one position
                length, signature, chunk = 1, self._decode, remaining[:, :1]
            if start + length > self.cache_length:
                raise ValueError(
                    f"Prefill of {length} tokens at position {start} overruns the cache "
                    f"length ({self.cache_length}) of {self.path!r}"
                )
            signature.run(chunk, start, buffers, self.cache_length)
            consumed = min(length, remaining.shape[1])
            start += consumed
            remaining = remaining[:, consumed:]

    def sequence_logits(self, tokens):
        """Decode logits ``[T, V]`` at each position of one row ``tokens`` ``[T]``.

        Position ``t``'s logits predict token ``t + 1`` (teacher forcing: the given
        tokens are fed, not the chosen ones), for scoring a text or comparing a
        file's choices with another model's along the same prefix.

        Example:
            >>> runner = load_generator("gen.tflite")
            >>> runner.sequence_logits(np.array([72, 105, 33])).shape
            (3, 256)
        """
        row = check_prompt(tokens, self.vocab_size)[0]
        check_length(len(row), 0, self.cache_length, f"the cache length of {self.path!r}")
        buffers = self._cache_buffers()
        found = [
            self._decode.run(np.array([[token]]), position, buffers, self.cache_length)
            for position, token in enumerate(row)
        ]
        return np.stack(found)

    def stream(
        self,
        prompt_ids,
        max_new_tokens,
        *,
        sampler="greedy",
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        stop_token_ids=None,
    ):
        """Yields each new token as an int32 array ``[B]`` (as ``generation.stream``).

        Raises:
            ValueError: Prompt + ``max_new_tokens`` longer than ``cache_length``, or bad
                prompt / sampling arguments (named).

        Example:
            >>> runner = load_generator("gen.tflite")
            >>> [int(t[0]) for t in runner.stream([[72]], 3)] == runner.generate(
            ...     [[72]], 3)[0, 1:].tolist()
            True
        """
        config = sampling_config(sampler, temperature, top_k, top_p, seed, stop_token_ids)
        prompt = check_prompt(prompt_ids, self.vocab_size)
        check_length(
            prompt.shape[1], max_new_tokens, self.cache_length, f"the cache length of {self.path!r}"
        )
        return self._stream(prompt, max_new_tokens, config)

    def _stream(self, prompt, max_new_tokens, config):
        choose = Sampler(config)
        batch, length = prompt.shape
        tracker = StopTracker(batch, config.stop_token_ids)
        stats = {"prompt_tokens": batch * (length - 1), "new_tokens": 0}
        stats.update(prefill_seconds=0.0, decode_seconds=0.0)
        self.last_stats = stats
        rows = []
        began = time.perf_counter()
        for row in prompt:
            buffers = self._cache_buffers()
            self._prefill(row[None, :-1], buffers, 0)
            rows.append([buffers, row[None, -1:]])
        stats["prefill_seconds"] = time.perf_counter() - began
        for step in range(max_new_tokens):
            began = time.perf_counter()
            logits = [
                self._decode.run(token, length - 1 + step, buffers, self.cache_length)
                for buffers, token in rows
            ]
            stats["decode_seconds"] += time.perf_counter() - began
            stats["new_tokens"] += 1
            _rates(stats)
            chosen = tracker.update(choose(np.stack(logits)))
            for entry, token in zip(rows, chosen):
                entry[1] = np.array([[token]], "int32")
            yield chosen
            if tracker.finished:
                return
        _rates(stats)

    def generate(self, prompt_ids, max_new_tokens, **sampling):
        """Prompt + new tokens, int32 ``[B, T + n]`` (as ``generation.generate``).

        Example:
            >>> runner = load_generator("gen.tflite")
            >>> runner.generate([72, 105], 4, sampler="top_p", top_p=0.9, seed=0).shape
            (1, 6)
        """
        prompt = check_prompt(prompt_ids)
        new = list(self.stream(prompt, max_new_tokens, **sampling))
        if not new:
            return prompt
        return np.concatenate([prompt, np.stack(new, axis=1)], axis=1).astype("int32")


def _rates(stats):
    for phase, count in (("prefill", "prompt_tokens"), ("decode", "new_tokens")):
        seconds = stats[f"{phase}_seconds"]
        stats[f"{phase}_tokens_per_second"] = stats[count] / seconds if seconds > 0 else None


def load_generator(path, num_threads=None):
    """Opens a generator ``.tflite`` for ``generate`` / ``stream`` (see ``GeneratorRunner``).

    Args:
        path: A file written by ``to_tflite_generator`` (or any LiteRT-LM style file
            with ``prefill*`` and ``decode`` signatures).
        num_threads: LiteRT CPU threads.

    Example:
        >>> load_generator("gen.tflite").num_slots
        2
    """
    return GeneratorRunner(path, num_threads=num_threads)
