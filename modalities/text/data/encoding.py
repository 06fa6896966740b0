"""Token sequences of labelled text examples, as RoBERTa fine-tuning encodes them.

* one text: ``<s> A </s>``, ``A`` cut to ``max_tokens - 2`` tokens;
* a pair:   ``<s> A </s> </s> B </s>`` (RoBERTa's pair format: fairseq ``sentence_prediction`` prepends
  ``init_token: 0`` to ``A </s>`` and ``separator_token: 2`` to ``B </s>``, examples/roberta/config/finetuning/*.yaml;
  ``transformers``' RobertaTokenizer builds the same ``cls A sep sep B sep``), cut longest-first to
  ``max_tokens - 4`` tokens of text.

Longest-first as the ``tokenizers`` library truncates a pair (the back end of ``transformers``' RobertaTokenizer):
the shorter text is kept whole when it fits in half the budget and the longer one gets the rest; otherwise both get
half, the odd token going to the text that was longer (the second on a tie). fairseq itself only cuts the end of
the joined sequence (``shorten_method: truncate``), which can drop the whole second text.

Ids are the tokenizer's fixed specials (:mod:`modalities.text.data.tokenizer`): ``<s>`` 0, ``</s>`` 2.
"""

from __future__ import annotations

from modalities.text.data.tokenizer import BOS_ID, EOS_ID

SINGLE_SPECIALS = 2  # <s> A </s>
PAIR_SPECIALS = 4    # <s> A </s> </s> B </s>


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut ``a`` and ``b`` (from their ends) to at most ``budget`` tokens together, longest first (see above)."""
    if budget < 0:
        raise ValueError(f"a token budget must be >= 0, got {budget}")
    if len(a) + len(b) <= budget:
        return a, b
    a_longer = len(a) > len(b)
    short, long = (len(b), len(a)) if a_longer else (len(a), len(b))
    if 2 * short <= budget:  # the shorter text fits in its half: it stays whole
        keep_short, keep_long = short, budget - short
    else:
        keep_short, keep_long = budget // 2, budget - budget // 2
    keep_a, keep_b = (keep_long, keep_short) if a_longer else (keep_short, keep_long)
    return a[:keep_a], b[:keep_b]


def encode_single(ids: list[int], max_tokens: int) -> list[int]:
    """``<s> ids </s>``, at most ``max_tokens`` (>= 2) long."""
    if max_tokens < SINGLE_SPECIALS:
        raise ValueError(f"max_tokens must be >= {SINGLE_SPECIALS} (<s> and </s>), got {max_tokens}")
    return [BOS_ID, *ids[: max_tokens - SINGLE_SPECIALS], EOS_ID]


def encode_pair(a: list[int], b: list[int], max_tokens: int) -> list[int]:
    """``<s> a </s> </s> b </s>``, at most ``max_tokens`` (>= 4) long, the texts cut longest-first."""
    if max_tokens < PAIR_SPECIALS:
        raise ValueError(f"max_tokens must be >= {PAIR_SPECIALS} (<s> </s> </s> </s>), got {max_tokens}")
    a, b = truncate_longest_first(a, b, max_tokens - PAIR_SPECIALS)
    return [BOS_ID, *a, EOS_ID, EOS_ID, *b, EOS_ID]
