"""``kiln_top.sv``: the emitted units connected by valid/ready streams.

Layer ``i`` drives the stream ``l<i>`` (the design's input is ``in``). A stream read by one
unit goes straight to it; a stream read by several is forked: it moves when every reader
is ready, and each reader sees it valid when the others are ready (a lockstep fork). All
but one of a fork's edges go through a ``kiln_skip_fifo`` deep enough for the rows between
what its branch still needs and what the branch without one has read
(:func:`plan_skip_fifos`), so that the fork stalls only when that branch has what it needs
to make the join's next row (or, for forks that are not row-wise chains to an add, a whole
inference of the tensor). An add's inputs always come through a FIFO or a unit (its ready
depends on both valids: a fork straight into it would loop).
"""

from __future__ import annotations

from kiln.rtl.design import Design
from kiln.rtl.layers import Layer
from kiln.rtl.memories import bank_rows


def sources_of(layers: list[Layer], index: int) -> list[int]:
    """The layers ``layers[index]`` reads (-1: the design's input)."""
    return layers[index].sources or [index - 1]


def input_beats(layer: Layer) -> int:
    """Beats of the stream a layer reads, per inference."""
    geometry = layer.geometry
    if layer.has_im2col or layer.kind == "maxpool":
        return geometry["H"] * geometry["W"] * geometry["CB"]
    if layer.kind == "add":
        return layer.vectors_per_input * layer.out_beats
    return layer.in_beats


def _lead(layer: Layer) -> int:
    """How far a unit reading a fork runs ahead of its output (rows of its window; 0 for
    an add): without a row-wise path to a join, the fork edge to the unit that leads most
    needs no FIFO."""
    if layer.kind == "add":
        return -1
    if layer.has_im2col:
        return layer.geometry["FY"] * layer.geometry["W"] * layer.geometry["CB"]
    if layer.kind == "maxpool":
        return layer.geometry["K"] * layer.geometry["W"] * layer.geometry["CB"]
    return layer.in_beats


#: rows of slack in a skip FIFO beyond the rows its branch must hold, and beats for the
#: units' pipelines and output queues
SLACK_ROWS, SLACK_BEATS = 2, 64


def _row_map(layer: Layer) -> tuple[int, int, int, int] | None:
    """(stride, first, last, input rows): output row r of a row-wise unit reads input rows
    r·stride + first .. r·stride + last (clipped to the map); None for a unit that reads
    whole vectors (a dense layer)."""
    geometry = layer.geometry
    if layer.kind == "add":
        return 1, 0, 0, geometry.get("H", 1)
    if layer.has_im2col:
        span = geometry["DILATION"] * (geometry["FY"] - 1)
        return geometry["STRIDE"], -geometry["PAD"], span - geometry["PAD"], geometry["H"]
    if layer.kind == "maxpool":
        return geometry["STRIDE"], 0, geometry["K"] - 1, geometry["H"]
    return None


def _branch(layers: list[Layer], readers: dict[int, list[tuple[int, int]]], start: int
            ) -> list[int] | None:
    """The chain of units from ``start`` to the first add it reaches, each read by one
    unit only (None when the branch forks again, reads whole vectors or ends)."""
    path = [start]
    while layers[path[-1]].kind != "add":
        if _row_map(layers[path[-1]]) is None or len(readers.get(path[-1], [])) != 1:
            return None
        path.append(readers[path[-1]][0][0])
    return path if _row_map(layers[path[-1]]) is not None else None


def _rows_needed(layers: list[Layer], path: list[int], row: int) -> tuple[int, int]:
    """(first, last) row of the fork's tensor the branch ``path`` reads to make ``row`` of
    its join."""
    first = last = row
    for index in reversed(path):
        stride, low, high, rows = _row_map(layers[index])
        first = min(rows - 1, max(0, first * stride + low))
        last = min(rows - 1, max(0, last * stride + high))
    return first, last


