"""`mmsr models`: the offline default encoders and the encoder registry."""

from __future__ import annotations

import typer
from rich.table import Table

from mmsr_cli.common import console, print_json

app = typer.Typer(help="Prepare and list encoder models (offline).", no_args_is_help=True)


@app.command()
def prepare():
    """Set up the offline default models: minilm (text) and dinov2-s (converted once from ONNX)."""
    from mmsr.encoders.offline import dinov2_prepared, prepare_all  # deferred: pulls in torch (seconds)

    with console.status("checking models" if dinov2_prepared() else "converting DINOv2 from ONNX"):
        where = prepare_all()
    for name, path in where.items():
        console.print(f"[green]{name}[/]: {path}")
    print_json({name: str(path) for name, path in where.items()})


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables.")):
    """Short names you can pass as text_model / vision_model, and the supported families."""
    from mmsr.encoders.registry import describe_short_names, list_families  # deferred: pulls in torch (seconds)

    names = describe_short_names()
    if json_out:
        print_json({"names": names, "families": list_families()})
        return
    table = Table(title="encoders by short name")
    for column in ("name", "modality", "prepared", "description"):
        table.add_column(column)
    for name, short in sorted(names.items()):
        table.add_row(name, short["modality"], "yes" if short["prepared"] else "no (mmsr models prepare)",
                      short["description"])
    console.print(table)
    families = Table(title="families (any local directory / cached Hub name of these types, or a prefix)")
    families.add_column("family")
    families.add_column("modality")
    for entry in list_families():
        key, modality = entry.rsplit("/", 1)
        families.add_row(key, modality)
    console.print(families)
