"""Inference: `appliedtorch-predict` and the typed gate every model file or logged model passes."""
