"""The benchmark's rows and report: ``benchmark.json``, ``report.md`` and ``size_vs_bpb.png``."""

import json
import os
import re

from keras_llmopt._src.reference.cache import atomic_path

# Every field of a benchmark row, in order, and its table header (``None``: not in the
# table): the one definition of both the JSON rows and the table columns. Sizes are bytes
# in the JSON and KiB (1024 bytes) in the table and the plot, and their headers say so.
_FIELDS = (
    ("variant", "variant"),
    ("runtime", "runtime"),
    ("size_bytes", "size_KiB"),
    ("size_ratio", "size_ratio"),
    ("size_gzip_bytes", "gzip_KiB"),
    ("bpb", "bpb"),
    ("delta_bpb", "delta_bpb"),
    ("delta_bpb_vs_control", "delta_bpb_vs_control"),
    ("latency_ms_1t", "ms_1t"),
    ("latency_iqr_pct_1t", "iqr%_1t"),
    ("latency_ms_2t", "ms_2t"),
    ("latency_iqr_pct_2t", "iqr%_2t"),
    ("latency_ratio_1t", "latency_ratio_1t"),
    ("latency_ratio_2t", "latency_ratio_2t"),
    ("latency_ms_keras", "ms_keras"),
    ("latency_iqr_pct_keras", "iqr%_keras"),
    ("latency_ratio_keras", None),
    ("calibration_seconds", "calib_s"),
    ("verified", "verified"),
    ("finetuned", None),
    ("top1_agreement", None),
    ("xnnpack", None),
    ("eval_set", None),
    ("artifact", None),
    ("seconds", None),
    ("cpu_seconds", None),
    ("notes", None),
    ("error", None),
)
ROW_FIELDS = tuple(name for name, _ in _FIELDS)
# The table's columns (row fields): the shown ones, then the Pareto-front mark.
TABLE_COLUMNS = tuple(name for name, header in _FIELDS if header) + ("pareto",)
TABLE_HEADERS = {**{name: header for name, header in _FIELDS if header}, "pareto": "pareto"}
KIB = 1024
# Rows drawn as anchors (other tools, references, the dense control) in the plot; every
# other row (``klo_*`` and registered techniques' variants) is keras_llmopt's own.
OURS_PREFIX = "klo_"


