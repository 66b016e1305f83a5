"""`mmsr cache`: build and inspect the zarr cache of frozen encoder states."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmsr.config import MAX_SEED
from mmsr.data.dataset import BAD_IMAGE_POLICIES
from mmsr_cli.common import SetOption, check_device, console, is_rank_zero, print_json, progress_bar
from mmsr_store import inspect_cache, verify_cache

app = typer.Typer(help="Build and inspect the encoder cache (the frozen lower layers, run once per item).",
                  no_args_is_help=True)


@app.command()
def build(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (under $MMSR_HOME/datasets) or path. "
                                          "Default: the config's `dataset`, else demo."),
    config: Optional[Path] = typer.Option(None, "--config", help="A cache build config, or a training config (its dataset, seed and encoders, its base's included); YAML or TOML."),
    sets: Optional[list[str]] = SetOption,
    text_model: Optional[str] = typer.Option(None, "--text-model", help='Short name, HF name or directory; "" for none.'),
    vision_model: Optional[str] = typer.Option(None, "--vision-model", help='Short name, HF name, open_clip:/timm: spec; "" for none.'),
    text_top_blocks: Optional[int] = typer.Option(None, "--text-top-blocks", help="Trainable top blocks k (split at L-k)."),
    vision_top_blocks: Optional[int] = typer.Option(None, "--vision-top-blocks", help="Trainable top blocks k (split at L-k)."),
    joint_model: Optional[str] = typer.Option(None, "--joint-model", help='A one-stream VLP (ViLT, VisualBERT) over text and '
                                              'picture together, cached as the joint modality; give --text-model "" '
                                              '--vision-model "" with it.'),
    joint_top_blocks: Optional[int] = typer.Option(None, "--joint-top-blocks", help="Trainable top blocks of the joint model (default 4)."),
    joint_vision: Optional[str] = typer.Option(None, "--joint-vision", help="VisualBERT's picture representation: "
                                               "region | region-c5 | grid | patch-emb | patch-vit."),
    joint_vision_model: Optional[str] = typer.Option(None, "--joint-vision-model", help="Its weights: torchvision:ARCH@FILE or a CLIP directory."),
    max_text_len: Optional[int] = typer.Option(None, "--max-text-len", min=1, help="Tokens per text (default 50)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Picture side in pixels (default 224)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Items per forward pass (default 64)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=0, help="DataLoader workers for tokenising/decoding (default 2). A worker decodes about "
                                                     "600 demo pictures a second on one Xeon core, far below what a GPU encodes: "
                                                     "give a GPU node more (docs/gpu.md)."),
    on_bad_image: Optional[str] = typer.Option(None, "--on-bad-image", help=" | ".join(BAD_IMAGE_POLICIES)
                                                 + " (default error)."),
    device: Optional[str] = typer.Option(None, "--device", callback=check_device,
                                          help="auto | cpu | cuda | cuda:N (default auto)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: build only the chunks this process owns "
                                        "(default: torchrun's RANK/WORLD_SIZE, else 0/1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing cache for this config first."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Random seed (default 0); CPU builds are bit-identical."),
):
    """Run the frozen lower layers over every item once and store their states (resumable).

    Kill it at any point and run it again: finished chunks are kept. Items appended to the
    dataset later are encoded without re-encoding the rest.
    """
    # Deferred: these pull in torch (seconds), which `mmsr --help` and `mmsr data` never need.
    from mmsr.cache_stage import build_from_config, load_build_config

    cfg = load_build_config(config, sets, dataset=dataset, text_model=text_model, vision_model=vision_model,
                            text_top_blocks=text_top_blocks, vision_top_blocks=vision_top_blocks,
                            joint_model=joint_model, joint_top_blocks=joint_top_blocks, joint_vision=joint_vision,
                            joint_vision_model=joint_vision_model, max_text_len=max_text_len, image_size=image_size, batch_size=batch_size,
                            num_workers=num_workers, on_bad_image=on_bad_image, device=device, seed=seed)
    report = build_from_config(cfg, shard=shard, overwrite=overwrite, progress=progress_bar)
    path = report.path
    if not is_rank_zero():
        return
    for modality, r in report.modalities.items():
        console.print(f"{modality}: encoded {r.encoded_items} items in {r.written_chunks} chunks "
                      f"({r.items_per_s:,.1f} items/s), states [{report.num_items}, {r.tokens}, {r.dim}] float16")
    if report.problems:
        console.print(f"[yellow]{len(report.problems)} bad input(s), handled by on_bad_image={report.on_bad_image} "
                      f"(listed in {path / 'report.json'})")
    if report.complete:
        console.print(f"[green]cache complete: {path}")
    else:
        left = ", ".join(f"{m}: {n}" for m, n in report.remaining_chunks.items() if n)
        console.print(f"[yellow]this shard is done; chunks still owned by other shards ({left}): {path}")


@app.command()
def info(
    target: str = typer.Argument(..., help="A cache directory, or a dataset name (lists all its caches)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
):
    """Fingerprint, manifest progress and sizes of a cache (finished or not)."""
    from mmsr.caches import find_caches  # deferred: pulls in torch (seconds)

    reports = [inspect_cache(path) for path in find_caches(target)]
    if json_out:
        print_json(reports[0] if len(reports) == 1 else reports)
        return
    for report in reports:
        table = Table(title=f"cache {report['path']} ({'complete' if report['complete'] else 'INCOMPLETE'})")
        for column in ("modality", "shape", "chunks done", "chunk MiB", "bytes/item", "raw f16 bytes/item", "problems"):
            table.add_column(column, justify="right")
        for modality, m in report["modalities"].items():
            table.add_row(modality, "x".join(map(str, m["shape"])), f"{m['finished_chunks']}/{m['chunks']}",
                          str(m["chunk_mib"]), f"{m['bytes_per_item']:,.0f}", f"{m['raw_bytes_per_item']:,.0f}",
                          str(len(m["problems"])))
        console.print(table)
        for modality, m in report["modalities"].items():
            fp = m["fingerprint"]
            console.print(f"  {modality}: {fp.get('model')} split at layer {fp.get('split_layer')} of "
                          f"{fp.get('num_layers')}, weights {str(fp.get('weights_sha256'))[:12]}, "
                          f"items {str(fp.get('item_list_hash'))[:12]}")
            for problem in m["problems"][:5]:
                console.print(f"    [yellow]{problem}")


@app.command()
def verify(
    target: str = typer.Argument(..., help="A cache directory, or a dataset name (checks all its caches)."),
    repair: bool = typer.Option(False, "--repair", help="Re-encode the damaged and unfinished chunks, "
                                "with the options saved in the cache's config.yaml."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per cache instead of text."),
):
    """Decode every chunk of a cache and check it against its manifest; exit 1 if one is damaged or unfinished.

    Chunk files carry a CRC32C checksum, so a flipped bit on disk is found here (or by the next
    read) instead of silently changing the states a model trains on.
    """
    from mmsr.cache_stage import repair_cache  # deferred: pulls in torch (seconds)
    from mmsr.caches import find_caches

    failed = False
    for path in find_caches(target):
        if repair:
            result = repair_cache(path, progress=progress_bar)
            report, after, build, ok = result.before, result.after, result.build, result.ok
        else:
            report = verify_cache(path, progress=progress_bar)
            after, build, ok = None, None, report.ok
        if json_out:
            print_json({**report.to_json(), **({"after_repair": after.to_json()} if after else {})})
        else:
            _print_verify(report, after, build)
        failed |= not ok
    if failed:
        raise typer.Exit(1)


def _print_verify(report, after, build) -> None:
    path = report.path
    checked = sum(report.checked_chunks.values())
    if report.unchecksummed:
        console.print(f"[yellow]{path}: built before chunk checksums, {', '.join(report.unchecksummed)} carry none; "
                      "checked by decoding and the manifest digests only")
    for bad in report.bad:
        console.print(f"[red]damaged: {bad}")
    for modality, chunks in report.unfinished.items():
        if chunks:
            console.print(f"[yellow]{modality}: {len(chunks)} chunk(s) unfinished")
    if after is None:
        if report.ok:
            console.print(f"[green]{path}: {checked} chunks verified, all good")
        else:
            console.print(f"[red]{path}: {len(report.bad)} damaged chunk(s) of {checked}"
                          + ("" if report.complete else ", build unfinished")
                          + f": run `mmsr cache verify {path} --repair`")
        return
    if build is None:
        console.print(f"[green]{path}: {checked} chunks verified, all good; nothing to repair")
        return
    encoded = ", ".join(f"{m}: {r.encoded_items} items" for m, r in build.modalities.items() if r.encoded_items)
    state = "[green]repaired" if after.ok else "[red]still damaged after the repair"
    console.print(f"{state}: {path} (re-encoded {encoded or 'nothing'})")
    for bad in after.bad:
        console.print(f"[red]damaged: {bad}")
