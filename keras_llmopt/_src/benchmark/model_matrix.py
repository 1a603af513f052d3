"""The model matrix: every decoder family users bring, times every technique and artifact.

Rows are the tiny models of ``matrix_models`` (every KerasHub text-decoder CausalLM, the
reference GPT, a ReLU GPT, a Sequential and an unregistered subclassed model); columns
are the cells of ``matrix_cells`` (prune + strip, QAT int8, PTQ int8, 16x8, dynamic int8,
int4, clustering, ONNX, SavedModel, save/load). Every cell is measured or refused with
its reason; failures, and above all silent failures, are counted apart.
``scripts/model_matrix.py`` runs it and writes the README's table.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time

from absl import logging

from keras_llmopt._src.benchmark import matrix_cells, matrix_models, matrix_outcomes

README_START = "<!-- model-matrix:start -->"
README_END = "<!-- model-matrix:end -->"


@dataclasses.dataclass
class MatrixResult:
    """The measured matrix.

    Attributes:
        cells: Column names, in order.
        rows: ``{row name: {cell name: Cell}}``, in table order.
        descriptions: ``{row name: description}``.
        skipped: ``{KerasHub CausalLM: reason}`` of the families that are not rows.
        seconds: Wall time of the whole run.

    Example:
        >>> result = run_matrix(["sequential"], ["dynamic_int8"], warmup_steps=0)
        >>> result.totals()["ok"]
        1
    """

    cells: list
    rows: dict
    descriptions: dict
    skipped: dict
    seconds: float = 0.0

    def totals(self):
        """``{status: count}`` over every cell, for each of ``matrix_outcomes.STATUSES``."""
        counts = dict.fromkeys(matrix_outcomes.STATUSES, 0)
        for row in self.rows.values():
            for cell in row.values():
                counts[cell.status] += 1
        return counts

    def totals_line(self):
        """One sentence: cells working / refused / failing (silent failures apart)."""
        t = self.totals()
        failing = t[matrix_outcomes.FAIL] + t[matrix_outcomes.SILENT]
        return (
            f"{sum(t.values())} cells: {t['ok']} working, {t['refused']} refused, "
            f"{failing} failing ({t['silent']} of them silently)"
        )

    def cell(self, row, name):
        """The :class:`Cell` of ``row`` and column ``name``."""
        return self.rows[row][name]

    def to_markdown(self):
        """The table (compact cell texts), its totals and the skipped families."""
        head = ["model", *self.cells]
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name, row in self.rows.items():
            texts = [row[c].text.replace("|", "/") for c in self.cells]
            lines.append(f"| {name} | " + " | ".join(texts) + " |")
        lines.append("")
        lines.append(f"Totals: {self.totals_line()}.")
        if self.skipped:
            lines.append("")
            lines.append(
                "Not rows (KerasHub CausalLMs): "
                + "; ".join(f"`{name}`: {reason}" for name, reason in sorted(self.skipped.items()))
                + "."
            )
        return "\n".join(lines) + "\n"

    def to_dict(self):
        """Plain data: every cell's status, text, figures, time and message."""
        return {
            "cells": list(self.cells),
            "totals": self.totals(),
            "seconds": self.seconds,
            "rows": {
                name: {
                    "description": self.descriptions.get(name, ""),
                    "cells": {c: cell.to_dict() for c, cell in row.items()},
                }
                for name, row in self.rows.items()
            },
            "skipped": dict(self.skipped),
        }

    def write(self, path):
        """Writes the markdown (``.md``) or JSON (``.json``) form to ``path``.

        Example:
            >>> result = run_matrix(["sequential"], ["onnx"], warmup_steps=0)
            >>> result.write("matrix.json")
            'matrix.json'
        """
        text = (
            json.dumps(self.to_dict(), indent=1, default=str)
            if str(path).endswith(".json")
            else self.to_markdown()
        )
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".matrix-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
        return str(path)


def _select_cells(cells):
    if cells is None:
        return list(matrix_cells.CELLS)
    unknown = [c for c in cells if c not in matrix_cells.CELLS]
    if unknown:
        raise ValueError(
            f"Unknown model matrix cells {unknown}. Accepted: {', '.join(matrix_cells.CELLS)}. "
            f"Received: cells={list(cells)!r}"
        )
    return [c for c in matrix_cells.CELLS if c in set(cells)]


