"""Running the flow: stages in order, each skipped when its inputs have not changed.

Every stage writes ``DIR/<stage>/`` whole or not at all (:func:`kiln.atomic.atomic_folder`),
with ``stage.json`` inside: the stage's key (a hash of its settings, the model and the keys
of the stages it reads), its status and its figures. A stage whose folder holds a
``stage.json`` with the same key is *cached*: it does not run again. So a re-run after a
kill (SIGINT or SIGKILL) or a config change redoes only the stages whose inputs changed, and
no half-written artifact is ever trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.atomic import atomic_folder
from kiln.errors import KilnError
from kiln.flow.config import STAGES, FlowConfig, needs
from kiln.flow.hw_stages import stage_fpga, stage_mvu, stage_schedule
from kiln.flow.stages import STAGE_FUNCTIONS as _SOFTWARE_STAGES
from kiln.flow.stages import FlowContext
from kiln.models.checkpoints import shipped_checkpoint
from kiln.models.user import is_user_module

STAGE_FUNCTIONS = {**_SOFTWARE_STAGES, "schedule": stage_schedule, "mvu": stage_mvu,
                   "fpga": stage_fpga}

#: Bump when a stage's artifact changes meaning (invalidates every cached stage). 2: the RTL
#: of session 14 (packed ROMs, registered operands, the per-channel affine unit); 3: session
#: 15's (graphs: forks, skip FIFOs, kiln_add; the dense unit's input address register).
#: Since 3 the key also holds :func:`code_fingerprint` (any change to kiln's code).
FLOW_VERSION = 3
#: The config sections each stage's result depends on.
SECTIONS = {"train": ("model", "data", "train"), "float": ("model", "data"),
            "compress": ("compression", "data"), "integer": ("integer",),
            "onnx": ("onnx", "data"), "cost": ("accelerator",), "schedule": ("schedule",),
            "mvu": ("mvu", "data"), "rtl": ("rtl",), "simulate": ("simulate", "data"),
            "synth": ("synth",), "fpga": ("fpga", "rtl")}
#: Config fields that name files: their contents are part of the key.
FILE_FIELDS = {"model": ("weights",), "compression": ("config", "search"),
               "accelerator": ("path",), "schedule": ("system",)}


class FlowError(KilnError):
    """A stage broke (not a refusal): the flow stopped; what was done is kept."""


@dataclass
class StageRecord:
    stage: str
    status: str  # done, cached, refused, skipped, failed, not selected
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model: str) -> str:
    """What the model is: a file's contents, a module's source, a zoo name (and the
    shipped checkpoint's contents)."""
    if is_user_module(model):
        return "module:" + _file_digest(Path(model.rpartition(":")[0])) + ":" + \
            model.rpartition(":")[2]
    if Path(model).is_file():
        return "file:" + _file_digest(Path(model))

    try:
        shipped = shipped_checkpoint(model)
    except KilnError:
        shipped = None
    return f"zoo:{model}:" + (_file_digest(shipped) if shipped else "fresh")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """What kiln's code is: its Python, SystemVerilog and data files (not the shipped
    checkpoints, which the model's fingerprint covers). In every stage's key, so that a
    stage made (or refused) by other code is not taken from the cache."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".sv", ".v", ".json", ".toml", ".yaml", ".h", ".cpp") and \
                "checkpoints" not in path.parts and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_key(stage: str, config: FlowConfig, model: str, upstream: list[str]) -> str:
    sections = {}
    names = SECTIONS[stage]
    if stage == "fpga" and config.fpga.fold:
        names = tuple(n for n in names if n != "rtl")  # folded: [rtl] parallelism unused
    for name in names:
        section = config.section(name)
        for key in FILE_FIELDS.get(name, ()):
            if section.get(key):
                section[f"{key}_sha256"] = _file_digest(Path(section[key]))
        sections[name] = section
    payload = {"stage": stage, "version": FLOW_VERSION, "code": code_fingerprint(),
               "sections": sections, "upstream": upstream}
    if stage in ("train", "float"):
        payload["model"] = model_fingerprint(model)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _cached(folder: Path, key: str) -> StageRecord | None:
    path = folder / "stage.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if data.get("key") != key or data.get("status") not in ("done", "refused"):
        return None
    record = StageRecord(**{k: v for k, v in data.items() if k in StageRecord.__dataclass_fields__})
    record.status = "cached" if data["status"] == "done" else "refused"
    return record


def run_flow(model: str, config: FlowConfig, out: str | Path, *,
             on_stage: Callable[[str, StageRecord], None] | None = None
             ) -> list[StageRecord]:
    """Run ``config.stages`` on ``model`` into ``out``; returns one record per stage."""
    out = Path(out)
    ctx = FlowContext(model, config, out)
    ctx.check_inputs()  # a model that cannot be loaded or does not fit: nothing is written
    out.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    records: dict[str, StageRecord] = {}
    for stage in STAGES:
        if stage not in config.stages:
            records[stage] = StageRecord(stage, "not selected")
            continue
        missing = [need for need in needs(stage, config.stages)
                   if records.get(need) is None or records[need].status not in ("done",
                                                                                 "cached")]
        if missing:
            reason = records[missing[0]].status if missing[0] in records else "not run"
            records[stage] = StageRecord(stage, "skipped",
                                         message=f"needs {missing[0]} ({reason})")
            _report(on_stage, records[stage])
            continue
        key = stage_key(stage, config, model,
                        [keys[need] for need in needs(stage, config.stages)])
        keys[stage] = key
        folder = out / stage
        cached = _cached(folder, key)
        if cached is not None:
            records[stage] = cached
            _report(on_stage, cached)
            continue
        _report(on_stage, StageRecord(stage, "running", key=key))
        started = time.perf_counter()
        try:
            with atomic_folder(folder, marker="stage.json") as partial:
                try:
                    figures = STAGE_FUNCTIONS[stage](ctx, partial)
                    record = StageRecord(stage, "done", figures=figures, key=key)
                except KilnError as refusal:  # this model cannot take this stage
                    for entry in list(partial.iterdir()):
                        _remove(entry)
                    record = StageRecord(stage, "refused", message=refusal.message, key=key)
                record.seconds = round(time.perf_counter() - started, 2)
                (partial / "stage.json").write_text(json.dumps(record.as_dict(), indent=1,
                                                               default=_json) + "\n")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a broken stage: stop, keep what is done
            log = out / "flow-error.log"
            log.write_text(traceback.format_exc())
            records[stage] = StageRecord(stage, "failed", round(time.perf_counter() - started,
                                                                2), message=str(exc), key=key)
            _report(on_stage, records[stage])
            raise FlowError(f"stage '{stage}' failed: {type(exc).__name__}: {exc}",
                            hint=f"traceback in {log}; the stages before it are kept") from exc
        records[stage] = record
        _report(on_stage, record)
    return [records[stage] for stage in STAGES]


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _report(callback, record: StageRecord) -> None:
    if callback is not None:
        callback(record.stage, record)


def _json(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
