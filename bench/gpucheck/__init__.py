"""The parts of bench/gpu_check.py: one module per section, one driver for the engine.

The GPU box this check is written for has torch, transformers, peft, numpy and pyarrow but no
web stack, Redis or Celery; every module here drives the engine and the learner in process.
"""
