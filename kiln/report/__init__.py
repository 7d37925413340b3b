"""Reports: Markdown tables and PNG plots (the writers every room uses)."""
