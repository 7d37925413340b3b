"""Random networks through every stage, differential at every step (``kiln fuzz``).

>>> from kiln.fuzz import fuzz
>>> report = fuzz(count=5, seed=0, stages=("lower", "engine", "onnx"))  # doctest: +SKIP
>>> report.failures
[]
"""

from kiln.fuzz.differential import STAGES, CaseResult, check_network
from kiln.fuzz.networks import NetworkSpec, build_module, random_network
from kiln.fuzz.runner import FuzzReport, fuzz, replay

__all__ = ["STAGES", "CaseResult", "FuzzReport", "NetworkSpec", "build_module",
           "check_network", "fuzz", "random_network", "replay"]
