"""Item semantics: the frozen text encoder, keyword teachers and their caches, SID codebooks."""
