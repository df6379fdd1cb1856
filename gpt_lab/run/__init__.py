"""What every run does under Hydra: the job wrapper, pre-flight checks, run directories, status and
results.json, sweep summaries, TensorBoard files."""

from gpt_lab import lazy_exports

_NAMES = {
    "unique_dir": "gpt_lab.run.dirs",
    "register_resolver": "gpt_lab.run.dirs",
    "resumes_run": "gpt_lab.run.dirs",
    "check_run_dir": "gpt_lab.run.dirs",
    "check_sweep_dir": "gpt_lab.run.dirs",
    "RunDirGuard": "gpt_lab.run.dirs",
    "RunDirError": "gpt_lab.run.dirs",
    "write_results": "gpt_lab.run.files",
    "read_results": "gpt_lab.run.files",
    "run_task": "gpt_lab.run.job",
    "task_function": "gpt_lab.run.job",
    "exit_with_error": "gpt_lab.run.job",
    "stop_child_processes": "gpt_lab.run.job",
    "run_command_line": "gpt_lab.run.job",
    "run_job": "gpt_lab.run.job",
    "quiet_known_warnings": "gpt_lab.run.job",
    "release_memory": "gpt_lab.run.job",
    "group_options": "gpt_lab.run.options",
    "unknown_group_options": "gpt_lab.run.options",
    "check_group_options": "gpt_lab.run.options",
    "check_resources": "gpt_lab.run.preflight",
    "count_params_on_meta": "gpt_lab.run.preflight",
    "machine_memory_bytes": "gpt_lab.run.preflight",
    "check_memory": "gpt_lab.run.preflight",
    "check_components": "gpt_lab.run.preflight",
    "is_rank_zero": "gpt_lab.run.status",
    "RunInterrupted": "gpt_lab.run.status",
    "install_signal_handlers": "gpt_lab.run.status",
    "as_interruption": "gpt_lab.run.status",
    "SweepSummary": "gpt_lab.run.sweep",
    "finish_interrupted_sweep": "gpt_lab.run.sweep",
    "planned_jobs": "gpt_lab.run.sweep",
    "job_dirs": "gpt_lab.run.sweep",
    "summarise_sweep": "gpt_lab.run.sweep",
    "write_summary": "gpt_lab.run.sweep",
    "TensorBoardSettings": "gpt_lab.run.tensorboard",
    "tensorboard_settings": "gpt_lab.run.tensorboard",
    "flatten_hparams": "gpt_lab.run.tensorboard",
    "write_run_tensorboard": "gpt_lab.run.tensorboard",
    "write_tensorboard": "gpt_lab.run.tensorboard",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
