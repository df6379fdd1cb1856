"""gpt_lab: chapter 4's GPT-2 model in a Hydra + Lightning experiment harness."""

__version__ = "0.1.0"
