"""Generating from a fixed-window ``.tflite`` by recomputing the whole window per token.

What a user of a plain exported LLM file has to do without a generator file: for each
new token, run the full fixed-length window (the prefix, right-padded, or its last
``L`` tokens once it is longer) and read the logits at the last real position. Kept as
the baseline the generator file is measured against, and to sample text from any
fixed-window artifact (the demo's compressed files).
"""

import time

import numpy as np

from keras_llmopt._src.export.runtime import load_runner
from keras_llmopt._src.generation.generate import StopTracker, check_length, check_prompt
from keras_llmopt._src.generation.sampling import Sampler, sampling_config


class WindowGenerator:
    """Greedy / sampled generation from a fixed-window ``.tflite`` (no cache).

    Args:
        path: A ``.tflite`` from ``to_tflite`` with one token input ``[1, L]``.
        num_threads: LiteRT CPU threads.

    Attributes:
        window: ``L``, the file's fixed length.
        last_stats: ``new_tokens``, ``decode_seconds``, ``decode_tokens_per_second``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> _ = export.to_tflite(model, "window.tflite", sequence_length=16)
        >>> generator = WindowGenerator("window.tflite")
        >>> generator.window, generator.generate([[72, 105]], 4).shape
        (16, (1, 6))
    """

    def __init__(self, path, num_threads=None):
        self.runner = load_runner(path, num_threads=num_threads)
        detail = self.runner.input_details[0]
        if len(self.runner.input_details) != 1 or len(detail["shape"]) != 2:
            raise ValueError(
                f"{path!r} is not a fixed-window token model: it takes "
                f"{[d['name'] for d in self.runner.input_details]}"
            )
        self.window = int(detail["shape"][1])
        self.last_stats = {}

    def generate(self, prompt_ids, max_new_tokens, **sampling):
        """Prompt + new tokens, int32 ``[1, T + n]`` (sampling as ``generation.generate``).

        Example:
            >>> WindowGenerator("window.tflite").generate([72], 3, sampler="top_k",
            ...                                           top_k=4, seed=0).shape
            (1, 4)
        """
        config = sampling_config(**sampling)
        prompt = check_prompt(prompt_ids)
        if prompt.shape[0] != 1:
            raise ValueError(f"WindowGenerator takes one prompt row. Received: {prompt.shape}")
        check_length(prompt.shape[1], max_new_tokens, None, "")
        choose = Sampler(config)
        tracker = StopTracker(1, config.stop_token_ids)
        tokens = list(prompt[0])
        began = time.perf_counter()
        for _ in range(max_new_tokens):
            context = tokens[-self.window :]
            window = np.zeros((1, self.window), "int32")
            window[0, : len(context)] = context
            logits = self.runner(window)[:, len(context) - 1]
            chosen = tracker.update(choose(logits))
            tokens.append(int(chosen[0]))
            if tracker.finished:
                break
        seconds = time.perf_counter() - began
        new = len(tokens) - prompt.shape[1]
        self.last_stats = {
            "new_tokens": new,
            "decode_seconds": seconds,
            "decode_tokens_per_second": new / seconds if seconds > 0 else None,
        }
        return np.asarray([tokens], "int32")
