"""Fine-tuning model parts against independent references: layer-wise lr decay against hand-computed multipliers
(MAE ``util/lr_decay.py`` semantics), the classification model against timm's ``VisionTransformer`` with the same
weights (loaded through the converter), greedy CTC decoding / error rates (``unimim.eval.ctc``) against hand-worked
examples, and freezing (parameters equal while frozen, different once trained)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from modalities.image.interop.convert_timm import load_timm_vit
from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from unimim.core.batch import Batch
from unimim.eval.ctc import edit_distance, error_rate, greedy_decode
from unimim.eval.finetune import FinetuneConfig, FinetuneModel, build_layer_decay_optimizer, param_groups_lrd
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.objectives.base import encode_with
from unimim.train.optim import OptimConfig, set_hyperparameters

timm = pytest.importorskip("timm")


def _backbone(depth: int, final_norm: bool = True) -> nn.ModuleDict:
    enc = EncoderConfig(dim=16, depth=depth, num_heads=2, final_norm=final_norm)
    adapter = ImageAdapter(ImageAdapterConfig(image_size=8, patch_size=4, in_chans=1), dim=16, num_heads=2)
    return nn.ModuleDict({"adapter": adapter, "encoder": TransformerEncoder(enc)})


def _model(backbone: nn.ModuleDict, depth: int, **cfg) -> FinetuneModel:
    return FinetuneModel(backbone, partial(encode_with, backbone["adapter"], backbone["encoder"]),
                         kind="classification", num_classes=3, dim=backbone["encoder"].cfg.dim,
                         num_prefix_tokens=1, num_layers=depth, cfg=FinetuneConfig(**cfg))


# layer 0 = adapter (patch embedding, cls token, positions), i + 1 = block i, L + 1 = final norm, fc_norm, head;
# scale = decay^(L + 1 - layer): worked out by hand
HAND = {
    (2, 0.5): {0: 0.125, 1: 0.25, 2: 0.5, 3: 1.0},
    (3, 0.65): {0: 0.17850625, 1: 0.274625, 2: 0.4225, 3: 0.65, 4: 1.0},
}


@pytest.mark.parametrize(("depth", "decay"), sorted(HAND))
def test_layer_decay_assigns_the_published_multipliers(depth, decay):
    model = _model(_backbone(depth), depth, layer_decay=decay)

    def expected_layer(name: str) -> int:
        if name.startswith("backbone.adapter."):
            return 0
        for i in range(depth):
            if name.startswith(f"backbone.encoder.blocks.{i}."):
                return i + 1
        assert name.startswith(("backbone.encoder.norm.", "fc_norm.", "head.")), name
        return depth + 1

    groups = param_groups_lrd(model.named_parameters(), depth, layer_decay=decay, weight_decay=0.05)
    seen = 0
    for g in groups:
        for name in g["names"]:
            seen += 1
            assert g["lr_scale"] == pytest.approx(HAND[(depth, decay)][expected_layer(name)]), name
            p = dict(model.named_parameters())[name]
            decayed = p.ndim >= 2 and not name.endswith(("cls_token", "mask_token", "pos_embed"))
            assert g["weight_decay"] == (0.05 if decayed else 0.0), name  # no decay: biases, norms, tokens, positions
    assert seen == sum(1 for _ in model.parameters())
    # the engine's per-step lr is lr x lr_scale
    opt = build_layer_decay_optimizer(model, OptimConfig(weight_decay=0.05), depth=depth, layer_decay=decay)
    set_hyperparameters(opt, 1e-3, None)
    head = next(g for g in opt.param_groups if any(p is model.head.weight for p in g["params"]))
    patch = next(g for g in opt.param_groups
                 if any(p is model.backbone["adapter"].patch_embed.weight for p in g["params"]))
    assert head["lr"] == pytest.approx(1e-3) and patch["lr"] == pytest.approx(1e-3 * HAND[(depth, decay)][0])


def test_layer_decay_without_blocks_is_refused_and_one_rate_works():
    stages = nn.ModuleDict({"swin": nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(4, 4)])})})
    with pytest.raises(ValueError, match="finetune.layer_decay=1.0"):
        build_layer_decay_optimizer(stages, OptimConfig(), depth=0, layer_decay=0.65)
    opt = build_layer_decay_optimizer(stages, OptimConfig(), depth=0, layer_decay=1.0)
    assert {g["lr_scale"] for g in opt.param_groups} == {1.0}


def test_layer_decay_of_a_swin_counts_the_blocks_across_its_stages():
    """SimMIM's Swin (timm names): patch embedding and mask token 0, block j of stage s sum(depths[:s]) + j + 1, the
    patch merging opening stage 1 with the last block of stage 0, final norm and head L + 1; by hand for depths
    (1, 2) and decay 0.5: scales 0.5^(4 - layer)."""
    from modalities.image.model.swin import SwinBackbone, SwinConfig

    swin = SwinBackbone(SwinConfig(embed_dim=8, depths=(1, 2), num_heads=(1, 2), window_size=2), image_size=8,
                        patch_size=2, in_chans=1)
    model = nn.ModuleDict({"backbone": nn.ModuleDict({"swin": swin}), "head": nn.Linear(16, 3)})

    def expected_layer(name: str) -> int:
        stem = name.removeprefix("backbone.swin.").removeprefix("model.")
        if stem.startswith("patch_embed.") or stem == "mask_token":
            return 0
        if stem.startswith(("layers.0.blocks.0.", "layers.1.downsample.")):
            return 1
        if stem.startswith("layers.1.blocks.0."):
            return 2
        if stem.startswith("layers.1.blocks.1."):
            return 3
        assert stem.startswith(("norm.", "head.")), name
        return 4

    opt = build_layer_decay_optimizer(model, OptimConfig(), depth=0, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for g in opt.param_groups:
        for p in g["params"]:
            seen += 1
            assert g["lr_scale"] == pytest.approx(0.5 ** (4 - expected_layer(names[id(p)]))), names[id(p)]
    assert seen == sum(1 for _ in model.parameters())
    assert any(".layers.1.downsample." in n for n in names.values())  # the merge layer is there to be placed


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_classification_logits_equal_timm_vit(pool):
    """Same weights, same pooling, fc_norm and head: the logits of timm's ViT (avg: mean of patch tokens + fc_norm,
    no final norm; token: final norm + cls token)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2,
                            num_heads=2, global_pool=pool).eval()
    with torch.no_grad():  # non-trivial norms and head
        for name, p in ref.named_parameters():
            if "norm" in name or name.startswith("head"):
                p.add_(0.3 * torch.randn_like(p))
    backbone = load_timm_vit(ref)
    if pool == "avg":  # a pretrained encoder keeps its final norm: fine-tuning with fc_norm must skip it
        full = nn.ModuleDict({"adapter": backbone["adapter"],
                              "encoder": TransformerEncoder(EncoderConfig(**{**vars(backbone["encoder"].cfg),
                                                                            "final_norm": True}))})
        missing = full["encoder"].load_state_dict(backbone["encoder"].state_dict(), strict=False).missing_keys
        assert missing == ["norm.weight", "norm.bias"]
        backbone = full
    model = FinetuneModel(backbone, partial(encode_with, backbone["adapter"], backbone["encoder"]),
                          kind="classification", num_classes=5, dim=32, num_prefix_tokens=1, num_layers=2,
                          cfg=FinetuneConfig(pool="mean" if pool == "avg" else "cls", fc_norm=pool == "avg"))
    state = {"head.weight": ref.head.weight, "head.bias": ref.head.bias}
    if pool == "avg":
        state |= {"fc_norm.weight": ref.fc_norm.weight, "fc_norm.bias": ref.fc_norm.bias}
    model.load_state_dict(state, strict=False)
    model.eval()
    x = torch.randn(3, 1, 16, 16)
    logits, _ = model.logits(Batch(inputs=x, labels=torch.zeros(3, dtype=torch.long)))
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_head_init_follows_the_references():
    torch.manual_seed(0)
    mae = _model(_backbone(2), 2, head_init_std=2e-5)
    beit = _model(_backbone(2), 2, head_init_std=0.02, head_init_scale=0.001)
    for m in (mae, beit):
        assert float(m.head.weight.detach().std()) == pytest.approx(2e-5, rel=0.35)
        assert float(m.head.bias.detach().abs().max()) == 0.0


