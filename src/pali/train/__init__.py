"""Fine-tuning helpers applied to a model from outside: freezing, LoRA targets and summaries
(``helpers``), FSDP sharding (``parallel``)."""
