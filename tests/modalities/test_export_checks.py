"""The checks every modality's hf_export starts with, and the speech / text refusals that go through them."""

from types import SimpleNamespace

import pytest

from modalities.export_checks import pick_hf_class, refuse_settings
from modalities.speech.interop.export import hf_export as speech_export
from modalities.text.interop.export import hf_export as text_export


def test_pick_hf_class_defaults_and_names_the_choices():
    assert pick_hf_class(None, "A", ("A", "B"), "image") == "A"
    assert pick_hf_class("B", "A", ("A", "B"), "image") == "B"
    with pytest.raises(ValueError, match=r"^--hf-class 'C': an image run exports as one of \['A', 'B'\]$"):
        pick_hf_class("C", "A", ("A", "B"), "image")
    with pytest.raises(ValueError, match="a text run exports"):
        pick_hf_class("C", "A", ("A",), "text")


def test_refuse_settings_names_the_first_bad_setting():
    refuse_settings("M", [(False, "x"), (False, "y")], "layout")  # nothing bad: no error
    with pytest.raises(ValueError, match=r"^y: 1 has no M equivalent \(layout\)$"):
        refuse_settings("M", [(False, "x"), (True, "y: 1"), (True, "z: 2")], "layout")


def _encoder(**over):
    e = dict(norm_first=False, final_norm=False, qkv_bias=True, layer_scale_init=0.0)
    return SimpleNamespace(**(e | over))


@pytest.mark.parametrize("export, adapter, setting", [
    (speech_export, SimpleNamespace(conv_norm="group"), "adapter.conv_norm: group"),
    (speech_export, SimpleNamespace(conv_norm="layer"), "encoder.norm_first: true"),
    (text_export, SimpleNamespace(), "encoder.norm_first: true"),
])
def test_speech_and_text_refuse_what_their_class_lacks(export, adapter, setting):
    over = {} if setting.startswith("adapter") else dict(norm_first=True)
    cfg = SimpleNamespace(adapter=adapter, encoder=_encoder(**over))
    with pytest.raises(ValueError, match=f"^{setting}.* has no Data2Vec(Audio|Text)Model equivalent"):
        export(None, None, cfg)
    with pytest.raises(ValueError, match="exports as one of"):
        export(None, None, cfg, hf_class="ViTModel")
