"""Text data: corpora, tokenizers, memory-mapped token blocks, pretraining sources and batches, WordNet probe."""
