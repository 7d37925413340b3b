"""BARVINN's matrix-vector unit: a bit-accurate model, lowering, configuration code and
bit-serial images (see ``kiln mvu --help``)."""