def _skip_depths_by_rows(layers: list[Layer], readers: dict[int, list[tuple[int, int]]],
                         fork: list[tuple[int, int]]) -> dict[tuple[int, int], int] | None:
    """The skip FIFO depth of every fork edge from the rows each branch reads (0: the
    branch that reads furthest ahead, no FIFO): a FIFO holds the rows between what its
    branch still needs and what the other has read, for every row of the join, plus slack.
    None when the branches are not row-wise chains to one add."""
    paths = {edge: _branch(layers, readers, edge[0]) for edge in fork}
    if any(path is None for path in paths.values()) or \
            len({path[-1] for path in paths.values()}) != 1:
        return None
    join = layers[next(iter(paths.values()))[-1]]
    join_rows = join.geometry.get("H", 1)
    needs = {edge: [_rows_needed(layers, path, row) for row in range(join_rows)]
             for edge, path in paths.items()}
    direct = max(fork, key=lambda edge: (sum(last for _, last in needs[edge]),
                                         -fork.index(edge)))
    if layers[direct[0]].kind == "add":
        return None  # every branch goes straight to the join: no row-wise lead to size by
    consumer = layers[direct[0]]
    total_rows = _row_map(consumer)[3]
    row_beats = -(-input_beats(consumer) // total_rows)
    depths = {}
    for edge in fork:
        if edge == direct:
            depths[edge] = 0
            continue
        rows = max(long_last - first for (_, long_last), (first, _)
                   in zip(needs[direct], needs[edge], strict=True)) + 1 + SLACK_ROWS
        beats = min(rows * row_beats + SLACK_BEATS, input_beats(layers[edge[0]]))
        depths[edge] = 1 << max(beats - 1, 1).bit_length()
    return depths


def plan_skip_fifos(layers: list[Layer]) -> None:
    """Set ``skip_depths`` of every layer. A fork whose branches are row-wise chains to one
    add: a FIFO on every branch but the one that reads furthest ahead, deep enough for the
    rows between what its branch still needs and what that one has read (for every row of
    the join), plus slack. Any other fork: a FIFO on each edge but the one to the reader that
    leads most (none into an add), holding a whole inference of the tensor."""
    readers: dict[int, list[tuple[int, int]]] = {}
    for index, layer in enumerate(layers):
        layer.skip_depths = [0] * len(sources_of(layers, index))
        for position, source in enumerate(sources_of(layers, index)):
            readers.setdefault(source, []).append((index, position))
    for fork in readers.values():
        if len(fork) < 2:
            continue
        by_rows = _skip_depths_by_rows(layers, readers, fork)
        if by_rows is not None:
            for (index, position), depth in by_rows.items():
                layers[index].skip_depths[position] = depth
            continue
        direct = max(fork, key=lambda edge: _lead(layers[edge[0]]))
        for index, position in fork:
            if (index, position) == direct and layers[index].kind != "add":
                continue
            beats = input_beats(layers[index])
            layers[index].skip_depths[position] = 1 << max(beats - 1, 1).bit_length()


def _instance(module: str, name: str, params: dict[str, int], files: str,
              source: tuple[str, str, str], sink: tuple[str, str, str], comment: str
              ) -> list[str]:
    rendered = ", ".join(f".{k}({v})" for k, v in params.items())
    if files:
        rendered += ",\n                 " + files
    return [f"    // {comment}",
            f"    {module} #({rendered}) {name} (",
            "        .clk(clk), .rst_n(rst_n),",
            f"        .in_valid({source[0]}), .in_ready({source[1]}), .in_data({source[2]}),",
            f"        .out_valid({sink[0]}), .out_ready({sink[1]}), .out_data({sink[2]}));"]


def _stream(name: str) -> tuple[str, str, str]:
    return (f"{name}_valid", f"{name}_ready", f"{name}_data")


def _stream_name(source: int) -> str:
    return "in" if source < 0 else f"l{source}"


def _edges(design: Design) -> tuple[list[str], list[list[tuple[str, str, str]]]]:
    """The forks and skip FIFOs; per layer, the stream each of its inputs reads."""
    layers = design.layers
    first = layers[0]
    widths = {-1: first.p_in * first.in_bits}
    widths.update({i: layer.p_out * layer.out_bits for i, layer in enumerate(layers)})
    readers: dict[int, list[tuple[int, int]]] = {}
    for index in range(len(layers)):
        for position, source in enumerate(sources_of(layers, index)):
            readers.setdefault(source, []).append((index, position))
    lines: list[str] = []
    inputs: list[list[tuple[str, str, str]]] = [
        [("", "", "")] * len(sources_of(layers, i)) for i in range(len(layers))]
    for source, edges in readers.items():
        name = _stream_name(source)
        width = widths[source]
        if len(edges) == 1:
            fork_outputs = [_stream(name)]
        else:
            fork_outputs = [_stream(f"f{index}_{position}") for index, position in edges]
            lines.append(f"    // fork of {name}: {len(edges)} readers, in lockstep")
            for valid, ready, data in fork_outputs:
                lines += [f"    logic {valid}, {ready};", f"    logic [{width - 1}:0] {data};"]
            readies = [ready for _, ready, _ in fork_outputs]
            lines.append(f"    assign {name}_ready = {' && '.join(readies)};")
            for k, (valid, _, data) in enumerate(fork_outputs):
                others = [r for j, r in enumerate(readies) if j != k]
                lines += [f"    assign {valid} = {name}_valid && {' && '.join(others)};",
                          f"    assign {data} = {name}_data;"]
        for (index, position), fork_output in zip(edges, fork_outputs, strict=True):
            depth = layers[index].skip_depths[position] if layers[index].skip_depths else 0
            if not depth:
                inputs[index][position] = fork_output
                continue
            skipped = _stream(f"s{index}_{position}")
            lines += [f"    logic {skipped[0]}, {skipped[1]};",
                      f"    logic [{width - 1}:0] {skipped[2]};"]
            lines += _instance("kiln_skip_fifo", f"skip_{index}_{position}",
                               {"WIDTH": width, "DEPTH": depth}, "", fork_output, skipped,
                               f"skip FIFO: {name} -> {layers[index].name}, {depth} beats")
            inputs[index][position] = skipped
    for index in range(len(layers) - 1):
        if index not in readers:  # read by no unit: drained
            lines.append(f"    assign l{index}_ready = 1'b1;")
    return lines, inputs


def top_module(design: Design) -> str:
    """SystemVerilog of ``kiln_top``: every unit, its streams, forks and skip FIFOs."""
    first, last = design.layers[0], design.layers[-1]
    nearest = 1 if design.rounding == "nearest" else 0
    lines = [
        f"// {design.program_name}: {len(design.layers)} layers, generated by kiln.",
        "module kiln_top (",
        "    input  logic clk,",
        "    input  logic rst_n,",
        "    input  logic in_valid,",
        "    output logic in_ready,",
        f"    input  logic [{first.p_in * first.in_bits - 1}:0] in_data,",
        "    output logic out_valid,",
        "    input  logic out_ready,",
        f"    output logic [{last.p_out * last.out_bits - 1}:0] out_data",
        ");",
    ]
    for index, layer in enumerate(design.layers):
        width = layer.p_out * layer.out_bits
        lines += [f"    logic l{index}_valid, l{index}_ready;",
                  f"    logic [{width - 1}:0] l{index}_data;"]
    fork_lines, inputs = _edges(design)
    lines += fork_lines
    for index, layer in enumerate(design.layers):
        source = inputs[index][0]
        sink = _stream(f"l{index}")
        geometry = layer.geometry
        if layer.kind == "maxpool" and not layer.has_im2col:
            params = {"H": geometry["H"], "W": geometry["W"], "CB": geometry["CB"],
                      "P": layer.p_in, "BITS": layer.in_bits, "SIGNED": int(layer.in_signed),
                      "K": geometry["K"], "STRIDE": geometry["STRIDE"]}
            lines += _instance("kiln_maxpool", f"layer_{index}", params, "", source, sink,
                               f"{layer.name}: max pool {geometry['K']}x{geometry['K']}")
            continue
        if layer.kind == "add":
            lines += _add_instance(layer, index, inputs[index], sink, nearest)
            continue
        if layer.has_im2col:
            window = _stream(f"w{index}")
            lines += [f"    logic w{index}_valid, w{index}_ready;",
                      f"    logic [{layer.p_in * layer.in_bits - 1}:0] w{index}_data;"]
            params = {"H": geometry["H"], "W": geometry["W"], "CB": geometry["CB"],
                      "P": layer.p_in, "BITS": layer.in_bits,
                      "ZERO": geometry.get("PAD_VALUE", layer.in_zero),
                      "FY": geometry["FY"], "FX": geometry["FX"], "STRIDE": geometry["STRIDE"],
                      "PAD": geometry["PAD"], "DILATION": geometry["DILATION"]}
            lines += _instance("kiln_im2col", f"im2col_{index}", params, "", source, window,
                               f"{layer.name}: im2col {geometry['FY']}x{geometry['FX']}")
            source = window
        if layer.kind == "maxpool":  # padded or non-square: the window's running maximum
            params = {"P": layer.p_in, "BITS": layer.in_bits, "SIGNED": int(layer.in_signed),
                      "CB": geometry["CB"], "TAPS": geometry["FY"] * geometry["FX"]}
            lines += _instance("kiln_window_max", f"layer_{index}", params, "", source, sink,
                               f"{layer.name}: max pool {geometry['FY']}x{geometry['FX']}, "
                               f"padding {geometry['PAD']}")
            continue
        mem = f"mem/{layer.name}"
        params = {"IN_N": layer.in_n, "OUT_N": layer.out_n, "P_IN": layer.p_in,
                  "P_OUT": layer.p_out, "IN_BITS": layer.in_bits,
                  "IN_SIGNED": int(layer.in_signed), "IN_ZERO": layer.in_zero,
                  "WC_BITS": layer.wc_bits, "ACC_BITS": layer.acc_bits,
                  "M_BITS": layer.m_bits, "OUT_BITS": layer.out_bits,
                  "OUT_ZERO": layer.out_zero, "LO": layer.lo, "HI": layer.hi,
                  "ROUND_NEAREST": nearest, "FLOAT32": int(design.rounding == "float32"),
                  "REQUANTS": layer.requants, "PASSES": layer.passes,
                  "W_BANKS": layer.w_banks, "W_BANK_BITS": bank_rows(
                      layer.weight_lanes * layer.wc_bits, layer.w_pack).bit_length() - 1,
                  "W_PACK": layer.w_pack, "DIAGONAL": int(layer.diagonal), "TAPS": layer.taps}
        files = (f'.W_FILE("{mem}.weights.mem"), .B_FILE("{mem}.bias.mem"), '
                 f'.M_FILE("{mem}.m0.mem"), .S_FILE("{mem}.shift.mem")')
        what = (f"{layer.kind}, {layer.taps} taps per channel" if layer.diagonal and
                layer.taps > 1 else f"{layer.in_n} -> {layer.out_n}")
        lines += _instance("kiln_dense", f"layer_{index}", params, files, source, sink,
                           f"{layer.name}: {what}, {layer.p_in}x{layer.p_out}")
    final = len(design.layers) - 1
    lines += [f"    assign out_valid = l{final}_valid;",
              f"    assign l{final}_ready = out_ready;",
              f"    assign out_data = l{final}_data;",
              "endmodule", ""]
    return "\n".join(lines)


def _add_instance(layer: Layer, index: int, inputs: list[tuple[str, str, str]],
                  sink: tuple[str, str, str], nearest: int) -> list[str]:
    geometry = layer.geometry
    params = {"P": layer.p_in, "A_BITS": layer.in_bits, "A_SIGNED": int(layer.in_signed),
              "A_ZERO": layer.in_zero, "B_BITS": geometry["B_BITS"],
              "B_SIGNED": geometry["B_SIGNED"], "B_ZERO": geometry["B_ZERO"],
              "MA": geometry["MA"], "MB": geometry["MB"], "M_BITS": geometry["M_BITS"],
              "SHIFT_A": geometry["SHIFT_A"],
              "SHIFT_B": geometry["SHIFT_B"], "COMMON": geometry["COMMON"],
              "SUM_BITS": geometry["SUM_BITS"], "Y_BITS": geometry["Y_BITS"],
              "ROUND_NEAREST": nearest, "OUT_BITS": layer.out_bits,
              "OUT_ZERO": layer.out_zero, "LO": layer.lo, "HI": layer.hi,
              "SERIAL": geometry["SERIAL"]}
    rendered = ", ".join(f".{k}({v})" for k, v in params.items())
    (a_valid, a_ready, a_data), (b_valid, b_ready, b_data) = inputs
    return [f"    // {layer.name}: residual add, {layer.p_in} lanes in {geometry['SERIAL']} turns",
            f"    kiln_add #({rendered}) layer_{index} (",
            "        .clk(clk), .rst_n(rst_n),",
            f"        .a_valid({a_valid}), .a_ready({a_ready}), .a_data({a_data}),",
            f"        .b_valid({b_valid}), .b_ready({b_ready}), .b_data({b_data}),",
            f"        .out_valid({sink[0]}), .out_ready({sink[1]}), .out_data({sink[2]}));"]
