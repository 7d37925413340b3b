"""What a trial measures: accuracy on held-out data, size, bit width, hardware cost.

The held-out data is the first half of the dataset's test split (``[evaluation].samples``
of it); the second half stays untouched for reporting the chosen configuration. Hardware
latency and energy come from kiln's mapper on the configured accelerator, with the trial's
widths as operand precisions (cached per set of widths and layer shapes).

    >>> evaluator = Evaluator(load_config("search.toml"))     # doctest: +SKIP
    >>> evaluator.measure({"features_0.w": 4, ...})           # doctest: +SKIP
    {'accuracy': 0.91, 'accuracy_drop': 0.8, 'size': 27312.0, 'bits': 4.0, ...}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kiln.data import load_dataset
from kiln.data.datasets import Dataset
from kiln.graph.core import Graph
from kiln.hw import load_accelerator, load_zigzag_mapping
from kiln.hw.workload_mapper import DEFAULT_LPF_LIMIT, DEFAULT_REFINE, map_workload
from kiln.hw.workload_sources import workload_from_graph
from kiln.models import evaluate, fit, resolve_model
from kiln.models.artifacts import channels_step, prune_step, quantize_step, save_model
from kiln.passes import model_size
from kiln.quant import calibrate, qat, quantize
from kiln.report.markdown import write_text
from kiln.search.config import SearchConfig
from kiln.search.spaces import ChannelSpace, MixedPrecisionSpace, PruneQuantSpace, make_space


def split_test(dataset: Dataset, samples: int | None) -> tuple[Dataset, Dataset]:
    """(validation, holdout): the two halves of the test split; validation capped at ``samples``."""
    half = len(dataset.x_test) // 2
    size = half if samples is None else min(samples, half)
    validation = dataclasses.replace(
        dataset, x_test=dataset.x_test[:size], y_test=dataset.y_test[:size]
    )
    holdout = dataclasses.replace(
        dataset, x_test=dataset.x_test[half:], y_test=dataset.y_test[half:]
    )
    return validation, holdout


class Evaluator:
    """Builds and scores the graph of a trial's parameters (one per process)."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.graph, info = resolve_model(
            config.model.name, dataset=config.model.dataset, pretrained=config.model.pretrained
        )
        self.info = info
        self.dataset = load_dataset(config.model.dataset or info.dataset)
        self.validation, self.holdout = split_test(self.dataset, config.evaluation.samples)
        self.space = make_space(self.graph, config.space)
        self._built: tuple[str, Graph] | None = None  # the last build, for holdout + files
        self.baseline = evaluate(self._baseline_graph(), self.validation)
        self._hardware = None
        self._hw_cache: dict[tuple, tuple[float, float]] = {}
        low = config.evaluation.low_fidelity_samples
        self.low_samples = min(low, len(self.validation.x_test)) if low else None
        self._low_pass: tuple[str, Graph, int] | None = None  # (params, graph, correct)

    @property
    def low_fraction(self) -> float:
        """The cost of a low-fidelity pass, as a fraction of a full evaluation."""
        return (self.low_samples or 0) / len(self.validation.x_test)

    def prune_limit(self) -> float | None:
        """The accuracy drop (points) above which a low-fidelity result is clearly
        infeasible: the constraint plus two standard errors of the smaller sample."""
        import math

        c = self.config.constraints
        limits = []
        if c.max_accuracy_drop is not None:
            limits.append(c.max_accuracy_drop)
        if c.min_accuracy is not None:
            limits.append(100 * (self.baseline - c.min_accuracy))
        if not limits or not self.low_samples:
            return None
        p = min(max(self.baseline, 0.01), 0.99)
        return min(limits) + 2 * 100 * math.sqrt(p * (1 - p) / self.low_samples)

    def _baseline_graph(self) -> Graph:
        """The network the accuracy drop is measured from. A channel search trains every
        candidate from scratch with a short schedule, so its reference is the unscaled
        network trained with that same schedule (not the given weights, which may be
        untrained or trained far longer)."""
        if not isinstance(self.space, ChannelSpace):
            return self.graph
        evaluation = self.config.evaluation
        unscaled = {f"{name}.mult": 1.0 for name in self.space.factors_names()}
        graph = self.space.build(unscaled, seed=evaluation.seed)
        fit(graph, self.dataset, epochs=evaluation.train_epochs, lr=evaluation.lr,
            batch_size=evaluation.batch_size, seed=evaluation.seed)
        return graph

    @property
    def baseline_description(self) -> str:
        """What the baseline accuracy is the accuracy of, in words for the report."""
        if isinstance(self.space, ChannelSpace):
            epochs = self.config.evaluation.train_epochs
            return (f"unscaled network trained {epochs} epoch{'s' * (epochs != 1)} "
                    "like every candidate")
        return "float model"

    def built(self, params: dict[str, Any]) -> Graph:
        """:meth:`build`, kept for the last configuration (the winner is scored on the
        held-out half and then written: one build, not two)."""
        import json

        key = json.dumps(params, sort_keys=True)
        if self._built is None or self._built[0] != key:
            self._built = (key, self.build(params))
        return self._built[1]

    # -- building ------------------------------------------------------------------

    def build(self, params: dict[str, Any]) -> Graph:
        """The trial's network, trained / calibrated as its space requires."""
        evaluation = self.config.evaluation
        seed = evaluation.seed
        space = self.space
        if isinstance(space, ChannelSpace):
            graph = space.build(params, seed=seed)
            fit(
                graph,
                self.dataset,
                epochs=evaluation.train_epochs,
                lr=evaluation.lr,
                batch_size=evaluation.batch_size,
                seed=seed,
            )
            return graph
        if isinstance(space, PruneQuantSpace):
            base = space.prune(params)
            if evaluation.finetune_epochs:
                fit(
                    base,
                    self.dataset,
                    epochs=evaluation.finetune_epochs,
                    lr=evaluation.lr / 2,
                    batch_size=evaluation.batch_size,
                    seed=seed,
                )
        else:
            base = self.graph
        assert isinstance(space, (MixedPrecisionSpace, PruneQuantSpace))
        quantized = calibrate(
            quantize(base, space.config(params)),
            self.dataset,
            batches=evaluation.calibration_batches,
            seed=seed,
        )
        if evaluation.finetune_epochs and isinstance(space, MixedPrecisionSpace):
            quantized, _ = qat(
                quantized,
                self.dataset,
                epochs=evaluation.finetune_epochs,
                batch_size=evaluation.batch_size,
                seed=seed,
            )
        return quantized

    # -- measuring -----------------------------------------------------------------

    def measure_low(self, params: dict[str, Any]) -> dict[str, float]:
        """Accuracy on the first ``low_fidelity_samples`` validation samples; a following
        :meth:`measure` of the same configuration scores only the rest."""
        import dataclasses
        import json

        assert self.low_samples is not None
        graph = self.build(params)
        part = dataclasses.replace(self.validation, x_test=self.validation.x_test[
            :self.low_samples], y_test=self.validation.y_test[:self.low_samples])
        correct = round(evaluate(graph, part) * self.low_samples)
        self._low_pass = (json.dumps(params, sort_keys=True), graph, correct)
        accuracy = correct / self.low_samples
        return {"accuracy": accuracy, "accuracy_drop": 100 * (self.baseline - accuracy)}

    def _accuracy(self, params: dict[str, Any], graph: Graph) -> float:
        import dataclasses
        import json

        low, self._low_pass = self._low_pass, None
        if low is None or low[0] != json.dumps(params, sort_keys=True) or low[1] is not graph:
            return evaluate(graph, self.validation)
        total = len(self.validation.x_test)
        rest = dataclasses.replace(self.validation, x_test=self.validation.x_test[
            self.low_samples:], y_test=self.validation.y_test[self.low_samples:])
        remaining = total - self.low_samples
        correct = low[2] + (round(evaluate(graph, rest) * remaining) if remaining else 0)
        return correct / total

    def measure(self, params: dict[str, Any], graph: Graph | None = None) -> dict[str, float]:
        """Every metric of one configuration (objectives and constraints pick from these)."""
        import json

        if graph is None and self._low_pass is not None and \
                self._low_pass[0] == json.dumps(params, sort_keys=True):
            graph = self._low_pass[1]  # built by measure_low
        graph = graph if graph is not None else self.build(params)
        accuracy = self._accuracy(params, graph)
        size = model_size(graph)
        weights = sum(layer.params for layer in size.layers)
        bits = sum(layer.params * layer.weight_bits for layer in size.layers) / max(weights, 1)
        metrics = {
            "accuracy": accuracy,
            "accuracy_drop": 100 * (self.baseline - accuracy),
            "size": size.total_bytes,
            "bits": bits,
            "params": float(weights),
        }
        if self.config.hardware is not None:
            latency, energy = self.hardware_cost(graph, params)
            metrics.update(latency=latency, energy=energy)
        return metrics

    def hardware_cost(self, graph: Graph, params: dict[str, Any]) -> tuple[float, float]:
        """(latency cycles, energy pJ) of the trial's network on the configured accelerator."""
        hardware = self.config.hardware
        assert hardware is not None
        if self._hardware is None:
            mapping = load_zigzag_mapping(hardware.mapping) if hardware.mapping else None
            self._hardware = (load_accelerator(hardware.accelerator), mapping)
        accelerator, mapping = self._hardware
        widths = getattr(self.space, "widths", None)
        workload = workload_from_graph(graph, widths(params) if widths else None)
        key = tuple(
            (tuple(layer.sizes.items()), tuple(sorted(layer.precision.items())))
            for layer in workload.layers
        )
        if key not in self._hw_cache:
            # exactly what `kiln map MODEL -a ACCEL --objective O` runs on the winner
            result = map_workload(workload, accelerator, hardware.objective_search, mapping,
                                  DEFAULT_LPF_LIMIT, refine=DEFAULT_REFINE)
            self._hw_cache[key] = (result.latency_cycles, result.energy_pj)
        return self._hw_cache[key]

    # -- constraints ---------------------------------------------------------------

    def violations(self, metrics: dict[str, float]) -> list[float]:
        """One value per constraint; <= 0 means satisfied (Optuna's convention)."""
        c = self.config.constraints
        values = []
        if c.max_accuracy_drop is not None:
            values.append(metrics["accuracy_drop"] - c.max_accuracy_drop)
        if c.min_accuracy is not None:
            values.append(c.min_accuracy - metrics["accuracy"])
        if c.max_size is not None:
            values.append(metrics["size"] - c.max_size)
        if c.max_latency is not None:
            values.append(metrics["latency"] - c.max_latency)
        return values

    def holdout_accuracy(self, params: dict[str, Any]) -> float:
        """Accuracy of a configuration on the held-out half never used by the search."""
        return evaluate(self.built(params), self.holdout)

    def write_config(self, params: dict[str, Any], out: Path) -> list[Path]:
        """The winner as files the other commands read: ``best_model.pt`` (the model itself,
        with every step it went through) and the readable records ``best_*.yaml``."""
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        written = []
        space = self.space
        if isinstance(space, (MixedPrecisionSpace, PruneQuantSpace)):
            path = out / "best_quantization.yaml"
            write_text(path, yaml.safe_dump(space.config(params), sort_keys=False))
            written.append(path)
        if isinstance(space, PruneQuantSpace):
            path = out / "best_pruning.yaml"
            write_text(path, yaml.safe_dump({"fractions": space.fractions_of(params)},
                                            sort_keys=False))
            written.append(path)
        if isinstance(space, ChannelSpace):
            path = out / "best_channels.yaml"
            write_text(path, yaml.safe_dump({"multipliers": space.factors(params)},
                                            sort_keys=False))
            written.append(path)
        if self.info.recipe is not None:
            written.append(self.write_model(params, out / "best_model.pt"))
        return written

    def write_model(self, params: dict[str, Any], path: Path) -> Path:
        """The configuration's network as a kiln model file: the base model's recipe plus
        this space's steps, and the state the trial ended with (calibrated, fine-tuned)."""
        assert self.info.recipe is not None
        space = self.space
        steps = list(self.info.recipe.get("steps", []))
        if isinstance(space, ChannelSpace):
            steps.append(channels_step(space.factors(params)))
        if isinstance(space, PruneQuantSpace):
            steps.append(prune_step(space.masked(params), shrunk=True))
        if isinstance(space, (MixedPrecisionSpace, PruneQuantSpace)):
            steps.append(quantize_step(space.config(params)))
        recipe = {**self.info.recipe, "steps": steps}
        return save_model(self.built(params), path, recipe,
                          dataset=self.dataset.name, input_scale=self.info.input_scale,
                          metrics={"params": params, "search": self.config.study.name})
