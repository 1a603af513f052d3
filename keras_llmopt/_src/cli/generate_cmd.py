"""``keras-llmopt generate``: stream text from a ``.keras`` model or a generator ``.tflite``.

Tokens: the reference model's bytes when the model has 256 tokens, a saved KerasHub
CausalLM's own tokenizer when it has one, ``--prompt_ids`` otherwise. A ``.tflite``
with ``prefill``/``decode`` signatures runs through ``load_generator``; a fixed-window
``.tflite`` recomputes its window per token.
"""

import codecs
import os
import sys

from absl import flags, logging

from keras_llmopt._src.cli import flags as cli_flags

HELP = (
    "Generate from --model (.keras, or a .tflite generator / fixed-window file), streaming "
    "the text: --prompt (the byte tokenizer, or a KerasHub model's own) or --prompt_ids, "
    "--max_new_tokens, --sampler (greedy, top_k, top_p, temperature)."
)
FLAG_NAMES = (
    "model",
    "prompt",
    "prompt_ids",
    "max_new_tokens",
    "sampler",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stop_token_ids",
    "num_threads",
)

PROMPT = flags.DEFINE_string("prompt", None, "Prompt text.")
PROMPT_IDS = flags.DEFINE_list("prompt_ids", None, "Prompt token ids (comma separated).")
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.", lower_bound=0)
SAMPLER = flags.DEFINE_enum(
    "sampler", "greedy", ["greedy", "top_k", "top_p", "temperature"], "Next-token sampler."
)
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
TOP_K = flags.DEFINE_integer("top_k", None, "top_k sampler: tokens kept.")
TOP_P = flags.DEFINE_float("top_p", None, "top_p sampler: probability mass kept.")
STOP_TOKEN_IDS = flags.DEFINE_list("stop_token_ids", None, "Token ids that end generation.")
NUM_THREADS = flags.DEFINE_integer("num_threads", None, "LiteRT threads (.tflite).")


def run(argv):
    del argv
    path = cli_flags.MODEL.value
    if not path:
        raise ValueError("generate: pass the model with --model=PATH (.keras or .tflite)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"generate: no such model file. Received: --model={path}")
    source, vocab, tokenizer = _open(path)
    prompt = _prompt_ids(vocab, tokenizer)
    sampling = {
        "sampler": SAMPLER.value,
        "temperature": TEMPERATURE.value,
        "top_k": TOP_K.value,
        "top_p": TOP_P.value,
        "seed": cli_flags.SEED.value,
        "stop_token_ids": [int(t) for t in STOP_TOKEN_IDS.value or []] or None,
    }
    show = _printer(vocab, tokenizer)
    show([int(t) for t in prompt])
    tokens = []
    for token in source(prompt, MAX_NEW_TOKENS.value, **sampling):
        tokens.append(int(token[0]))
        show([tokens[-1]])
    show(None)
    return tokens


def _open(path):
    """``(stream(prompt, n, **sampling), vocab size, tokenizer or None)`` for the file."""
    if path.endswith(".tflite"):
        from keras_llmopt._src.export.generator_runner import GeneratorRunner

        try:
            runner = GeneratorRunner(path, num_threads=NUM_THREADS.value)
        except ValueError:  # a fixed-window file: recompute per token
            from keras_llmopt._src.export.window_generator import WindowGenerator

            window = WindowGenerator(path, num_threads=NUM_THREADS.value)
            logging.info("generate: %s has no decode signature; recomputing its window", path)

            def recompute(prompt, n, **sampling):
                out = window.generate(prompt[None], n, **sampling)
                for token in out[0, len(prompt) :]:
                    yield [token]

            return recompute, 256, None

        def decode(prompt, n, **sampling):
            yield from runner.stream(prompt[None], n, **sampling)
            stats = runner.last_stats
            logging.info(
                "generate: prefill %s tokens/s, decode %s tokens/s",
                _rate(stats.get("prefill_tokens_per_second")),
                _rate(stats.get("decode_tokens_per_second")),
            )

        return decode, runner.vocab_size, None
    if not path.endswith(".keras"):
        raise ValueError(f"generate: --model must be .keras or .tflite. Received: {path}")
    import keras

    from keras_llmopt._src.generation.decoders import decoder_for
    from keras_llmopt._src.generation.generate import stream

    model = keras.saving.load_model(path, compile=False)
    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)

    def keras_stream(prompt, n, **sampling):
        yield from stream(model, prompt[None], n, **sampling)

    return keras_stream, decoder_for(model).vocab_size, tokenizer


def _prompt_ids(vocab, tokenizer):
    import numpy as np

    if PROMPT_IDS.value:
        return np.asarray([int(t) for t in PROMPT_IDS.value], "int32")
    if PROMPT.value is None:
        raise ValueError("generate: pass --prompt=TEXT or --prompt_ids=1,2,3")
    if tokenizer is not None:
        from keras import ops

        return np.asarray(ops.convert_to_numpy(tokenizer(PROMPT.value)), "int32").reshape(-1)
    if vocab == 256:
        return np.frombuffer(PROMPT.value.encode("utf-8"), np.uint8).astype("int32")
    raise ValueError(
        f"generate: this model has {vocab} tokens and no tokenizer of its own; pass "
        "--prompt_ids=1,2,3 instead of --prompt"
    )


def _printer(vocab, tokenizer):
    """``show(ids)`` writes decoded text as it comes (``None`` ends the line)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def show(ids):
        if ids is None:
            sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        elif tokenizer is not None:
            sys.stdout.write(str(tokenizer.detokenize(ids)))
        elif vocab == 256:
            sys.stdout.write(decoder.decode(bytes(ids)))
        else:
            sys.stdout.write(" ".join(str(i) for i in ids) + " ")
        sys.stdout.flush()

    return show


def _rate(value):
    return "-" if value is None else f"{value:.0f}"
