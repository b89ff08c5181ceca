"""Berth's CPU inference engine: a process of its own (``python -m cpu_engine``) that serves a model
with vLLM's HTTP surface on hosts without a GPU.

It imports nothing from Django or Berth's other packages: a node agent starts it with a command
line and an environment (``provisioning.engines.cpu``), and the gateway talks to it over HTTP as to
``vllm serve``. Why it exists, and what it was measured against: docs/decisions/0001-cpu-engine.md.
``tiny_model`` and ``embedding_model`` provide the two models it serves offline.
"""
