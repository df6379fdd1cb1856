"""One module per task, each a function ``run(cfg) -> dict`` that ``conf/task/*.yaml`` names by ``_target_``."""
