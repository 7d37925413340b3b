"""The README's worked example: a 4x4 by 4x4 product in uint8, floor and nearest modes.

    .venv/bin/python examples/worked_example.py
"""

import numpy as np
import torch

from kiln.integer import qmatmul, quantize_multiplier
from kiln.quant import QuantSpec
from kiln.quant.functional import scale_and_zero_point

a = np.array([[0.9, -0.4, 0.1, 0.5], [0.3, 0.8, -0.7, 0.2],
              [-0.6, 0.1, 0.4, 0.9], [0.2, -0.3, 0.6, -0.1]], dtype=np.float32)
b = np.array([[0.5, -0.2, 0.7, 0.1], [-0.8, 0.4, 0.3, 0.6],
              [0.2, 0.9, -0.5, -0.4], [0.6, -0.1, 0.2, 0.8]], dtype=np.float32)
uint8 = QuantSpec(bits=8, signed=False, symmetric=False)  # asymmetric, full (min-max) range


def qparams(x: np.ndarray) -> tuple[float, int]:
    scale, zero = scale_and_zero_point(torch.tensor(x.min()), torch.tensor(x.max()), uint8)
    return float(scale), int(zero)


def quantize(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    return np.clip(np.rint(x / np.float32(scale)) + zero, 0, 255).astype(np.int64)


product = a @ b
s_a, z_a = qparams(a)
s_b, z_b = qparams(b)
s_c, z_c = qparams(product)  # the output range, as calibration would observe it
q_a, q_b = quantize(a, s_a, z_a), quantize(b, s_b, z_b)
multiplier = s_a * s_b / s_c
m0, n = quantize_multiplier(multiplier)
np.set_printoptions(precision=4, suppress=True)
print(f"A: scale {s_a:.6f}, zero point {z_a}\nq_A =\n{q_a}")
print(f"B: scale {s_b:.6f}, zero point {z_b}\nq_B =\n{q_b}")
print(f"C = A @ B (float):\n{product}")
print(f"C: scale {s_c:.6f}, zero point {z_c} (from C's min {product.min():.4f} and "
      f"max {product.max():.4f})")
print(f"M = S_A * S_B / S_C = {multiplier:.9f} = M0 * 2^-(31+n) with M0 = {m0}, n = {n}")
for rounding in ("floor", "nearest"):
    q_c = qmatmul(q_a, q_b, z_a, z_b, z_c, m0, n, rounding=rounding, qmin=0, qmax=255)
    print(f"{rounding}: q_C =\n{q_c}\ndequantized:\n{(q_c - z_c) * s_c}\n"
          f"max error {np.abs((q_c - z_c) * s_c - product).max():.4f}")
