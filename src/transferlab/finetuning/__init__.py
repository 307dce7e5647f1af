"""The fine-tune: the frozen blocks' cache, the search on validation, training, tracking."""
