"""unimim: a multimodal, data2vec-centred self-supervised pretraining framework.

Shape letters used in every docstring and comment of the project:

    B batch, T tokens (sequence length incl. prefix tokens), N patches / frames (T without prefix),
    D model width, H attention heads, L layers, K top-K layers, M masked tokens,
    C channels, S audio samples.

Boolean masks: ``True`` in a padding mask means *padding*; ``True`` in a token mask means *masked*.
"""

__version__ = "0.1.0"
