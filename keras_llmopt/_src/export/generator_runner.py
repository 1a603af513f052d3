"""``load_generator``: generate text from a LiteRT generator file (prefill + decode).

The runner keeps the caches as NumPy arrays and feeds them through the file's
signatures: the prompt's first ``T - 1`` tokens go through the prefill buckets
(largest bucket that fits first; a remainder shorter than every bucket is padded, the
padding's cache slots being overwritten by the decode steps before any query may
see them), then ``decode`` runs once per token, the last prompt token first. The
same schedule and the same :class:`Sampler` as ``generation.generate`` give the same
tokens for the same logits and seed.
"""

import time

import numpy as np

from keras_llmopt._src.export import generator_signatures as names
from keras_llmopt._src.export.files import check_path
from keras_llmopt._src.generation.generate import StopTracker, check_length, check_prompt
from keras_llmopt._src.generation.sampling import Sampler, sampling_config


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
        from ai_edge_litert.interpreter import Interpreter

        self.path = check_path(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if names.DECODE not in signatures:
            raise ValueError(
                f"{self.path!r} is not a generator file: it has signatures "
                f"{sorted(signatures)}, no {names.DECODE!r}. Write one with "
                "export.to_tflite_generator"
            )
        self._runners = {key: self.interpreter.get_signature_runner(key) for key in signatures}
        decode = self._runners[names.DECODE]
        inputs = decode.get_input_details()
        self.num_slots = sum(1 for key in inputs if key.startswith("kv_cache_k_"))
        self._cache_inputs = {
            key: (tuple(detail["shape"]), np.dtype(detail["dtype"]))
            for key, detail in inputs.items()
            if key.startswith("kv_cache_")
        }
        self.has_mask = names.MASK in inputs
        if self.has_mask:
            self.cache_length = int(inputs[names.MASK]["shape"][-1])
        else:
            self.cache_length = int(next(iter(self._cache_inputs.values()))[0][1])
        self.vocab_size = int(decode.get_output_details()[names.LOGITS]["shape"][-1])
        buckets = {}
        for key in signatures:
            if key.startswith("prefill"):
                length = int(self._runners[key].get_input_details()[names.INPUT_POS]["shape"][0])
                buckets[length] = key
        self._prefills = dict(sorted(buckets.items(), reverse=True))
        self.prefill_lengths = tuple(self._prefills)
        self.last_stats = {}

    def empty_caches(self):
        """Zero caches for one row, keyed by input name."""
        return {key: np.zeros(shape, dtype) for key, (shape, dtype) in self._cache_inputs.items()}

    def _run(self, key, tokens, start, caches):
        positions = np.arange(start, start + tokens.shape[1], dtype="int32")
        feeds = dict(caches)
        feeds[names.TOKENS] = tokens.astype("int32")
        feeds[names.INPUT_POS] = positions
        if self.has_mask:
            feeds[names.MASK] = names.causal_mask(positions, self.cache_length)
        outputs = self._runners[key](**feeds)
        return outputs, {name: outputs[name] for name in caches}

    def prefill(self, tokens, caches, start=0):
        """Writes ``tokens`` ``[1, n]`` into ``caches`` from ``start``; returns the caches.

        Example:
            >>> runner = load_generator("gen.tflite")
            >>> caches = runner.prefill(np.array([[1, 2, 3, 4, 5, 6]]), runner.empty_caches())
            >>> float(np.abs(caches["kv_cache_k_0"][0, :6]).sum()) > 0
            True
        """
        remaining = tokens
        while remaining.shape[1]:
            fitting = [n for n in self._prefills if n <= remaining.shape[1]]
            if fitting:
                length = fitting[0]
                chunk = remaining[:, :length]
            else:  # shorter than every bucket: pad with its last token
                length = min(self._prefills)
                pad = np.repeat(remaining[:, -1:], length - remaining.shape[1], axis=1)
                chunk = np.concatenate([remaining, pad], axis=1)
            if start + length > self.cache_length:
                raise ValueError(
                    f"Prefill of {length} tokens at position {start} overruns the cache "
                    f"length ({self.cache_length}) of {self.path!r}"
                )
            _, caches = self._run(self._prefills[length], chunk, start, caches)
            consumed = min(length, remaining.shape[1])
            start += consumed
            remaining = remaining[:, consumed:]
        return caches

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
        caches = self.empty_caches()
        found = []
        for position, token in enumerate(row):
            outputs, caches = self._run(names.DECODE, np.array([[token]]), position, caches)
            found.append(outputs[names.LOGITS].reshape(-1))
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
            caches = self.prefill(row[None, :-1], self.empty_caches())
            rows.append([caches, row[None, -1:]])
        stats["prefill_seconds"] = time.perf_counter() - began
        for step in range(max_new_tokens):
            began = time.perf_counter()
            logits = []
            for entry in rows:
                outputs, entry[0] = self._run(names.DECODE, entry[1], length - 1 + step, entry[0])
                logits.append(outputs[names.LOGITS].reshape(-1))
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
