"""Experiments that sweep compression methods over a model and write Markdown tables and
PNG plots (``kiln compress-experiment``)."""
