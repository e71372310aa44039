"""Data: the embedded world, TFDS builders, tokenizer, semi-causal layout and
the Grain pipeline.

    world.py      scenes -> images, captions, VQA, NLI, documents (pure Python)
    builders/     TFDS builders (array_record): metalm_world, COCO Karpathy,
                  VQAv2, text corpus, audio captions, MSR-VTT, your own data (jsonl.py)
    manifest.py   JSONL manifest lines of your own data -> examples or a named problem
    webdataset.py WebDataset shards (img2dataset layout) -> manifest objects
    user_sets.py  the sources NAME_caption, NAME_vqa, ... of a built set of yours
    prepare.py    first-use build of the world + tokenizer under a file lock
    build.py      CLI: python -m metalm_jax.data.build --data_dir=... [--jsonl=NAME:FOLDER]
    tokenizer.py  SentencePiece `Tokenizer`, `train_tokenizer`
    hf_tokenizer.py  HF tokenizer.json `HfTokenizer`, `add_project_specials`
    tokenizer_kinds.py  tokenizer files by suffix (.model, .json): `load`
    images.py     `to_rgb`, `preprocess_image` (shared with evaluators/export)
    sources.py    named sources (mixture entries) -> tfds name + task
    formats.py    each task's format (templates, label words, fields, answer)
    tasks.py      per-example decode / tokenise / row layout (from formats), counters
    spans.py      rows, span sampling, the loss rule, batch-contract arrays
    packing.py    checkpointable Grain stages: DropFailed, PackDocuments
    pipeline.py   `make_iterator`, `split_stats`
    testing.py    small prepared configs for tests
"""
