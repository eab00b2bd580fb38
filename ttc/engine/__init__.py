"""The local engine behind ``ttc.backends.local.LocalBackend``: tree-structured decoding with a shared KV tree.

One concept per module; none is imported here, so ``import ttc.engine`` stays free of torch:

- ``config``      reads and validates a Llama/Qwen2 ``config.json``
- ``weights``     reads safetensors and fuses projections for the forward
- ``loading``     opens a model folder (config, weights, tokenizer) on a device and dtype
- ``rope``        rotary embeddings with linear / Llama-3 scaling
- ``model``       the decoder forward; attention goes through ``ttc.kernels.forest_attention``
- ``kv_tree``     the KV cache as a radix tree of reference-counted token blocks
- ``plans``       which tree blocks each query row attends over, and where new KV is written
- ``sampler``     temperature / top-p sampling with one random stream per sequence
- ``detokenizer`` incremental detokenization and stop strings
- ``engine``      prefill, fork, batched decode steps, scoring, holds (single-threaded core)
- ``scheduler``   the worker thread that batches concurrent requests
- ``synthetic``   tiny random checkpoints for tests and benchmarks
"""
