"""Implementation of ``keras_llmopt.sparsity``."""
