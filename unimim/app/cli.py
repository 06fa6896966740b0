"""The ``unimim`` command.

    unimim pretrain RECIPE.yaml [key.sub=value ...]    train (resumes the run directory's checkpoint)
        [--deepspeed CONFIG.json]                      ... under DeepSpeed (= deepspeed.enabled=true
                                                       deepspeed.config=CONFIG.json); start it with a launcher
    unimim probe RUN_DIR [key.sub=value ...]           linear probe + kNN, pretrained vs random weights
    unimim finetune RUN_DIR [RECIPE.yaml] [key=value]  fine-tune the encoder on a labelled task, and the same
                                                       architecture from random init; RUN_DIR/finetune/<task>/
    unimim bench SUITE.yaml [key.sub=value ...]        pretrain every entry of a suite under one budget, probe and
        [--only NAME ...] [--compare A B]              fine-tune each vs random weights / from scratch / raw input;
                                                       out_dir/name/results.md (.csv, .json, plots); resumes
    unimim config RECIPE.yaml [key.sub=value ...]      print the resolved config (base: chains merged)
    unimim recipes                                     list the shipped recipes (RECIPE may be one of their names,
                                                       e.g. image/mae_fmnist_cpu, wherever a recipe path is taken)
    unimim reconstruct RUN_DIR [--images F ...]        MAE / SimMIM reconstruction picture (PNG)
    unimim export RUN_DIR --to hf|timm [--out DIR]     the encoder as a transformers / timm model (verified)
    unimim tokenizer train OUT INPUT... [options]      train a text tokenizer (OUT: *.json or *.model)
    unimim --version

Exit status: 0 done; 1 a run-time error (one line: non-finite loss, collapse, a full disk, a lost process, a run
directory in use); 2 a config or input error; 128 + N when signal N stopped a run after a checkpoint (143 SIGTERM,
130 SIGINT; the same command resumes), 130 too when a second SIGINT aborts it at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

import unimim
from unimim.config import ConfigError, to_dict

log = logging.getLogger("unimim")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from unimim.app.experiment import load_recipe
    from unimim.app.pretrain import pretrain

    overrides = list(args.overrides)
    if args.deepspeed is not None:  # before the user's overrides, so deepspeed.* on the command line still wins
        overrides = ["deepspeed.enabled=true", f"deepspeed.config={args.deepspeed}", *overrides]
    cfg = load_recipe(args.recipe, overrides)
    result = pretrain(cfg, progress=not args.no_progress)
    log.info("run directory: %s", result.run_dir)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from unimim.app.probe import probe_run

    result = probe_run(args.run_dir, args.overrides, progress=not args.no_progress)
    print(result["table"])
    log.info("wrote %s/probe.json", args.run_dir)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from unimim.app.finetune import finetune_run

    rest = list(args.overrides)
    recipe = rest.pop(0) if rest and "=" not in rest[0] else None  # a fine-tune recipe: a file or a shipped name
    result = finetune_run(args.run_dir, recipe, rest, progress=not args.no_progress)
    print(result["table"])
    if result["complete"]:
        log.info("wrote %s/finetune.json", result["task_dir"])
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from unimim.app.bench import bench_run, compare_run, load_suite

    suite = load_suite(args.suite, args.overrides)
    if args.compare:
        print(compare_run(suite, *args.compare))
        return 0
    results = bench_run(suite, only=args.only, progress=not args.no_progress)
    from unimim.app.bench import suite_dir

    print((suite_dir(suite) / "results.md").read_text(), end="")
    failed = [r["name"] for r in results["entries"] if r["status"] == "failed"]
    if failed:
        log.error("entries failed: %s (their errors are in the table; the same command runs them again)",
                  ", ".join(failed))
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from unimim.app.experiment import load_recipe

    print(yaml.safe_dump(to_dict(load_recipe(args.recipe, args.overrides)), sort_keys=False), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from unimim.app.experiment import ExperimentBase
    from unimim.app.recipes import list_recipes, recipes_table

    print(recipes_table(list_recipes(ExperimentBase.modality, ExperimentBase.objective)))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from unimim.app.reconstruct import reconstruct_run

    try:
        path = reconstruct_run(args.run_dir, images=args.images, num=args.num, out=args.out, seed=args.seed,
                               scale=args.scale)
    except ValueError as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s", path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unimim.app.export import export_run

    try:  # the library's own progress bars would interleave with the log lines
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    path = export_run(args.run_dir, args.to, args.out, hf_class=args.hf_class)
    log.info("wrote %s", path)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from itertools import chain

    from modalities.text.data.corpora import read_documents
    from modalities.text.data.tokenizer import TokenizerConfig, train_tokenizer

    try:
        cfg = TokenizerConfig(backend=args.backend, model_type=args.model_type, vocab_size=args.vocab_size,
                              min_frequency=args.min_frequency, max_chars=args.max_chars)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    docs = chain.from_iterable(read_documents(p, args.documents) for p in args.inputs)
    path = train_tokenizer(docs, cfg).save(args.out)
    log.info("saved %s", path)
    return 0


def _add_tokenizer_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="text tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a BPE/unigram tokenizer from text files or directories")
    t.add_argument("out", help="output file: *.json (bytelevel_bpe) or *.model (sentencepiece)")
    t.add_argument("inputs", nargs="+", help="text files or directories of text files")
    t.add_argument("--backend", choices=["bytelevel_bpe", "sentencepiece"], default="bytelevel_bpe")
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece model type")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--max-chars", type=int, default=None, help="read at most this many characters of text")
    t.add_argument("--documents", choices=["blank_line", "file"], default="blank_line",
                   help="documents are blank-line separated blocks, or whole files")
    t.set_defaults(func=cmd_tokenizer_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimim", description="data2vec-centred self-supervised pretraining")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"unimim {unimim.__version__}")
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
    p = sub.add_parser("finetune", help="fine-tune a run's encoder on a labelled task vs the same model from scratch")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="[RECIPE.yaml] key.sub=value",
                   help="a fine-tune recipe (finetune / task / train sections), then overrides "
                        "(e.g. finetune.epochs=5)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("bench", help="a benchmark suite: entries pretrained under one budget, each probed and "
                                     "fine-tuned against random weights, from scratch and the raw input")
    p.add_argument("suite", help="a suite file, or a shipped suite's name (bench/cross_modal_cpu)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the suite (e.g. budget.value=120)")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None, help="run only these entries")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two finished entries (paired intervals from the stored predictions); runs nothing")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("config", help="print the resolved config of a recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("recipes", help="list the shipped recipes: name, modality, objective, description")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("reconstruct", help="picture of a MAE / SimMIM run: original, masked, reconstruction, pasted")
    p.add_argument("run_dir")
    p.add_argument("--images", nargs="+", default=[], help="image files (default: the first --num test images)")
    p.add_argument("--num", type=int, default=8, help="test images to show when --images is not given")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/reconstruction.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of each panel")
    p.set_defaults(func=cmd_reconstruct)
    p = sub.add_parser("export", help="export a run's encoder as a transformers save_pretrained directory or a timm "
                                      "state dict, verified against the run")
    p.add_argument("run_dir")
    p.add_argument("--to", choices=["hf", "timm"], required=True)
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/export-<to>)")
    p.add_argument("--hf-class", default=None, help="transformers class to export as (default: the run's natural one; "
                                                    "e.g. BeitModel, Data2VecVisionModel, ViTMAEForPreTraining)")
    p.set_defaults(func=cmd_export)
    _add_tokenizer_parser(sub)
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
    from unimim.train.interrupt import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: the run saved its step and stopped
        log.warning("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted: aborted at once (nothing saved since the last checkpoint)")
        return 130
    except (ConfigError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    except (RuntimeError, ValueError) as e:  # collapse, non-finite loss, unreadable checkpoint, settings that do not
        # fit together (e.g. data2vec top_k above the encoder depth): a clear message, no traceback
        if args.verbose:
            raise
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