def test_mixup_needs_even_batches_and_images():
    with pytest.raises(ValueError, match="batch_size must be even"):
        FinetuneConfig(mixup=0.8, batch_size=5)
    model = _model(_backbone(2), 2, mixup=0.8, cutmix=1.0).train()
    out = model(Batch(inputs=torch.randn(4, 1, 8, 8), labels=torch.tensor([0, 1, 2, 0])))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone["encoder"].blocks[0].attn.qkv.weight.grad is not None


def test_ctc_greedy_decode_and_error_rate():
    # frames: a a blank a b b (blank = 0) -> [a, a, b]; with 4 valid frames -> [a, a]
    ids = torch.tensor([[1, 1, 0, 1, 2, 2]])
    logits = torch.nn.functional.one_hot(ids, 3).float()
    assert greedy_decode(logits) == [[1, 1, 2]]
    assert greedy_decode(logits, torch.tensor([4])) == [[1, 1]]
    # kitten -> sitting: 3 edits over 6 reference symbols; plus an exact match of 2
    assert error_rate([list("kitten"), [1, 2]], [list("sitting"), [1, 2]]) == (3, 8)


def _ctc_brute_force(log_probs: torch.Tensor, target: list[int]) -> float:
    """-log sum over every frame labelling that collapses (repeats merged, blanks 0 dropped) to ``target``, divided
    by the target length: (T, V) log-probabilities of one example, enumerated path by path."""
    import itertools

    t, v = log_probs.shape
    total = []
    for path in itertools.product(range(v), repeat=t):
        out, prev = [], None
        for s in path:
            if s != prev and s != 0:
                out.append(s)
            prev = s
        if out == target:
            total.append(sum(float(log_probs[i, s]) for i, s in enumerate(path)))
    return -float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0)) / len(target)


