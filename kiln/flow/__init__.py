"""``kiln flow``: one command from a trained model to verified hardware and a report.

>>> from kiln.flow import load_flow_config, run_flow, write_report   # doctest: +SKIP
>>> records = run_flow("convnet", load_flow_config(None), "out/flow")
>>> write_report("convnet", records, Path("out/flow"))
"""

from kiln.flow.config import STAGES, FlowConfig, load_flow_config, parse_flow_config
from kiln.flow.report import summary, write_report
from kiln.flow.runner import FlowError, StageRecord, run_flow

__all__ = ["STAGES", "FlowConfig", "FlowError", "StageRecord", "load_flow_config",
           "parse_flow_config", "run_flow", "summary", "write_report"]
