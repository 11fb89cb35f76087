"""Data readers (real formats), the synthetic distortion engine and the dataset that feeds the processor."""
