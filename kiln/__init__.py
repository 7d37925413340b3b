"""kiln: carry a trained neural network all the way to an accelerator."""
__version__ = "0.1.0"
