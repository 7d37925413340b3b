"""Multi-core, layer-fused scheduling: systems of cores and links (Stream's YAML), tiles with
exact dependencies, an event-driven scheduler, a validator, allocation search and views."""
