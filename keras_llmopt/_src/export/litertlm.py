"""``to_litertlm``: a generator file packaged for Google's LiteRT-LM engine, verified in it.

The ``.litertlm`` container (``litert-lm-builder``) holds the verified generator
``.tflite`` (prefill + decode), the tokenizer and the LLM metadata the engine needs:
a generic model type, the start and stop tokens, the context length and a default
sampler (TOP_P with k = 1, i.e. greedy: TOP_K and GREEDY are not implemented in the
0.18 CPU engine). It is then run in ``litert_lm.Engine`` (CPU) and its greedy text
must equal our runner's for the verification prompt; only then is it moved into place.
"""

import dataclasses
import json
import os
import tempfile

from keras_llmopt._src.export import files
from keras_llmopt._src.export.generator import to_tflite_generator
from keras_llmopt._src.export.generator_runner import GeneratorRunner
from keras_llmopt._src.export.verification import VerificationError

BYTE_TOKENIZER = "bytes"
DEFAULT_PROMPT = "def main(argv):\n    "


def byte_tokenizer_json():
    """A HuggingFace ``tokenizer.json`` mapping each of the 256 bytes to its own id.

    Byte-level BPE without merges (GPT-2's byte-to-character table), so token id ``b``
    is byte ``b``: the reference GPT's tokenizer.

    Example:
        >>> spec = byte_tokenizer_json()
        >>> len(spec["model"]["vocab"]), spec["model"]["vocab"]["A"]
        (256, 65)
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    characters = {b: chr(b) for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + extra)
            extra += 1
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {characters[b]: b for b in range(256)},
            "merges": [],
        },
    }


def llm_metadata_text(start_token_id, stop_token_ids, max_num_tokens):
    """The ``LlmMetadata`` textproto of a generic (non-Gemma) model, greedy by default.

    Example:
        >>> print(llm_metadata_text(10, [0], 64).splitlines()[0])
        start_token { token_ids { ids: 10 } }
    """
    stops = "\n".join(f"stop_tokens {{ token_ids {{ ids: {t} }} }}" for t in stop_token_ids)
    return (
        f"start_token {{ token_ids {{ ids: {start_token_id} }} }}\n{stops}\n"
        f"max_num_tokens: {max_num_tokens}\n"
        "sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 seed: 0 }\n"
        "llm_model_type { generic_model {} }\n"
    )


def to_litertlm(
    model,
    path,
    *,
    cache_length,
    tokenizer=BYTE_TOKENIZER,
    start_token_id=10,
    stop_token_ids=(0,),
    prefill_lengths=None,
    quantization=None,
    verify=True,
    verification_prompt=DEFAULT_PROMPT,
    **generator_kwargs,
):
    """Writes a ``.litertlm`` for LiteRT-LM and checks it generates our runner's text.

    Args:
        model: Any model ``to_tflite_generator`` exports.
        path: Output ``.litertlm`` path.
        cache_length: The context length (``max_num_tokens`` of the engine).
        tokenizer: ``"bytes"`` (the reference GPT's byte tokenizer, written here), a
            HuggingFace ``tokenizer.json`` path or a SentencePiece ``.model`` path.
        start_token_id: The token the engine puts before every prompt.
        stop_token_ids: Tokens that end generation.
        prefill_lengths: Prefill buckets (see ``to_tflite_generator``).
        quantization: The generator's mode (see ``to_tflite_generator``).
        verify: Generate greedily in ``litert_lm.Engine`` (CPU) from
            ``verification_prompt`` and require our runner's text.
        verification_prompt: Text to verify on (its tokens and the generated ones must
            fit ``cache_length``).
        **generator_kwargs: More ``to_tflite_generator`` arguments.

    Returns:
        The generator's ``ExportReport`` with ``path`` the ``.litertlm`` and
        ``summary["litertlm"]`` the engine's and our runner's texts.

    Raises:
        VerificationError: The engine's text differs (nothing written).
        RuntimeError: The engine refused the file (its own message quoted).

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> r = export.to_litertlm(model, "gpt.litertlm", cache_length=32)
        >>> r.summary["litertlm"]["engine_text"] == r.summary["litertlm"]["runner_text"]
        True
    """
    path = files.check_path(path)
    stops = tuple(int(t) for t in stop_token_ids)
    with tempfile.TemporaryDirectory(prefix="keras_llmopt_litertlm_") as folder:
        tflite_path = os.path.join(folder, "model.tflite")
        report = to_tflite_generator(
            model,
            tflite_path,
            cache_length=cache_length,
            prefill_lengths=prefill_lengths,
            quantization=quantization,
            verify=verify,
            **generator_kwargs,
        )
        tokenizer_path, kind = _tokenizer_file(tokenizer, folder)
        metadata_path = os.path.join(folder, "llm_metadata.textproto")
        with open(metadata_path, "w") as handle:
            handle.write(llm_metadata_text(start_token_id, stops, cache_length))

        def write(temp):
            from litert_lm_builder import litertlm_builder, litertlm_core

            builder = litertlm_builder.LitertLmFileBuilder()
            builder.add_tflite_model(tflite_path, litertlm_builder.TfLiteModelType.PREFILL_DECODE)
            if kind == "sentencepiece":
                builder.add_sentencepiece_tokenizer(tokenizer_path)
            else:
                builder.add_hf_tokenizer(tokenizer_path)
            builder.add_llm_metadata(
                metadata_path, supports_thinking=False, supports_function_calling=False
            )
            with litertlm_core.open_file(temp, "wb") as handle:
                builder.build(handle)

        def check(temp):
            if not verify:
                return None
            return _engine_matches_runner(
                temp, tflite_path, verification_prompt, start_token_id, stops, cache_length
            )

        texts = files.publish(path, write, check)
    summary = dict(report.summary)
    summary["litertlm"] = texts or {}
    return dataclasses.replace(
        report, path=path, format="litertlm", size_bytes=os.path.getsize(path), summary=summary
    )


def _tokenizer_file(tokenizer, folder):
    if tokenizer == BYTE_TOKENIZER:
        target = os.path.join(folder, "tokenizer.json")
        with open(target, "w") as handle:
            json.dump(byte_tokenizer_json(), handle)
        return target, "huggingface"
    if not isinstance(tokenizer, (str, os.PathLike)) or not os.path.isfile(tokenizer):
        raise ValueError(
            "`tokenizer` must be 'bytes', a tokenizer.json path or a SentencePiece .model "
            f"path. Received: tokenizer={tokenizer!r}"
        )
    kind = "huggingface" if str(tokenizer).endswith(".json") else "sentencepiece"
    return os.fspath(tokenizer), kind


def _engine_matches_runner(temp, tflite_path, prompt, start, stops, cache_length):
    import litert_lm

    try:
        engine = litert_lm.Engine(temp, backend=litert_lm.Backend.CPU, max_num_tokens=cache_length)
    except Exception as error:  # the engine's own message says why
        raise RuntimeError(f"LiteRT-LM's engine refused the .litertlm file: {error}") from error
    try:
        ids = [start] + list(engine.tokenize(prompt))
        if len(ids) >= cache_length:
            raise ValueError(
                f"`verification_prompt` takes {len(ids)} tokens; it must leave room in "
                f"cache_length={cache_length}"
            )
        session = engine.create_session(apply_prompt_template=False)
        session.run_prefill([prompt])
        engine_text = session.run_decode().texts[0]
        runner = GeneratorRunner(tflite_path)
        new = runner.generate([ids], cache_length - len(ids), stop_token_ids=list(stops))
        tokens = [int(t) for t in new[0, len(ids) :] if int(t) not in stops]
        runner_text = engine.detokenize(tokens)
    finally:
        engine.close()
    texts = {"prompt": prompt, "engine_text": engine_text, "runner_text": runner_text}
    # The engine may stop a position early at the context limit: its text is then a prefix.
    if not engine_text or not runner_text.startswith(engine_text):
        raise VerificationError(
            "The .litertlm file's greedy text in litert_lm.Engine differs from our runner's: "
            f"engine {engine_text!r}, runner {runner_text!r}. Nothing was written.",
            None,
        )
    return texts
