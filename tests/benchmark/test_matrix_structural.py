"""The model matrix's structural cells: what they claim holds, refusals are refusals."""

import pytest

from keras_llmopt._src.benchmark import matrix_cells, matrix_models, matrix_outcomes


def test_structural_cells_are_in_the_matrix():
    assert {"struct_heads", "struct_ffn", "struct_depth"} <= set(matrix_cells.CELLS)


def test_a_gpt_shrinks_reloads_generates_and_ships_a_smaller_file(tmp_path):
    ctx = matrix_cells.RowContext(matrix_models.reference_gpt(), str(tmp_path))
    cell = matrix_cells.run_cell(ctx, "struct_depth")
    assert cell.status == matrix_outcomes.OK, cell.message
    assert cell.figures["parameters_ratio"] < 0.7
    assert cell.figures["size_ratio"] < 0.75


@pytest.mark.parametrize(
    "build, name, fragment",
    [
        (matrix_models.unregistered_subclass, "struct_ffn", "subclassed"),
        (matrix_models.sequential_lm, "struct_depth", "no residual block"),
    ],
)
def test_what_a_model_cannot_do_is_a_refusal(build, name, fragment, tmp_path):
    cell = matrix_cells.run_cell(matrix_cells.RowContext(build(), str(tmp_path)), name)
    assert cell.status == matrix_outcomes.REFUSED, cell
    assert fragment in cell.message


@pytest.mark.parametrize(
    "module",
    [
        "keras_llmopt._src.benchmark.matrix_structural",
        "keras_llmopt._src.benchmark.generator_timing",
    ],
)
def test_docstring_examples_run(module, run_docstring_examples):
    run_docstring_examples(module)
