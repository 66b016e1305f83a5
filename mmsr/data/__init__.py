"""Canonical datasets, the demo generator, importers and the paper's split protocol."""