def run_matrix(
    families=None,
    cells=None,
    work_dir=None,
    sequence_length=16,
    warmup_steps=60,
    cell_time_limit=None,
):
    """Builds each row's tiny model and runs each cell on it.

    Args:
        families: Row names (``matrix_models.MODELS`` keys); default: all.
        cells: Cell names (``matrix_cells.CELLS`` keys); default: all.
        work_dir: Folder for the artifacts (default: a temporary folder, removed).
        sequence_length: Length of every exported input.
        warmup_steps: Training steps each row's model gets first (``RowContext.warm_up``)
            so its predictions are confident and top-1 agreement means something; 0
            keeps the random initialisation.
        cell_time_limit: Seconds after which a cell is stopped and counted as failing
            (``None``: no limit). The stop lands at the cell's next Python step: the
            TFLite converter calibrating inside native code is stopped only when it
            returns (on Qwen 3.5 it ran past 13 minutes without returning).

    Returns:
        A :class:`MatrixResult`.

    Raises:
        ValueError: An unknown family or cell name.

    Example:
        >>> result = run_matrix(["reference_gpt"], ["dynamic_int8"], warmup_steps=0)
        >>> result.cell("reference_gpt", "dynamic_int8").figures["size_ratio"] < 1
        True
    """
    rows = matrix_models.select_models(families)
    names = _select_cells(cells)
    own_dir = work_dir is None
    work_dir = tempfile.mkdtemp(prefix="model_matrix-") if own_dir else work_dir
    start = time.perf_counter()
    result = MatrixResult(
        cells=names,
        rows={},
        descriptions={row.name: row.description for row in rows},
        skipped=dict(matrix_models.SKIPPED) if families is None else {},
    )
    try:
        for index, row in enumerate(rows):
            logging.info("model matrix: [%d/%d] %s", index + 1, len(rows), row.name)
            folder = os.path.join(work_dir, row.name)
            result.rows[row.name] = _run_row(
                row, names, folder, sequence_length, warmup_steps, cell_time_limit
            )
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    logging.info("model matrix: %s in %.0f s", result.totals_line(), result.seconds)
    return result


def _run_row(row, names, folder, sequence_length, warmup_steps, cell_time_limit=None):
    started = time.perf_counter()
    try:
        ctx = matrix_cells.RowContext(row.build(), folder, sequence_length)
        loss = ctx.warm_up(warmup_steps)
        if loss is not None:
            logging.info(
                "model matrix: %s warmed up, %d steps, loss %.2f (%.1f s)",
                row.name,
                warmup_steps,
                loss,
                time.perf_counter() - started,
            )
    except Exception as error:  # the whole row reports why it could not start
        status, text = matrix_outcomes.classify(error)
        message = f"building the row: {type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
        return {
            name: matrix_outcomes.Cell(status, text, message=message, seconds=seconds)
            for name in names
        }
    cells = {}
    for name in names:
        cell = matrix_cells.run_cell(ctx, name, cell_time_limit)
        logging.info("model matrix: %s / %s: %s (%.1f s)", row.name, name, cell.text, cell.seconds)
        if cell.message:
            logging.info("model matrix:   %s", cell.message[:500])
        cells[name] = cell
    return cells


def update_readme(result, readme_path):
    r"""Rewrites the README's text between the model-matrix markers with the table.

    Args:
        result: A :class:`MatrixResult`.
        readme_path: The README file; it must hold ``README_START`` then ``README_END``.

    Returns:
        The path.

    Raises:
        ValueError: The markers are missing or out of order (nothing is written).

    Example:
        >>> with open("README.md", "w") as f:
        ...     _ = f.write("# x\\n<!-- model-matrix:start -->\\n<!-- model-matrix:end -->\\n")
        >>> update_readme(run_matrix(["sequential"], ["onnx"], warmup_steps=0), "README.md")
        'README.md'
    """
    with open(readme_path) as handle:
        text = handle.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(
            f"{readme_path} lacks the model matrix markers: expected {README_START!r} then "
            f"{README_END!r} on their own lines. Received: start at {start}, end at {end}"
        )
    body = f"{README_START}\n{result.to_markdown()}{README_END}"
    new = text[:start] + body + text[end + len(README_END) :]
    fd, temp = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(readme_path)), prefix=".readme-"
    )
    with os.fdopen(fd, "w") as handle:
        handle.write(new)
    os.replace(temp, readme_path)
    return readme_path
