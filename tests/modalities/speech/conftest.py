"""The tiny generated speech data set of :mod:`modalities.speech.data.tiny`, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.speech.data.tiny import write_tiny_speech


@pytest.fixture(scope="session")
def tiny_speech(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_speech(tmp_path_factory.mktemp("speech"))
