"""Training: data readers, the synthetic data engine, the three-stage LoRA + DeepSpeed ZeRO-2 schedule, Hub push."""
