"""tunegrid: one-command fine-tuning studies of GPT-2-class causal language models."""
