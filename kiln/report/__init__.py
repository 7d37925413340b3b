"""Reports: Markdown tables, PNG plots, and the experiments that produce them."""
