"""Implementation of ``keras_llmopt.llm``: one-shot compression with calibration data."""
