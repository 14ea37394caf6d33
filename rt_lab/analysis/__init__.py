"""Analyses of finished runs, each a command: `python -m rt_lab.analysis.similarity RUN_DIR --task gsm8k`
(instruction similarity, Hewitt et al. §5.2)."""
