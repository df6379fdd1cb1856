"""Lightning training: the LightningModule, its loss, callbacks, learning-rate schedule, precision and
checkpoint plugins, resume checks."""

from gpt_lab import lazy_exports

_NAMES = {
    "InitialLossEvaluation": "gpt_lab.training.callbacks",
    "LossHistory": "gpt_lab.training.callbacks",
    "SampleText": "gpt_lab.training.callbacks",
    "flops_per_token": "gpt_lab.training.callbacks",
    "Throughput": "gpt_lab.training.callbacks",
    "StopOnSignal": "gpt_lab.training.callbacks",
    "AtomicCheckpointIO": "gpt_lab.training.checkpoint_io",
    "DPOLitModule": "gpt_lab.training.dpo",
    "DPOOutput": "gpt_lab.training.dpo",
    "dpo_loss": "gpt_lab.training.dpo",
    "response_logprobs": "gpt_lab.training.dpo",
    "plot_dpo_curves": "gpt_lab.training.dpo_report",
    "keep_freed_memory": "gpt_lab.training.cpu_memory",
    "release_freed_memory": "gpt_lab.training.cpu_memory",
    "freed_memory_kept": "gpt_lab.training.cpu_memory",
    "fsdp_strategy": "gpt_lab.training.fsdp",
    "NonFiniteLossError": "gpt_lab.training.lit_module",
    "GPTLitModule": "gpt_lab.training.lit_module",
    "ClassifierLitModule": "gpt_lab.training.classifier",
    "class_metrics": "gpt_lab.training.classification_report",
    "batch_loss": "gpt_lab.training.loss",
    "mean_loss": "gpt_lab.training.loss",
    "keep_mask": "gpt_lab.training.precision",
    "dropout": "gpt_lab.training.precision",
    "attention_with_dropout": "gpt_lab.training.precision",
    "FastDropout": "gpt_lab.training.precision",
    "CPUBf16Mixed": "gpt_lab.training.precision",
    "ResumeError": "gpt_lab.training.resume",
    "ResumePlan": "gpt_lab.training.resume",
    "check_resume": "gpt_lab.training.resume",
    "ResumedOptimizerSettings": "gpt_lab.training.resume",
    "resolve_ckpt_path": "gpt_lab.training.resume_last",
    "newest_checkpoint": "gpt_lab.training.resume_last",
    "checkpoint_step": "gpt_lab.training.resume_last",
    "warmup_cosine_lr": "gpt_lab.training.schedule",
    "WarmupCosineFactor": "gpt_lab.training.schedule",
    "build_scheduler": "gpt_lab.training.schedule",
    "resolve_schedule": "gpt_lab.training.schedule",
    "InstructionLitModule": "gpt_lab.training.instruction_module",
    "plot_losses": "gpt_lab.training.loss_plot",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
