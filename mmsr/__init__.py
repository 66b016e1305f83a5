"""mmsr: ID-agnostic multi-modal sequential recommenders.

Kept import-light on purpose: `import mmsr` must not pull in torch, so that the CLI's
`--help` and the data commands start fast.
"""

__version__ = "0.1.0"
