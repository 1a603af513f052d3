"""The benchmark's rows and report: ``benchmark.json``, ``report.md`` and ``size_vs_bpb.png``."""

import json
import os
import re

from keras_llmopt._src.reference.cache import atomic_path

# Every field of a benchmark row, in order, and whether the report's table shows it (the
# one definition of both the JSON rows and the table columns).
_FIELDS = (
    ("variant", True),
    ("runtime", True),
    ("size_bytes", True),
    ("size_ratio", True),
    ("size_gzip_bytes", True),
    ("bpb", True),
    ("delta_bpb", True),
    ("latency_ms_1t", True),
    ("latency_ms_2t", True),
    ("latency_ratio_1t", True),
    ("latency_ratio_2t", True),
    ("latency_ms_keras", True),
    ("latency_ratio_keras", False),
    ("verified", True),
    ("top1_agreement", False),
    ("xnnpack", False),
    ("artifact", False),
    ("seconds", False),
    ("notes", False),
    ("error", False),
)
ROW_FIELDS = tuple(name for name, _ in _FIELDS)
# The table's columns: the shown row fields, then the Pareto-front mark.
TABLE_COLUMNS = tuple(name for name, shown in _FIELDS if shown) + ("pareto",)


def pareto_front(rows):
    """Variants no other variant beats on both size and bits per byte.

    A row is on the front when every smaller row has a higher bpb. Rows without a
    size or bpb (failed variants) are left out.

    Example:
        >>> pareto_front([{"variant": "a", "size_bytes": 10, "bpb": 2.0},
        ...               {"variant": "b", "size_bytes": 5, "bpb": 2.5},
        ...               {"variant": "c", "size_bytes": 8, "bpb": 2.6}])
        ['b', 'a']
    """
    points = sorted(
        (r for r in rows if r.get("size_bytes") and r.get("bpb") is not None),
        key=lambda r: (r["size_bytes"], r["bpb"]),
    )
    front, best = [], float("inf")
    for row in points:
        if row["bpb"] < best:
            front.append(row["variant"])
            best = row["bpb"]
    return front


def format_value(value, key=""):
    """A table cell: ratios and bpb with 3-4 decimals, sizes in KB, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key in ("size_bytes", "size_gzip_bytes"):
        return f"{value / 1024:,.1f} KB"
    if isinstance(value, float):
        if key.startswith("latency_ms"):
            return f"{value:.3f}"
        if key == "delta_bpb":
            return f"{value:+.4f}"
        return f"{value:.4f}" if "bpb" in key else f"{value:.3f}"
    return str(value)


def table_rows(rows):
    """Rows with the ``pareto`` mark and every column formatted as text."""
    front = set(pareto_front(rows))
    out = []
    for row in rows:
        cells = {k: format_value(row.get(k), k) for k in TABLE_COLUMNS}
        cells["pareto"] = "*" if row["variant"] in front else ""
        if row.get("error"):
            cells["runtime"] = "FAILED"
        out.append(cells)
    return out


def print_table(rows, file=None):
    """Prints the side-by-side table (failed variants with their error below).

    Example:
        >>> print_table(result.rows)
    """
    cells = table_rows(rows)
    widths = [max(len(c), *(len(r[c]) for r in cells)) for c in TABLE_COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print("  ".join(r[c].ljust(w) for c, w in zip(TABLE_COLUMNS, widths)), file=file)
    for row in rows:
        if row.get("error"):
            print(f"  {row['variant']} failed: {error_summary(row['error'])}", file=file)


def markdown(result, title="keras_llmopt benchmark", preamble=""):
    """The report as Markdown: the table, failures, settings, machine and packages."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [
        "`size_ratio` and `latency_ratio_*` are against `tflite_fp32`; `delta_bpb` is against "
        "the Keras fp32 model; every variant is measured on the same validation windows. "
        "`size_gzip_bytes` shows what pruning and clustering buy once compressed. Latencies "
        "are medians after warm-up (LiteRT with XNNPACK, ONNX Runtime; Keras-native variants "
        "run in Keras: `latency_ms_keras`). Fine-tuned rows compare best with "
        "`dense_finetuned_fp32` (same steps and data, no compression). `*` marks the size / "
        "bits-per-byte Pareto front.",
        "",
        "![size vs bits per byte](size_vs_bpb.png)",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for cells in table_rows(result.rows):
        lines.append("| " + " | ".join(cells[c] for c in TABLE_COLUMNS) + " |")
    failed = [r for r in result.rows if r.get("error")]
    if failed:
        lines += ["", "## Variants that failed", ""]
        for row in failed:
            lines.append(f"- `{row['variant']}`: {error_summary(row['error'], 600)}")
    noted = [r for r in result.rows if r.get("notes")]
    if noted:
        lines += ["", "## Notes", ""]
        for row in noted:
            lines.append(f"- `{row['variant']}`: " + "; ".join(str(n) for n in row["notes"]))
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in result.settings.items()]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in result.machine.items()]
    lines += ["", "## Packages", ""]
    lines += [f"- {k}: {v}" for k, v in result.packages.items()]
    return "\n".join(lines) + "\n"


