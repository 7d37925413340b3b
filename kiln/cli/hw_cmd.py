"""``kiln cost``, ``kiln map`` and ``kiln compare``: accelerator cost model and mapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.common import (
    INPUT_SHAPE_HELP,
    WEIGHTS_HELP,
    check_out_folder,
    console,
    human,
    print_json,
    progress,
    table,
)
from kiln.hw.workload_mapper import DEFAULT_LPF_LIMIT, DEFAULT_REFINE

WORKLOAD_HELP = (
    "A zoo name (kiln models), a .pt checkpoint or model file (quantized: its widths), an "
    ".onnx file, a ZigZag workload YAML, a program folder from 'kiln lower' (its widths), "
    "or your own module as file.py:Name (with --input-shape)."
)
QUANT_HELP = ("A quantization config (.yaml/.toml/.json) whose per-layer weight and "
              "activation widths become the operand precisions.")
ACCEL_HELP = "A ZigZag 3.x accelerator YAML (see examples/hardware/)."
MAPPING_HELP = (
    "A ZigZag mapping YAML: per layer name, operator type or 'default', a "
    "spatial_mapping, temporal_ordering (innermost first) and memory_operand_links."
)
OBJECTIVE_HELP = "What the mapper minimises: latency, energy or edp."


ZIGZAG_YAML_HELP = ("Read accelerator YAML as ZigZag does: a key repeated in one mapping "
                    "keeps its last value, with a warning naming it (ZigZag's bundled "
                    "tpu_like.yaml repeats 'ports'); by default a repeat is an error.")


def _load(workload: str, accelerator: Path, mapping: Path | None, dataset: str | None,
          quant_config: Path | None = None, input_shape: str | None = None,
          weights: Path | None = None, zigzag_yaml: bool = False):
    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.models.user import parse_shape

    hw = load_accelerator(accelerator, duplicate_keys="last" if zigzag_yaml else "error")
    work = load_workload(workload, dataset=dataset, input_shape=parse_shape(input_shape),
                         weights=weights, quant_config=quant_config)
    entries = load_zigzag_mapping(mapping) if mapping is not None else None
    return work, hw, entries


def _layer_rows(result) -> list[list[str]]:
    rows = []
    for r in result.layers:
        c = r.cost
        rows.append(
            [
                r.layer,
                str(r.spatial),
                human(c.latency_cycles),
                human(c.energy_pj),
                f"{c.spatial_utilization:.2f}",
                f"{c.utilization:.2f}",
                human(c.stall_cycles),
                human(c.onload_cycles + c.offload_cycles),
            ]
        )
    return rows


_COLUMNS = [
    "layer",
    "spatial",
    "latency (cyc)",
    "energy (pJ)",
    "spatial util",
    "util",
    "stalls",
    "load/offload",
]


def _write_out(out: Path | None, results: list, name: str) -> list[str]:
    if out is None:
        return []
    from kiln.hw.compare import plot_comparison

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    return [str(p) for p in plot_comparison(results, out)] + [str(out / f"{name}.json")]


def _run_mapping(
    work,
    hw,
    entries,
    objective: str,
    lpf_limit: int | None,
    refine: int,
    exhaustive: bool,
    quiet: bool,
    workers: int = 1,
    cache: Path | None = None,
):
    from kiln.hw.workload_mapper import map_workload

    with progress(transient=True, quiet=quiet) as bar:
        task = bar.add_task(f"mapping on {hw.name}", total=len(work.layers), status="")

        def on_layer(done: int, to_search: int, layer) -> None:
            bar.update(task, completed=done, total=to_search, status=layer.name)

        result = map_workload(
            work,
            hw,
            objective,
            entries,
            lpf_limit,
            refine=refine,
            exhaustive=exhaustive,
            on_layer=on_layer,
            workers=workers,
            cache_dir=cache,
        )
        bar.update(task, completed=len(work.layers))
    return result


def cost(
    workload: Annotated[str, typer.Argument(help=WORKLOAD_HELP)],
    accelerator: Annotated[Path, typer.Option("--accelerator", "-a", help=ACCEL_HELP)],
    mapping: Annotated[Path | None, typer.Option(help=MAPPING_HELP)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--data", "--dataset", "-d", help="Dataset a zoo model is shaped for.")] = None,
    quant_config: Annotated[Path | None, typer.Option(help=QUANT_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    zigzag_yaml: Annotated[bool, typer.Option("--zigzag-yaml", help=ZIGZAG_YAML_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for JSON and PNG plots.")] = None,
) -> None:
    """Latency, energy and utilization of every layer under a mapping.

    Where the mapping file fixes a layer completely (spatial mapping and a complete
    temporal ordering) that mapping is costed as is; what it leaves open is searched
    (objective latency). Layers without MACs (pooling, element-wise) are listed as not costed.

    Example:  kiln cost resnet18 -a examples/hardware/tpu_like.yaml \
                --mapping examples/hardware/tpu_like_mapping.yaml
    """
    if out is not None:
        check_out_folder(out)
    work, hw, entries = _load(workload, accelerator, mapping, dataset, quant_config,
                              input_shape, weights, zigzag_yaml)
    result = _run_mapping(work, hw, entries, "latency", 6, 0, False, as_json)
    _report(result, as_json, out, f"{work.name} on {hw.name}")


def map_command(
    workload: Annotated[str, typer.Argument(help=WORKLOAD_HELP)],
    accelerator: Annotated[Path, typer.Option("--accelerator", "-a", help=ACCEL_HELP)],
    objective: Annotated[str, typer.Option(help=OBJECTIVE_HELP)] = "latency",
    mapping: Annotated[Path | None, typer.Option(help="Constraints: " + MAPPING_HELP)] = None,
    lpf_limit: Annotated[
        int,
        typer.Option(
            help="Split temporal loops into at most this many prime factors (0: no limit)."
        ),
    ] = DEFAULT_LPF_LIMIT,
    refine: Annotated[
        int,
        typer.Option(help="Try every memory allocation for the N best loop orders of each layer."),
    ] = DEFAULT_REFINE,
    exhaustive: Annotated[
        bool,
        typer.Option(help="Every loop order with every memory allocation (small layers only)."),
    ] = False,
    workers: Annotated[int, typer.Option(
        help="Map distinct layers on this many processes (one core each); same result.")] = 1,
    cache: Annotated[Path | None, typer.Option(
        help="Folder that keeps each distinct layer's mapping, keyed by the layer, its "
             "constraints, the accelerator and the options: a layer seen before (in this "
             "network, another one or an earlier run) is not searched again.")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--data", "--dataset", "-d", help="Dataset a zoo model is shaped for.")] = None,
    quant_config: Annotated[Path | None, typer.Option(help=QUANT_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    zigzag_yaml: Annotated[bool, typer.Option("--zigzag-yaml", help=ZIGZAG_YAML_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for JSON and PNG plots.")] = None,
) -> None:
    """Find the best spatial unrolling and temporal loop order of every layer.

    Spatial candidates are ranked by real array utilization; loop orders of prime factors
    are allocated to memories bottom-up (LOMA); equivalent orders are costed once and
    identical layers mapped once. Ties are broken deterministically.

    Example:  kiln map resnet18 -a examples/hardware/edge_npu.yaml --objective edp --out out/map
              kiln map model.onnx -a tpu_like.yaml --workers 2 --cache ~/.cache/kiln/mappings
    """
    from kiln.errors import ConfigError
    from kiln.hw.mapper import OBJECTIVES

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    if out is not None:
        check_out_folder(out)
    work, hw, entries = _load(workload, accelerator, mapping, dataset, quant_config,
                              input_shape, weights, zigzag_yaml)
    if cache is not None and cache.exists() and not cache.is_dir():
        raise ConfigError(f"--cache {cache}: is a file, not a folder")
    result = _run_mapping(
        work, hw, entries, objective, lpf_limit or None, refine, exhaustive, as_json,
        workers=workers, cache=cache,
    )
    _report(result, as_json, out, f"{work.name} on {hw.name}, objective {objective}, "
            f"refine {refine}")


def _report(result, as_json: bool, out: Path | None, title: str) -> None:
    files = _write_out(out, [result], "mapping")
    if as_json:
        print_json({**result.as_dict(), "files": files})
        return
    console.print(table(title, _COLUMNS, _layer_rows(result), right_align=set(_COLUMNS[2:])))
    console.print(
        f"total: latency {result.latency_cycles:,.0f} cycles, energy {result.energy_pj:,.0f} pJ "
        f"({len(result.layers)} layers costed)"
    )
    if getattr(result, "cached", 0):
        console.print(f"{result.cached} distinct layers taken from the cache")
    if result.not_costed:
        kinds = sorted({op for _, op in result.not_costed})
        console.print(f"not costed (no MACs): {len(result.not_costed)} layers ({', '.join(kinds)})")
    for path in files:
        console.print(f"wrote {path}")


def compare_command(
    ctx: typer.Context,
    workload: Annotated[str, typer.Argument(help=WORKLOAD_HELP)],
    accelerators: Annotated[
        list[Path] | None,
        typer.Option(
            help="Accelerator YAML files to compare (more may follow as extra arguments)."
        ),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Sweep one parameter of the (first) accelerator: array.D1=8,16,32 | "
            "memory.NAME.size=... | memory.NAME.bandwidth=0.5,1,2 (scale)."
        ),
    ] = None,
    objective: Annotated[str, typer.Option(help=OBJECTIVE_HELP)] = "latency",
    mapping: Annotated[Path | None, typer.Option(help="Constraints: " + MAPPING_HELP)] = None,
    refine: Annotated[int, typer.Option(
        help="As 'kiln map --refine' (the same default).")] = DEFAULT_REFINE,
    dataset: Annotated[str | None, typer.Option(
        "--data", "--dataset", "-d", help="Dataset a zoo model is shaped for.")] = None,
    quant_config: Annotated[Path | None, typer.Option(help=QUANT_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    zigzag_yaml: Annotated[bool, typer.Option("--zigzag-yaml", help=ZIGZAG_YAML_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for JSON and PNG plots.")] = None,
) -> None:
    """Which accelerator wins? Map a workload on several accelerators (or a sweep of one)
    with the same search, and compare latency, energy, EDP and utilization.

    Example:  kiln compare resnet18 --accelerators examples/hardware/tpu_like.yaml \
                examples/hardware/edge_npu.yaml --out out/cmp
    Example:  kiln compare convnet --accelerators examples/hardware/edge_npu.yaml \
                --sweep array.D1=4,8,16
    """
    from kiln.errors import ConfigError
    from kiln.hw import load_accelerator, load_workload, load_zigzag_mapping
    from kiln.hw.compare import compare, comparison_rows, sweep_accelerators

    if out is not None:
        check_out_folder(out)
    files = list(accelerators or []) + [Path(a) for a in ctx.args]
    if not files:
        raise ConfigError("give at least one accelerator: --accelerators A.yaml [B.yaml ...]")
    hws = [load_accelerator(f, duplicate_keys="last" if zigzag_yaml else "error")
           for f in files]
    if sweep:
        hws = sweep_accelerators(hws[0], sweep)
    from kiln.models.user import parse_shape

    work = load_workload(workload, dataset=dataset, input_shape=parse_shape(input_shape),
                         weights=weights, quant_config=quant_config)
    entries = load_zigzag_mapping(mapping) if mapping is not None else None
    with progress(transient=True, quiet=as_json) as bar:
        task = bar.add_task("comparing", total=len(hws), status="")
        results = compare(
            work,
            hws,
            objective,
            entries,
            refine=refine,
            on_accelerator=lambda i, hw: bar.update(task, completed=i, status=hw.name),
        )
        bar.update(task, completed=len(hws))
    rows = comparison_rows(results)
    written = _write_out(out, results, "comparison")
    if as_json:
        print_json(
            {"workload": work.name, "objective": objective, "accelerators": rows, "files": written}
        )
        return
    best = min(
        rows,
        key=lambda r: r[
            {"latency": "latency_cycles", "energy": "energy_pj", "edp": "edp"}[objective]
        ],
    )
    console.print(
        table(
            f"{work.name}: {len(hws)} accelerators, objective {objective}, refine {refine}",
            ["accelerator", "latency (cyc)", "energy (pJ)", "EDP", "utilization"],
            [
                [
                    ("* " if r is best else "") + r["accelerator"],
                    human(r["latency_cycles"]),
                    human(r["energy_pj"]),
                    f"{r['edp']:.3g}",
                    f"{r['utilization']:.2f}",
                ]
                for r in rows
            ],
            right_align={"latency (cyc)", "energy (pJ)", "EDP", "utilization"},
        )
    )
    for path in written:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(cost)
    app.command("map")(map_command)
    app.command(
        "compare", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(compare_command)
