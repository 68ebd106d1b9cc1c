"""The ``heterag`` command line: :func:`main` parses and runs one command
(:mod:`~heterag.cli.commands`); ``heterag tune`` (:mod:`~heterag.cli.tune`) and ``heterag
train-image-encoder`` (:mod:`~heterag.cli.train_image_encoder`) are kept apart so that other commands
start without torch. Packages above heterag add subcommands through the ``heterag.commands``
entry-point group (the sandbox adds ``heterag sandbox``)."""

from heterag.cli.commands import main

__all__ = ["main"]
