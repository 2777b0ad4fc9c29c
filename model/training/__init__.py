"""Training and adaptation of the embedder, above the network and its inference (model/'s top level).

Training from pairs: data (the dataset readers: DeepFashion, pairs CSV, catalogue), views (a photo as
the network sees it, and embedding them), triplets (the triplet and item-batch datasets, negative
mining), losses, train (the loop) and evaluate (retrieval ranks and the report).
Adaptation to a catalogue on a CPU: adapt (the verb), adapt_data (rows and masks), adapt_cache (the
backbone passes), feature_cache (resumable shards), adapt_fit (foreground, pooling, heads) and
whitening (fitted here; the fitted head lives in model/adapted_head.py).

Nothing is imported here, so importing one of these modules loads only what it needs."""
