"""LoRA/QLoRA fine-tuning that runs in the tuning pod (``python -m runtime.tuning``)."""