def is_ours(variant):
    """Whether a row is one of keras_llmopt's own variants (else an anchor / reference).

    Ours: the built-in ``klo_*`` rows, the structural rows (``structural_variants.OURS``)
    and every registered technique's variants; anchors:
    the converter, Keras-native, ONNX Runtime, AI Edge Quantizer and tfmot rows, the
    fp32 references and the dense fine-tuned control.

    Example:
        >>> is_ours("klo_qat_int8"), is_ours("aeq_dynamic_int8")
        (True, False)
    """
    from keras_llmopt._src.benchmark import structural_variants
    from keras_llmopt._src.core import registry

    if variant.startswith(OURS_PREFIX) or variant in structural_variants.OURS:
        return True
    return variant in registry.benchmark_variants()


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
    """A table cell: ratios and bpb with 3-4 decimals, sizes in KiB, ``-`` for missing.

    Example:
        >>> format_value(2048, "size_bytes"), format_value(0.01234, "delta_bpb")
        ('2.0', '+0.0123')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key in ("size_bytes", "size_gzip_bytes"):
        return f"{value / KIB:,.1f}"
    if isinstance(value, float):
        if key.startswith("latency_ms"):
            return f"{value:.3f}"
        if key.startswith("latency_iqr_pct"):
            return f"{value:.1f}"
        if key.startswith("delta_bpb"):
            return f"{value:+.4f}"
        if key.endswith("seconds"):
            return f"{value:.1f}"
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
    headers = [TABLE_HEADERS[c] for c in TABLE_COLUMNS]
    widths = [max(len(h), *(len(r[c]) for r in cells)) for c, h in zip(TABLE_COLUMNS, headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)), file=file)
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
        "the Keras fp32 model; `delta_bpb_vs_control` (fine-tuned rows) is against "
        "`dense_finetuned_fp32`, the dense model fine-tuned with the same steps and data. "
        "Every row is measured on the same validation windows"
        + (f" (`{result.settings['eval_set']}`)" if result.settings.get("eval_set") else "")
        + ". Sizes are in KiB (1024 bytes); `gzip_KiB` shows what pruning and clustering buy "
        "once compressed. Latencies (ms) were timed after every variant was built, in "
        f"{result.settings.get('latency_repeats', '?')} interleaved rounds (each round runs "
        "every artifact once, in a shuffled order): the median, and `iqr%` the interquartile "
        "range in % of it (LiteRT with XNNPACK, ONNX Runtime; Keras-native variants run in "
        "Keras: `ms_keras`). `*` marks the size / bits-per-byte Pareto front.",
        "",
        "![size vs bits per byte](size_vs_bpb.png)",
        "",
        "| " + " | ".join(TABLE_HEADERS[c] for c in TABLE_COLUMNS) + " |",
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
    """Writes a PNG scatter of size (KiB, log scale) against bpb, the Pareto front marked.

    keras_llmopt's own variants and the anchors (other tools, references, the dense
    control) are drawn with their own marker and colour, named in the legend; Pareto
    front members get a black edge and the front a step line. Labels are placed so
    they do not overlap each other or the points.

    Returns:
        The figure's axes (closed figure), e.g. to inspect the artists in tests.

    Example:
        >>> plot(result.rows, "report/size_vs_bpb.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = [r for r in rows if r.get("size_bytes") and r.get("bpb") is not None]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for ours, label, marker, color in (
        (False, "anchors (other tools, references, dense control)", "s", "tab:gray"),
        (True, "keras_llmopt", "o", "tab:blue"),
    ):
        group = [r for r in points if is_ours(r["variant"]) == ours]
        if not group:
            continue
        ax.scatter(
            [r["size_bytes"] / KIB for r in group],
            [r["bpb"] for r in group],
            s=[70 if r["variant"] in front else 40 for r in group],
            marker=marker,
            color=color,
            edgecolors=["black" if r["variant"] in front else color for r in group],
            linewidths=1.2,
            label=label,
            zorder=3,
            gid="ours" if ours else "anchors",
        )
    by_name = {r["variant"]: r for r in points}
    if len(front) > 1:
        ax.step(
            [by_name[v]["size_bytes"] / KIB for v in front],
            [by_name[v]["bpb"] for v in front],
            where="post",
            color="tab:red",
            alpha=0.5,
            label="Pareto front",
        )
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (KiB = 1024 bytes, log scale)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _place_labels(ax, [(r["variant"], r["size_bytes"] / KIB, r["bpb"]) for r in points])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return ax


# Label offsets tried in turn (points), nearest first.
_OFFSETS = tuple(
    (dx * r, dy * r)
    for r in (1, 2, 3, 4.5, 6)
    for dx, dy in ((5, 4), (5, -10), (-5, 4), (-5, -10), (0, 9), (0, -15), (9, -3), (-9, -3))
)


def _place_labels(ax, labels):
    """Annotates each ``(text, x, y)`` where its box overlaps no other label or point."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    markers = [to_display((x, y)) for _, x, y in labels]
    marker_boxes = [(px - 4, py - 4, px + 4, py + 4) for px, py in markers]
    placed = []
    frame = ax.get_window_extent(renderer)

    def free(box):
        inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1]
        inside = inside and box[3] <= frame.y1
        return inside and not any(_overlap(box, other) for other in placed + marker_boxes)

    for text, x, y in labels:
        annotation = None
        for i, (dx, dy) in enumerate(_OFFSETS):
            candidate = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=7,
                ha="left" if dx >= 0 else "right",
                # Beyond the nearest ring, a leader line says which point a label names.
                arrowprops=None if i < 8 else {"arrowstyle": "-", "color": "0.6", "lw": 0.5},
            )
            extent = candidate.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            if free(box):
                annotation = candidate
                break
            candidate.remove()
        if annotation is None:  # no free spot nearby: the farthest one, with a leader line
            annotation = ax.annotate(
                text,
                (x, y),
                xytext=_OFFSETS[-1],
                textcoords="offset points",
                fontsize=7,
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5},
            )
            extent = annotation.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
        annotation.set_gid("label")
        placed.append(box)


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


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
