"""The model matrix's one-shot cells: measured on the reference GPT and a KerasHub Llama,
refused honestly, and a result that is not what the method claims is a silent failure."""

import keras
import numpy as np
import pytest

from keras_llmopt._src.benchmark import matrix_cells, matrix_models, matrix_oneshot

keras_hub = pytest.importorskip("keras_hub")

WARMUP_STEPS = 60


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """``row(family)``: the family's warmed-up ``RowContext``, built once per module."""
    built = {}

    def row(family):
        if family not in built:
            model = matrix_models.MODELS[family].build()
            ctx = matrix_cells.RowContext(model, str(tmp_path_factory.mktemp(family)))
            ctx.warm_up(WARMUP_STEPS)
            built[family] = ctx
        return built[family]

    return row


def _kernels(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def _check_figures(name, figures):
    matmuls = figures["matmuls"]
    assert figures["top1"] >= 0.9
    if name == "oneshot_wanda":
        assert figures["sparsity"] == pytest.approx(0.5)
    if name == "oneshot_sparsegpt_2of4":
        assert figures["layers_in_file"] == figures["layers"] > 0
    if name in ("oneshot_wanda", "oneshot_sparsegpt_2of4"):
        assert set(matmuls) == {"float32,float32"}
    if name in ("oneshot_gptq_int4", "oneshot_awq_int4"):
        assert figures["grids_kept"] == figures["layers"] > 0
        assert figures["size_ratio"] < 0.75
        integer = sum(n for key, n in matmuls.items() if key.endswith(",int8"))
        assert integer > 0
    if name == "oneshot_smoothquant_int8":
        assert set(matmuls) == {"int8,int8"}
        assert 0 < figures["smoothed"] <= figures["layers"]
        assert figures["float_change"] <= matrix_oneshot.SMOOTH_RTOL


CASES = [(family, name) for family in ("reference_gpt", "llama") for name in matrix_oneshot.CELLS]


def test_oneshot_cells_are_in_the_matrix():
    assert set(matrix_oneshot.CELLS) <= set(matrix_cells.CELLS)
    assert "oneshot_smoothquant_int8" in matrix_cells.INTEGER_CELLS


@pytest.mark.parametrize("family,name", CASES)
def test_oneshot_cell_is_measured(family, name, rows):
    ctx = rows(family)
    before = _kernels(ctx.model)
    cell = matrix_cells.run_cell(ctx, name)
    assert cell.status == "ok", cell.message
    assert cell.text.startswith("ok")
    _check_figures(name, cell.figures)
    # The row's model is compressed in a copy: every later cell sees it as it was.
    assert all(np.array_equal(a, b) for a, b in zip(before, _kernels(ctx.model)))


def test_reference_gpt_int4_cells_use_groups_and_a_tiny_row_one_scale_per_output():
    assert matrix_oneshot.group_size(matrix_models.reference_gpt()) == 32  # inputs 64, 256
    assert matrix_oneshot.group_size(matrix_models.sequential_lm()) == -1  # inputs 32, 64


def _narrow_lm(width):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32", name="tokens"),
            keras.layers.Embedding(256, width, name="token_embedding"),
            keras.layers.Dense(8, activation="gelu", name="hidden"),
            keras.layers.Dense(256, name="lm_head"),
        ]
    )


def test_a_model_the_method_cannot_handle_is_refused_with_the_reason(tmp_path):
    # 2:4 needs inputs in runs of 4: a 6-wide embedding feeding a Dense has not.
    ctx = matrix_cells.RowContext(_narrow_lm(6), str(tmp_path / "narrow"))
    cell = matrix_cells.run_cell(ctx, "oneshot_sparsegpt_2of4")
    assert cell.status == "refused", cell.message
    assert cell.text.startswith("refused: ")
    assert "must divide the number of inputs of layer 'hidden' (6)" in cell.message
    # Only the embedding and the head: nothing a one-shot method compresses by default.
    keras.utils.set_random_seed(0)
    bare = keras.Sequential(
        [
            keras.Input((None,), dtype="int32", name="tokens"),
            keras.layers.Embedding(256, 8, name="token_embedding"),
            keras.layers.Dense(256, name="lm_head"),
        ]
    )
    ctx = matrix_cells.RowContext(bare, str(tmp_path / "bare"))
    cell = matrix_cells.run_cell(ctx, "oneshot_wanda")
    assert cell.status == "refused", cell.message
    assert "no Dense / EinsumDense layer" in cell.message and "lm_head" in cell.message


def _after_oneshot(monkeypatch, damage):
    """Runs the real one-shot pass, then ``damage(model)`` (a bug the cell must catch)."""
    real = matrix_oneshot._oneshot

    def broken(ctx, config):
        model = real(ctx, config)
        damage(model)
        return model

    monkeypatch.setattr(matrix_oneshot, "_oneshot", broken)


def _hidden_kernel(model):
    return model.get_layer("hidden_1").kernel


def test_a_layer_not_pruned_to_half_is_a_silent_failure(tmp_path, monkeypatch):
    def refill(model):
        kernel = _hidden_kernel(model)
        kernel.assign(np.where(kernel.numpy() == 0, 1e-3, kernel.numpy()))

    _after_oneshot(monkeypatch, refill)
    ctx = matrix_cells.RowContext(matrix_models.sequential_lm(), str(tmp_path))
    with pytest.raises(matrix_oneshot.outcomes.SilentFailure, match="'hidden_1' row 0 has 0/32"):
        matrix_oneshot.oneshot_wanda(ctx)
    with pytest.raises(matrix_oneshot.outcomes.SilentFailure, match="not 2:4"):
        matrix_oneshot.oneshot_sparsegpt_2of4(ctx)


def test_smoothquant_that_moves_the_float_outputs_is_a_silent_failure(tmp_path, monkeypatch):
    def scale(model):
        kernel = _hidden_kernel(model)
        kernel.assign(kernel.numpy() * 1.5)

    _after_oneshot(monkeypatch, scale)
    ctx = matrix_cells.RowContext(matrix_models.sequential_lm(), str(tmp_path))
    with pytest.raises(matrix_oneshot.outcomes.SilentFailure, match="changed the float model"):
        matrix_oneshot.oneshot_smoothquant_int8(ctx)


def test_two_of_four_lost_in_the_file_is_a_silent_failure(tmp_path, monkeypatch):
    ctx = matrix_cells.RowContext(matrix_models.sequential_lm(), str(tmp_path))
    real = matrix_oneshot._file_matmul_weights

    def refilled(path):
        weights = real(path)
        weights[0] = np.where(weights[0] == 0, 1e-3, weights[0]).astype(np.float32)
        weights[0][:, ::2] = 0.0  # half the zeros back, in other places
        return weights

    monkeypatch.setattr(matrix_oneshot, "_file_matmul_weights", refilled)
    text, _ = matrix_oneshot.oneshot_sparsegpt_2of4(ctx)  # weights[0] is no longer found
    assert text == "ok 2:4 file 1/2"

    def half_refilled(path):
        weights = [w.copy() for w in real(path)]
        zeros = np.argwhere(weights[0] == 0)
        weights[0][tuple(zeros[0])] = 1e-3  # one zero lost: the pattern broken in one run
        return weights

    monkeypatch.setattr(matrix_oneshot, "_file_matmul_weights", half_refilled)
    with pytest.raises(matrix_oneshot.outcomes.SilentFailure, match="1/.* of its zeros gone"):
        matrix_oneshot.oneshot_sparsegpt_2of4(ctx)


def test_docstring_examples_run(run_docstring_examples):
    run_docstring_examples("keras_llmopt._src.benchmark.matrix_oneshot")
