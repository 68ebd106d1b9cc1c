"""``heterag train-image-encoder``: options and the run (the training itself is
:mod:`heterag.training.image_encoder`).

Also runnable alone: ``python -m heterag.cli.train_image_encoder --synthetic 20000 --procedural 4000
--epochs 4 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from heterag.training.image_encoder import TrainConfig, default_train_out, train_image_encoder


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heterag train-image-encoder`` (the defaults reproduce the shipped weights)."""
    d = TrainConfig()
    parser.add_argument("--out", default=None, help="folder for the weights and config (default: $HETERAG_HOME/image_encoders/"
                        "default; use it with --image-encoder default:DIR). Never the installed package")
    parser.add_argument("--synthetic", type=int, default=d.synthetic, help=f"synthetic training scenes (default {d.synthetic})")
    parser.add_argument("--scene-seed", type=int, default=d.scene_seed, help="seed of the synthetic scenes (default 0)")
    parser.add_argument("--procedural", type=int, default=d.procedural, help=f"caption-less procedural images (default {d.procedural})")
    parser.add_argument("--folder", action="append", default=[], metavar="DIR",
                        help="also train on this captioned image folder or image layout (repeatable)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the data (default {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step, two views each (default {d.batch_size})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr})")
    parser.add_argument("--instance-weight", type=float, default=d.instance_weight,
                        help=f"weight of the instance-discrimination loss (default {d.instance_weight})")
    parser.add_argument("--seed", type=int, default=d.seed, help="initialisation, data order and augmentation seed (default 0)")
    parser.add_argument("--threads", type=int, default=d.threads, help=f"torch CPU threads (default {d.threads})")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--validation-scenes", type=int, default=d.validation_scenes,
                        help=f"held-out scenes checked after training (default {d.validation_scenes}; 0 skips)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        out_dir=Path(args.out) if args.out else default_train_out(), synthetic=args.synthetic, scene_seed=args.scene_seed, procedural=args.procedural,
        folders=tuple(Path(f) for f in args.folder), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        instance_weight=args.instance_weight, seed=args.seed, threads=args.threads, max_steps=args.max_steps,
        validation_scenes=args.validation_scenes,
    )


def run_train(args: argparse.Namespace) -> int:
    """Run ``heterag train-image-encoder`` from parsed arguments; prints a summary, returns the exit status."""
    config = config_from_args(args)
    result = train_image_encoder(config)
    summary = {
        "weights": str(result.weights_path), "config": str(result.config_path), "steps": result.steps,
        "seconds": round(result.seconds, 1), "images": result.n_images, "first_loss": round(result.first_loss, 4),
        "final_loss": round(result.final_loss, 4), **{k: round(v, 4) for k, v in result.validation.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heterag.cli.train_image_encoder", description="Train the default image encoder.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_train(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
