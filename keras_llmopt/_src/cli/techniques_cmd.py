"""``keras-llmopt techniques``: the registered techniques, their recipe stages and variants."""

from keras_llmopt._src.cli import common

HELP = (
    "List the registered techniques (built-in and from --plugins): recipe stage, its keys "
    "with defaults, the TFLite modes a model carrying it exports to, and benchmark variants."
)
FLAG_NAMES = ("plugins",)


def run(argv):
    del argv
    from keras_llmopt._src.core import registry

    rows = []
    for technique in registry.techniques():
        keys = ", ".join(f"{k}={v[1]!r}" for k, v in technique.stage_schema.items())
        rows.append(
            {
                "technique": technique.name,
                "stage": technique.stage or "-",
                "exports_as": ",".join(technique.export_modes or ()) or "stripped first",
                "variants": ",".join(technique.variants) or "-",
                "description": technique.description,
            }
        )
        if keys:
            rows.append({"technique": "", "stage": f"  keys: {keys}"})
    common.print_table(rows, ["technique", "stage", "exports_as", "variants", "description"])
    return rows
