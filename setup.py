"""Packages and package data (everything else is in pyproject.toml).

The top-level ``recipes/`` directory stays where it is in the source tree and is shipped inside the package as
``unimim/recipes/`` (``package_dir`` maps it; one package per subdirectory, so that setuptools installs every file
as package data), which makes the recipes addressable by name from a wheel as from a checkout
(``unimim/app/recipes.py``).
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

RECIPE_FILES = ["*.yaml", "*.yml", "*.json", "*.sh", "*.sbatch"]
recipe_dirs = sorted({p.parent for p in Path("recipes").rglob("*") if p.is_file()}
                     | {Path("recipes")})
recipe_packages = {".".join(("unimim", *d.parts)): d.as_posix() for d in recipe_dirs}

setup(
    packages=[*find_namespace_packages(include=["unimim", "unimim.*", "modalities", "modalities.*"],
                                       exclude=["*.__pycache__"]), *recipe_packages],
    package_dir=recipe_packages,
    package_data={
        "modalities.text.data": ["tiny/*.txt", "tiny/*.json", "tiny/wordnet/*"],
        **{name: RECIPE_FILES for name in recipe_packages},
    },
)
