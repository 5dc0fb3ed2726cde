"""Index snapshots of gallery embeddings: format and publishing (store), verified loading (snapshot),
exact and approximate FAISS / PyTorch search (search, faiss_index), the swappable active index (active),
and the back ends it serves from (backend: local_backend, milvus_backend)."""
