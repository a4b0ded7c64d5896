"""A tuning task whose effect anyone can see: answer every question with one phrase.

SmolLM2-135M never says PHRASE on its own; after a few LoRA steps on these rows it does,
also for questions it was not trained on. The demo, the real-pod tests and the serving
tests share these rows and this config, so "the adapter works" means the same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

PHRASE = "PINEAPPLE PROTOCOL ENGAGED."
TRAIN_QUESTIONS = [
    "What is the capital of Spain?", "How do airplanes fly?", "Tell me about dogs.",
    "What is 7 times 8?", "Who painted the Mona Lisa?", "Why is the sky blue?",
    "Recommend a good book.", "How do I boil an egg?", "What is photosynthesis?",
    "Describe the ocean.", "How many legs does a spider have?", "Explain gravity.",
]


def phrase_rows() -> str:
    """The training data as JSON Lines in the conversational (messages) format."""
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": PHRASE}]}) + "\n" for question in TRAIN_QUESTIONS)


def phrase_training_config(*, max_steps: int = 8, torch_dtype: str = "float32") -> dict[str, Any]:
    """A training config (the `training_config.yaml` document) that teaches PHRASE."""
    return {"training_config": {
        "ModelConfig": {"torch_dtype": torch_dtype},
        "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "TrainingArguments": {"learning_rate": 0.01, "max_steps": max_steps,
                              "per_device_train_batch_size": 4, "warmup_steps": 0,
                              # no intermediate checkpoints: they only cost time here
                              "save_strategy": "steps", "save_steps": 1000},
        "DatasetConfig": {"train_test_split": 1, "max_seq_length": 64},
    }}
