"""Speech data: fairseq-style manifests, audio reading, pretraining sources and batches, keyword sets."""
