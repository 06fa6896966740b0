"""The checks every modality's ``hf_export`` starts with: which transformers class was asked for, and the settings
that class has no equivalent of (refused by name, never exported as something else)."""

from __future__ import annotations

from collections.abc import Iterable


def pick_hf_class(requested: str | None, default: str, classes: tuple[str, ...], modality: str) -> str:
    """``requested`` (or ``default`` when None); ValueError naming the classes a ``modality`` run exports as."""
    hf_class = requested or default
    if hf_class not in classes:
        raise ValueError(f"--hf-class {hf_class!r}: {'an' if modality[0] in 'aeiou' else 'a'} {modality} run exports "
                         f"as one of {list(classes)}")
    return hf_class


def refuse_settings(hf_class: str, checks: Iterable[tuple[bool, str]], layout: str) -> None:
    """ValueError for the first ``(bad, setting)`` with ``bad`` true: ``setting`` has no ``hf_class`` equivalent
    (``layout`` says what the class is)."""
    for bad, setting in checks:
        if bad:
            raise ValueError(f"{setting} has no {hf_class} equivalent ({layout})")
