"""The README's Python API examples run as written: the code blocks are read from README.md (section "Python API"),
so the manual and this test cannot drift apart. Each block runs in its own namespace; the checks are on what it
leaves there, against values worked out from its settings."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("\n## Python API\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 2, f"expected the API example and the standalone example, found {len(blocks)} blocks"
    return blocks


def _run(code: str, tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # nothing the example might write lands in the checkout
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README}:python-api", "exec"), namespace)  # noqa: S102 (the project's own README)
    return namespace


def test_api_example_trains_and_takes_the_encoder_out(tmp_path, monkeypatch):
    ns = _run(_api_blocks()[0], tmp_path, monkeypatch)
    model, batch, features, backbone = ns["model"], ns["batch"], ns["features"], ns["backbone"]
    # 16-px images in 4-px patches: a 4 x 4 grid + cls = 17 tokens of width 32, for the batch of 8
    assert features.shape == (8, 17, 32)
    assert torch.isfinite(ns["out"].loss)
    assert model.num_updates == 3  # three teacher updates, the last with step 3
    # the encoder taken out gives the objective's own features: adapter.embed -> encoder
    with torch.no_grad():
        again = backbone["encoder"](backbone["adapter"].embed(batch.inputs)).x
        assert torch.allclose(again, model.encode(batch.inputs))
    # the loop trained: the student moved away from the teacher it was copied from (the EMA lags behind)
    student = dict(backbone.named_parameters())
    teacher = dict(model.teacher.module.named_parameters())
    assert set(student) == set(teacher)
    assert any(not torch.equal(student[k].float(), teacher[k]) for k in student)


def test_standalone_pieces_example(tmp_path, monkeypatch):
    ns = _run(_api_blocks()[1], tmp_path, monkeypatch)
    # the linear schedule after 3 of 1000 anneal steps: 0.999 + (0.9999 - 0.999) * 3 / 1000
    assert abs(ns["tau"] - (0.999 + 0.0009 * 3 / 1000)) < 1e-12
    mask, y = ns["mask"], ns["y"]
    assert mask.shape == (4, 16) and mask.dtype == torch.bool
    assert (mask.sum(1) == 12).all()  # inverse block: exactly 16 - int(16 * 0.25) = 12 of 16 masked per image
    # instance-normed targets averaged over 2 layers: each layer has zero mean over time per channel, so their mean
    # does too
    assert y.shape == (4, 16, 32) and torch.allclose(y.mean(dim=1), torch.zeros(4, 32), atol=1e-5)
    assert torch.isfinite(ns["loss"])
