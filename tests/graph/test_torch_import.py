import torch
from torch import nn

from kiln.graph import OpKind, from_torch
from kiln.models import build_graph


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x)) + x
        y = torch.cat([self.depthwise(y), self.pool(y)], dim=1)[:, :8]
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 2), 1)
        return torch.softmax(self.fc(y), dim=-1) @ torch.ones(5, 3)


def test_metadata_of_every_op_kind():
    g = from_torch(Residual(), torch.randn(2, 8, 8, 8))
    kinds = {info.name: info.op for info in g.nodes()}
    assert kinds["conv"] is OpKind.CONV
    assert kinds["relu"] is OpKind.RELU
    assert kinds["add"] is OpKind.ADD
    assert kinds["cat"] is OpKind.CONCAT
    assert kinds["pool"] is OpKind.MAXPOOL
    assert kinds["flatten"] is OpKind.FLATTEN
    assert kinds["fc"] is OpKind.LINEAR
    assert kinds["softmax"] is OpKind.SOFTMAX
    assert kinds["matmul"] is OpKind.MATMUL

    grouped = g.node("conv").loops
    assert (grouped.B, grouped.G, grouped.K, grouped.C, grouped.OY, grouped.FY) == (
        2, 2, 4, 4, 8, 3)
    assert g.node("conv").macs == 2 * 8 * 4 * 8 * 8 * 9
    depthwise = g.node("depthwise").loops
    assert (depthwise.G, depthwise.K, depthwise.C, depthwise.OY, depthwise.stride) == (
        8, 1, 1, 4, (2, 2))
    assert g.node("depthwise").output_shape == (2, 8, 4, 4)
    assert g.node("fc").params == 8 * 4 * 5 + 5
    assert g.node("matmul").loops.C == 5 and g.node("matmul").loops.K == 3
    assert g.node("fc").output_dtype == "float32"


def test_resnet18_mac_count_matches_reference():
    g = build_graph("resnet18")
    assert g.total_macs == 1_814_073_344
    assert g.total_params == 11_689_512


def test_graph_is_executable_and_trainable():
    g = build_graph("convnet")
    x = torch.randn(4, 1, 28, 28)
    reference = g(x).detach().clone()
    optimizer = torch.optim.SGD(g.parameters(), lr=0.1)
    g.train()
    loss = g(x).square().mean()
    loss.backward()
    optimizer.step()
    g.eval()
    assert not torch.allclose(g(x), reference)


def test_copy_is_independent_and_from_torch_leaves_module_alone():
    module = nn.Sequential(nn.Linear(3, 3))
    g = from_torch(module, torch.zeros(1, 3))
    copy = g.copy()
    with torch.no_grad():
        copy.module.get_submodule("0").weight.fill_(7.0)
    copied = copy.module.get_submodule("0").weight
    assert not torch.equal(g.module.get_submodule("0").weight, copied)
    assert not torch.equal(module[0].weight, copy.module.get_submodule("0").weight)
    assert copy.nodes()[1] == g.nodes()[1]
