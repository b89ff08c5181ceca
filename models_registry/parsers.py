"""vLLM's tool-call and reasoning parser names: the choices of ``Model.tool_call_parser`` and
``Model.reasoning_parser``, and what the vLLM launcher accepts for ``--tool-call-parser`` and
``--reasoning-parser``.

vLLM registers them by name (``ToolParserManager`` in ``vllm/tool_parsers/__init__.py``,
``ReasoningParserManager`` in ``vllm/reasoning/__init__.py``); they are not argparse choices
(plugins may add more), so the recorded flag table cannot check them; these lists were read from
vLLM's source in November 2026. Django-free: the launcher
(``provisioning.engines.vllm``) imports it too.
"""

from __future__ import annotations

TOOL_CALL_PARSERS = (
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32",
    "deepseek_v4", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45", "glm47",
    "granite", "granite-20b-fc", "granite4", "hermes", "hunyuan_a13b", "hy_v3", "inkling",
    "internlm", "jamba", "kimi_k2", "kimi_k3", "lfm2", "llama3_json", "llama4_json",
    "llama4_pythonic", "longcat", "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral",
    "olmo3", "openai", "phi4_mini_json", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_xml",
    "seed_oss", "solar_open2", "step3", "step3p5", "xlam",
)  # fmt: skip
REASONING_PARSERS = (
    "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4", "ernie45",
    "gemma4", "glm45", "glm47", "granite", "holo2", "hunyuan_a13b", "hy_v3", "inkling", "kimi_k2",
    "kimi_k3", "mimo", "minimax_m2", "minimax_m2_append_think", "minimax_m3", "mistral",
    "nemotron_v3", "olmo3", "openai_gptoss", "poolside_v1", "qwen3", "seed_oss", "solar_open2",
    "step3", "step3p5",
)  # fmt: skip