def plot(rows, path, title="size vs bits per byte"):
    """Writes a PNG scatter of size (log scale) against bpb, the Pareto front marked.

    Example:
        >>> plot(result.rows, "report/size_vs_bpb.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = [r for r in rows if r.get("size_bytes") and r.get("bpb") is not None]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(9, 6))
    for row in points:
        on_front = row["variant"] in front
        ax.scatter(
            row["size_bytes"] / 1024,
            row["bpb"],
            s=60 if on_front else 30,
            marker="*" if on_front else "o",
            color="tab:red" if on_front else "tab:blue",
            zorder=3,
        )
        ax.annotate(
            row["variant"],
            (row["size_bytes"] / 1024, row["bpb"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    by_name = {r["variant"]: r for r in points}
    if len(front) > 1:
        ax.step(
            [by_name[v]["size_bytes"] / 1024 for v in front],
            [by_name[v]["bpb"] for v in front],
            where="post",
            color="tab:red",
            alpha=0.5,
            label="Pareto front",
        )
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (KB, log scale)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(
    result, out_dir, title="keras_llmopt benchmark", preamble="", json_path=None, extra=None
):
    """Writes ``report.md``, ``benchmark.json`` and ``size_vs_bpb.png`` (each atomically).

    Args:
        result: A ``BenchmarkResult``.
        out_dir: The report folder (created if needed).
        title: Markdown title.
        preamble: Markdown paragraph under the title.
        json_path: Where the JSON goes (default ``out_dir/benchmark.json``).
        extra: Dict of top-level JSON entries added beside ``rows`` (e.g. wall time).

    Returns:
        Dict ``{"markdown": path, "json": path, "plot": path}``.

    Example:
        >>> write_report(result, "keras_llmopt_report")["markdown"]
        'keras_llmopt_report/report.md'
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "markdown": os.path.join(out_dir, "report.md"),
        "json": json_path or os.path.join(out_dir, "benchmark.json"),
        "plot": os.path.join(out_dir, "size_vs_bpb.png"),
    }
    data = result.to_dict()
    data["pareto_front"] = pareto_front(result.rows)
    data.update(extra or {})
    write_json(data, paths["json"])
    plot(result.rows, paths["plot"], title=title)
    with atomic_path(paths["markdown"]) as tmp:
        with open(tmp, "w") as handle:
            handle.write(markdown(result, title, preamble))
    return paths


def error_summary(message, limit=300):
    r"""The first non-empty line of an error message and its cause, on one line.

    The cause is the last ``SomethingError: ...`` line after the first (TensorFlow puts
    the real reason under an ``in user code:`` traceback), else the second line.

    Example:
        >>> error_summary("TypeError: Exception in layer q.\n\nInput has type int32.")
        'TypeError: Exception in layer q. Input has type int32.'
        >>> error_summary("TypeError: in layer q.\nin user code:\n  File x\nTypeError: int32")
        'TypeError: in layer q. TypeError: int32'
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    causes = [line for line in lines[1:] if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    picked = lines[:1] + causes[-1:] if causes else lines[:2]
    return " ".join(picked)[:limit]


def write_json(data, path):
    """Writes JSON atomically (a temporary file beside ``path``, then renamed).

    Example:
        >>> write_json({"rows": []}, "bench/benchmark.json")
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, default=_json_default)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
