"""Data: sources and tokenization, examples and batches, the epoch order and loader, the cache as a
dataset, augmentation."""
