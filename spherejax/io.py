"""Saving and loading fields and fitted models: a one-line JSON header (format,
versions, tree structure, leaf shapes, hyperparameters, checksum) followed by the
serialised leaves."""

from ._io import (
    field_from_hyperparams as field_from_hyperparams,
    field_hyperparams as field_hyperparams,
    load as load,
    load_header as load_header,
    save as save,
)
