"""The shipped recipes, addressable by name: ``image/mae_fmnist_cpu`` is ``recipes/image/mae_fmnist_cpu.yaml``.

The top-level ``recipes/`` directory of the source tree is package data: a wheel installs it as ``unimim/recipes/``
(the mapping is in ``setup.py``); a source checkout or an editable install reads it in place. A recipe's name is
its path under that directory without ``.yaml``. Files under a directory (or with a name) starting with ``_``, such
as ``image/_base/fmnist_cpu.yaml``, are partial recipes that others extend with ``base:``: found by name, not listed
by ``unimim recipes``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import unimim
from unimim.config import ConfigError, read_yaml

SUFFIXES = (".yaml", ".yml")
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bcf)\.\s")  # not "et al. ", "e.g. "


def recipes_root() -> Path:
    """The directory of the shipped recipes: ``unimim/recipes`` in a wheel, else ``recipes/`` beside the package."""
    package = Path(unimim.__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no recipes directory found (looked in {package / 'recipes'} and {package.parent / 'recipes'})")


def _is_partial(name: str) -> bool:
    return any(part.startswith("_") for part in PurePosixPath(name).parts)


def recipe_names(*, partial: bool = False) -> list[str]:
    """The names of the shipped recipes, sorted; ``partial=True`` includes the bases (``_``-prefixed paths)."""
    root = recipes_root()
    names = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*")
                   if p.suffix in SUFFIXES and p.is_file())
    return names if partial else [n for n in names if not _is_partial(n)]


def _close_matches(name: str, names: list[str]) -> list[str]:
    stem = PurePosixPath(name).name
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    same_stem = [n for n in names if stem and stem in PurePosixPath(n).name]
    return list(dict.fromkeys(near + same_stem))[:8]


def find_recipe(name: str) -> Path:
    """The file of recipe ``name`` (``image/mae_fmnist_cpu``; a ``.yaml`` suffix is accepted). A name that does not
    exist is a :class:`ConfigError` listing the close matches."""
    root = recipes_root()
    clean = name[: -len(Path(name).suffix)] if name.endswith(SUFFIXES) else name
    for suffix in SUFFIXES:
        path = root / f"{clean}{suffix}"
        if ".." not in PurePosixPath(clean).parts and path.is_file():
            return path
    close = _close_matches(clean, recipe_names(partial=True))
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"recipe not found: {name} (neither a file nor a recipe name{hint}; `unimim recipes` lists "
                      "them)")


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe argument as the CLI takes it: an existing file path, else a recipe name (:func:`find_recipe`)."""
    path = Path(recipe)
    if path.is_file():
        return path
    return find_recipe(str(recipe))


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    modality: str
    objective: str
    description: str  # the first sentence of the recipe's leading comment ("" when it has none)
    path: Path


def _leading_comment(path: Path, width: int = 100) -> str:
    """The first sentence of the comment block a recipe starts with, on one line of at most ``width`` characters."""
    lines = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        lines.append(stripped.lstrip("#").strip())
    text = " ".join(t for t in lines if t)
    end = _SENTENCE_END.search(text)
    sentence = text[: end.start() + 1] if end else text
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."


FINETUNE = "finetune"  # the objective column of a fine-tune recipe
SUITES = "bench"       # the folder of the benchmark suites (``unimim bench``)


def is_suite(name: str) -> bool:
    """``bench/*``: a benchmark suite (``unimim bench``), not a recipe of one run."""
    return PurePosixPath(name).parts[0] == SUITES


def is_finetune_recipe(name: str) -> bool:
    """``<modality>/finetune_*``: a recipe that ``unimim finetune`` applies over a pretrained run of its modality."""
    parts = PurePosixPath(name).parts
    return len(parts) == 2 and parts[1].startswith(f"{FINETUNE}_")


def list_recipes(default_modality: str = "image", default_objective: str = "data2vec") -> list[RecipeInfo]:
    """The shipped recipes (bases left out) with their modality and objective (after ``base:`` merging; the
    defaults when a recipe names none: the experiment config's) and the first sentence of their leading comment.
    A fine-tune recipe (``<modality>/finetune_*``) names no run: its modality is its folder and its objective
    column reads ``finetune``; a suite (``bench/*``) reads ``-`` and ``suite``."""
    out = []
    for name in recipe_names():
        path = find_recipe(name)
        raw = read_yaml(path, find_recipe)
        if is_suite(name):
            modality, objective = "-", "suite"
        elif is_finetune_recipe(name):
            modality, objective = PurePosixPath(name).parts[0], FINETUNE
        else:
            modality, objective = str(raw.get("modality", default_modality)), str(raw.get("objective",
                                                                                          default_objective))
        out.append(RecipeInfo(name=name, modality=modality, objective=objective,
                              description=_leading_comment(path), path=path))
    return out


def recipes_table(infos: list[RecipeInfo]) -> str:
    """Recipes as a plain-text table: name, modality, objective, description."""
    rows = [("name", "modality", "objective", "description")] + [
        (i.name, i.modality, i.objective, i.description) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows)
