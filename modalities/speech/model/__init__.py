"""Speech model parts: the waveform adapter, the wav2vec 2.0 conv feature encoder and conv positional encoder."""
