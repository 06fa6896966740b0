"""The ``unimim`` command.

    unimim pretrain RECIPE.yaml [key.sub=value ...]    train (resumes the run directory's checkpoint)
        [--deepspeed CONFIG.json]                      ... under DeepSpeed (= deepspeed.enabled=true
                                                       deepspeed.config=CONFIG.json); start it with a launcher
    unimim probe RUN_DIR [key.sub=value ...]           linear probe + kNN, pretrained vs random weights
    unimim config RECIPE.yaml [key.sub=value ...]      print the resolved config
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from unimim.config import ConfigError, to_dict

log = logging.getLogger("unimim")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from unimim.experiment import load_recipe
    from unimim.train.run import pretrain

    overrides = list(args.overrides)
    if args.deepspeed is not None:  # before the user's overrides, so deepspeed.* on the command line still wins
        overrides = ["deepspeed.enabled=true", f"deepspeed.config={args.deepspeed}", *overrides]
    cfg = load_recipe(args.recipe, overrides)
    result = pretrain(cfg, progress=not args.no_progress)
    log.info("run directory: %s", result.run_dir)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from unimim.eval.run import probe_run

    result = probe_run(args.run_dir, args.overrides, progress=not args.no_progress)
    print(result["table"])
    log.info("wrote %s/probe.json", args.run_dir)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from unimim.experiment import load_recipe

    print(yaml.safe_dump(to_dict(load_recipe(args.recipe, args.overrides)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimim", description="data2vec-centred self-supervised pretraining")
    parser.add_argument("-v", "--verbose", action="store_true")
    # launchers that pass --local_rank=N (the process reads LOCAL_RANK from the environment instead)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain from a recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied last")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--deepspeed", metavar="CONFIG.json", default=None,
                   help="train under DeepSpeed; the JSON overrides the config generated from the recipe")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("probe", help="linear probe + kNN of a run's encoder vs random weights")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config (e.g. probe.epochs=50)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("config", help="print the resolved config of a recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`pretrain R.yaml --deepspeed ds.json train.steps=10`)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    except RuntimeError as e:  # collapse, non-finite loss, unreadable checkpoint: clear message, no traceback
        if args.verbose:
            raise
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
