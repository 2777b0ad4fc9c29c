"""snap2shop's indexer: encodes a shop's catalogue photos into a FAISS index plus item metadata."""
__version__ = "0.1.0"
