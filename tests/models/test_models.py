import pytest
import torch

from kiln.data import load_dataset
from kiln.errors import ModelFormatError, UnknownNameError
from kiln.graph import OpKind
from kiln.models import (
    MODELS,
    build_graph,
    evaluate,
    fit,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_builds_and_runs(name):
    graph = build_graph(name)
    spec = MODELS[name]
    assert graph.input_shape == (1, *spec.input_shape)
    with torch.no_grad():
        assert graph(torch.zeros(2, *spec.input_shape)).shape == (2, spec.num_classes)
    assert graph.total_macs > 0


def test_architectures_as_specified():
    ops = [info.op for info in build_graph("jsc-tiny").layers()]
    assert ops == [OpKind.BATCHNORM, OpKind.RELU, OpKind.LINEAR, OpKind.RELU]
    three = [i for i in build_graph("jsc-three-linear").layers() if i.op is OpKind.LINEAR]
    assert [(i.loops.C, i.loops.K) for i in three] == [(16, 16), (16, 16), (16, 5)]
    depthwise = [i for i in build_graph("mobilenetv2-cifar").layers()
                 if i.loops is not None and i.loops.G > 1]
    assert len(depthwise) == 17 and all(i.loops.K == 1 and i.loops.C == 1 for i in depthwise)


def test_dataset_sets_input_width_and_classes():
    graph, info = resolve_model("jsc-three-linear", dataset="letter")
    assert graph.input_shape == (1, 16) and graph.layers()[-2].loops.K == 26


def test_unknown_model_suggests_a_name():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        resolve_model("resnet-18")


def test_training_is_seeded_and_learns(tmp_path):
    data = load_dataset("letter")
    runs = []
    for _ in range(2):
        graph, _ = resolve_model("jsc-tiny", dataset="letter")
        result = fit(graph, data, epochs=2, seed=5, lr=1e-2)
        runs.append((graph, result))
    (first, r1), (second, r2) = runs
    assert r1.train_loss == r2.train_loss
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert r1.final_accuracy > 0.2  # 26 classes: chance is 3.8%
    path = save_checkpoint(first, tmp_path / "tiny.pt", model="jsc-tiny", dataset="letter",
                           metrics={"test_accuracy": r1.final_accuracy})
    loaded, info = load_checkpoint(path)
    assert info.metrics["test_accuracy"] == r1.final_accuracy
    assert evaluate(loaded, data) == pytest.approx(r1.final_accuracy)
    assert (tmp_path / "tiny.json").is_file()


def test_shipped_checkpoints_score_as_recorded():
    convnet, info = resolve_model("convnet", pretrained=True)
    accuracy = evaluate(convnet, load_dataset("fashion-mnist"))
    assert accuracy >= 0.89
    assert accuracy == pytest.approx(info.metrics["test_accuracy"], abs=1e-9)
    assert info.checkpoint.stat().st_size <= 1_000_000
    jsc, jsc_info = resolve_model("jsc-three-linear", pretrained=True)
    assert evaluate(jsc, load_dataset("letter")) == pytest.approx(
        jsc_info.metrics["test_accuracy"], abs=1e-9)


def test_bad_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a checkpoint")
    with pytest.raises(ModelFormatError, match="garbage.pt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ModelFormatError, match="not a kiln checkpoint"):
        load_checkpoint(plain)
    torn = tmp_path / "torn.pt"
    torn.write_bytes((tmp_path / "plain.pt").read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="torn.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(torn)
