"""Layer 3: what a command runs, each writing a run directory (recipe, run, pipeline, sampling, export, report)."""