def test_ctc_head_loss_lengths_and_decoding():
    """Per-token head on the 4 patch tokens; example 1 has 2 valid frames (token padding) and a padded target:
    the loss equals the enumerated CTC probability of each example, averaged."""
    from unimim.core.batch import LABEL_PAD
    from unimim.eval.finetune import evaluate

    torch.manual_seed(0)
    backbone = _backbone(2)

    def encode(x, padding_mask=None, layers=None):  # images: the padding mask is the task's frame padding only
        return encode_with(backbone["adapter"], backbone["encoder"], x, None, layers)

    def token_padding(pm, n):  # (B, 4) input padding -> (B, n) token padding
        return pm[:, :n]

    model = FinetuneModel(backbone, encode, kind="ctc", num_classes=3, dim=16, num_prefix_tokens=1, num_layers=2,
                          cfg=FinetuneConfig(head_init_std=1.0), token_padding=token_padding).eval()
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    labels = torch.tensor([[1, 2], [2, LABEL_PAD]])
    batch = Batch(inputs=torch.randn(2, 1, 8, 8), padding_mask=pad, labels=labels)
    logits, lengths = model.logits(batch)
    assert logits.shape == (2, 4, 3) and lengths.tolist() == [4, 2]
    lp = torch.log_softmax(logits.detach().double(), dim=-1)
    expected = (_ctc_brute_force(lp[0], [1, 2]) + _ctc_brute_force(lp[1, :2], [2])) / 2
    assert float(model(batch).loss.detach()) == pytest.approx(expected, rel=1e-4)
    # vocabulary: blank, "|", "A": targets "| A" -> "A" (one word, one character), "A" -> "A"
    out = evaluate(model, [batch], device=torch.device("cpu"), vocab=("<blank>", "|", "A"), progress=False)
    symbols = {1: " ", 2: "A"}
    hyps = [" ".join("".join(symbols[i] for i in h).split()) for h in greedy_decode(logits, lengths)]
    assert out["labels"] == ["A", "A"] and out["predictions"] == hyps
    word_errors = [edit_distance(["A"], h.split()) for h in hyps]
    char_errors = [edit_distance(["A"], list(h)) for h in hyps]
    assert out["example_word_errors"] == word_errors and out["words"] == 2
    assert out["wer"] == pytest.approx(sum(word_errors) / 2) and out["cer"] == pytest.approx(sum(char_errors) / 2)


