"""Code that runs inside workload pods: LoRA/QLoRA tuning and the inference server."""
