"""The ``heterag`` command line (:mod:`~heterag.cli.main`), with ``heterag tune``
(:mod:`~heterag.cli.tune`) and ``heterag train-image-encoder``
(:mod:`~heterag.cli.train_image_encoder`) kept apart so that other commands start without torch.
Other packages add subcommands through the ``heterag.commands`` entry-point group."""