def test_fine_tuning_trains_the_backbone_and_the_head_through_the_engine():
    """Dark vs bright images: 30 steps of the engine with layer-decay groups learn the task, and every block moved
    (the backbone is trained, at its decayed rate)."""
    import numpy as np

    from unimim.train.engine import SingleProcessEngine

    torch.manual_seed(0)
    depth = 2
    model = _model(_backbone(depth), depth, layer_decay=0.75, drop_path=0.0, label_smoothing=0.0)
    opt = build_layer_decay_optimizer(model, OptimConfig(weight_decay=0.05), depth=depth, layer_decay=0.75)
    engine = SingleProcessEngine(model, opt, np.full(30, 3e-3), device=torch.device("cpu"), precision="fp32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    labels = torch.arange(32) % 2
    inputs = torch.randn(32, 1, 8, 8) * 0.5 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    batch = Batch(inputs=inputs, labels=labels)
    model.train()
    losses = []
    for step in range(30):
        out = engine.model(batch)
        engine.backward(out.loss)
        engine.step(step)
        losses.append(float(out.loss.detach()))
    model.eval()
    logits, _ = model.logits(batch)
    assert losses[-1] < 0.3 < 0.6 < losses[0] and bool((logits.argmax(-1) == labels).all())
    for i in range(depth):
        w = f"backbone.encoder.blocks.{i}.attn.qkv.weight"
        assert not torch.equal(before[w], dict(model.named_parameters())[w]), w


def _train(model: FinetuneModel, steps: int, depth: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` optimizer steps of the engine on a fixed batch; the parameters after each step."""
    import numpy as np

    from unimim.train.engine import SingleProcessEngine

    opt = build_layer_decay_optimizer(model, OptimConfig(weight_decay=0.05), depth=depth, layer_decay=1.0)
    engine = SingleProcessEngine(model, opt, np.full(steps, 1e-2), device=torch.device("cpu"), precision="fp32")
    labels = torch.arange(8) % 3
    batch = Batch(inputs=torch.randn(8, 1, 8, 8), labels=labels)
    model.train()
    after = []
    for step in range(steps):
        engine.backward(engine.model(batch).loss)
        engine.step(step)
        model.update_teacher(step + 1)
        after.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return after


def test_frozen_prefixes_never_train_and_are_not_in_the_optimizer():
    torch.manual_seed(0)
    backbone = _backbone(2)
    model = FinetuneModel(backbone, partial(encode_with, backbone["adapter"], backbone["encoder"]),
                          kind="classification", num_classes=3, dim=16, num_prefix_tokens=1, num_layers=2,
                          cfg=FinetuneConfig(drop_path=0.0, head_init_std=0.02, fc_norm=False), frozen=("adapter.",))
    opt = build_layer_decay_optimizer(model, OptimConfig(), depth=2, layer_decay=0.65)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = {n for n, p in model.named_parameters() if n.startswith("backbone.adapter.")}
    assert frozen and all(id(p) not in in_opt for n, p in model.named_parameters() if n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    last = _train(model, 3, 2)[-1]
    for n in before:
        assert torch.equal(before[n], last[n]) == (n in frozen), n
    with pytest.raises(ValueError, match=r"match no parameter of the backbone"):
        FinetuneModel(backbone, partial(encode_with, backbone["adapter"], backbone["encoder"]),
                      kind="classification", num_classes=3, dim=16, num_prefix_tokens=1, num_layers=2,
                      cfg=FinetuneConfig(), frozen=("adapter.feature_encoder.",))


def test_freeze_encoder_steps_train_only_the_head_then_everything():
    torch.manual_seed(0)
    backbone = _backbone(2)
    model = FinetuneModel(backbone, partial(encode_with, backbone["adapter"], backbone["encoder"]),
                          kind="classification", num_classes=3, dim=16, num_prefix_tokens=1, num_layers=2,
                          cfg=FinetuneConfig(drop_path=0.0, head_init_std=0.02), freeze_encoder_steps=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = _train(model, 3, 2)
    head = ("head.", "fc_norm.")
    for n in before:  # steps 1 and 2: only the head (and fc_norm) moved; step 3: the backbone too
        assert torch.equal(before[n], after[1][n]) != n.startswith(head), n
        if n.startswith("backbone.encoder.blocks."):
            assert not torch.equal(after[1][n], after[2][n]), n
    assert int(model.state_dict()["steps_done"]) == 3 and not model.encoder_frozen


def test_compare_inits_says_which_direction_is_better():
    from unimim.eval.finetune import compare_inits

    def ctc(word_errors: list[int]) -> dict:
        return {"labels": ["A B"] * len(word_errors), "example_word_errors": word_errors,
                "example_words": [2] * len(word_errors), "example_char_errors": word_errors,
                "example_chars": [3] * len(word_errors)}

    # pretrained: 0 word errors on 40 two-word utterances, random: 1 each -> WER 0 vs 0.5, lower is better
    d = compare_inits(ctc([0] * 40), ctc([1] * 40))
    assert d["metric"] == "wer" and d["better"] == "lower" and d["diff"] == pytest.approx(-0.5)
    assert d["better_init"] == "pretrained" and d["cer"]["diff"] == pytest.approx(-40 / 120)
    assert compare_inits(ctc([1] * 40), ctc([0] * 40))["better_init"] == "random"
    assert compare_inits(ctc([0, 1] * 20), ctc([1, 0] * 20))["better_init"] == "neither"
    acc = compare_inits({"correct": [True] * 40}, {"correct": [False] * 40})
    assert acc["better"] == "higher" and acc["diff"] == 1.0 and acc["better_init"] == "pretrained"


@pytest.mark.parametrize("prefix", [0, 1])
def test_first_token_dense_tanh_head_matches_roberta_classification_head(prefix):
    """pool=first + head_dense: RobertaForSequenceClassification's classifier (dropout -> dense -> tanh -> dropout ->
    out_proj on token 0) with the same weights, in eval mode and with the same dropout draws in training mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
                                     num_labels=3, hidden_dropout_prob=0.1, classifier_dropout=None)
    ref = transformers.RobertaForSequenceClassification(cfg).classifier
    tokens = torch.randn(4, 7, 16)
    model = FinetuneModel(nn.Linear(1, 1), lambda x, padding_mask=None, layers=None: x, kind="classification",
                          num_classes=3, dim=16, num_prefix_tokens=prefix, num_layers=0,
                          cfg=FinetuneConfig(pool="first", fc_norm=False, head_dense=True, head_dropout=0.1,
                                             head_init_std=0.02))
    with torch.no_grad():
        model.head_dense.weight.copy_(ref.dense.weight)
        model.head_dense.bias.copy_(ref.dense.bias)
        model.head.weight.copy_(ref.out_proj.weight)
        model.head.bias.copy_(ref.out_proj.bias)
    model.eval(), ref.eval()
    logits, _ = model.logits(Batch(inputs=tokens))
    assert torch.allclose(logits, ref(tokens), atol=1e-6)
    model.train(), ref.train()
    torch.manual_seed(1)
    expected = ref(tokens)
    torch.manual_seed(1)
    got, _ = model.logits(Batch(inputs=tokens))
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, logits, atol=1e-3)
