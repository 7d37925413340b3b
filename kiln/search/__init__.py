"""Search: mixed precision, channel multipliers (NAS), joint pruning + quantization, with
accuracy constraints and hardware-aware objectives, as resumable Optuna studies."""

from kiln.search.config import SearchConfig, load_config, parse_config
from kiln.search.objectives import Evaluator
from kiln.search.results import SearchResult, collect
from kiln.search.spaces import ChannelSpace, MixedPrecisionSpace, PruneQuantSpace, make_space
from kiln.search.study import run_search
from kiln.study_storage import StorageError

__all__ = [
    "ChannelSpace",
    "Evaluator",
    "MixedPrecisionSpace",
    "PruneQuantSpace",
    "SearchConfig",
    "SearchResult",
    "StorageError",
    "collect",
    "load_config",
    "make_space",
    "parse_config",
    "run_search",
]
