"""Record the exact ``vllm serve`` flags of a vLLM release by running vLLM's own argument parser.

The GPU worker's vLLM cannot be installed next to the control plane (it pins its own torch and
CUDA), so the flag list the tests check against is produced once per vLLM release and committed
as ``provisioning/engines/vllm_<version>_serve_flags.json``. This script builds the real parser, the
one ``vllm serve`` uses (``vllm.entrypoints.common.cli_args.make_arg_parser`` on vLLM's
``FlexibleArgumentParser``), from the unpacked wheel's Python sources. Heavy or GPU-only imports
(torch, transformers, triton, CUDA kernels, ...) are replaced by permissive stub modules: flag
names, aliases, actions, ``nargs`` and choices come from the config dataclasses' fields, not from
those libraries. Defaults that need a real platform to compute are skipped (only help text and
defaults depend on them, and neither is recorded).

How the committed file was produced (vLLM 0.33.0)::

    pip download --no-deps vllm==0.33.0 -d /tmp/vllm
    cd /tmp/vllm/src && unzip -q ../vllm-0.33.0-*.whl 'vllm/*.py' 'vllm-0.33.0.dist-info/*'
    python3.11 -m venv /tmp/vpenv && /tmp/vpenv/bin/pip install pydantic regex huggingface_hub \\
        cachetools msgspec psutil numpy pyyaml cloudpickle requests tqdm filelock jinja2 openai \\
        fastapi uvloop prometheus_client pyzmq cbor2 pybase64 blake3 email-validator
    /tmp/vpenv/bin/python scripts/record_vllm_flags.py /tmp/vllm/src \\
        provisioning/engines/vllm_0.33.0_serve_flags.json

``--parse SRC ARG...`` runs one command line (what follows ``vllm serve``) through the same
parser and prints the parsed namespace: a check of the launcher's output against vLLM itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.abc
import importlib.machinery
import json
import sys
import types

# Imported as stubs even when installed: GPU/torch stacks and model libraries.
STUB_ROOTS = {
    "torch", "transformers", "triton", "flashinfer", "xgrammar", "outlines_core", "llguidance",
    "lm_format_enforcer", "compressed_tensors", "numba", "depyf", "torchvision", "torchaudio",
    "cv2", "PIL", "mistral_common", "gguf", "partial_json_parser", "openai_harmony",
    "sentencepiece", "tiktoken", "einops", "anthropic", "mcp", "ray", "setproctitle", "diskcache",
    "lark", "watchfiles", "python_json_logger", "scipy", "pydantic_extra_types", "ijson",
    "opentelemetry", "model_hosting_container_standards", "prometheus_fastapi_instrumentator",
    "cupy", "amdsmi", "pynvml", "librosa", "soundfile", "av", "safetensors", "accelerate", "peft",
    "torchcodec", "nvtx", "quack", "tilelang", "tvm_ffi", "cutlass", "humming",
}  # fmt: skip


class _StubMeta(type):
    """Classes that accept any attribute, call, subscript or union: enough for import time."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(name)

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a decorator
        return super().__call__()

    def __getitem__(cls, item):
        return cls

    def __or__(cls, other):
        return cls

    def __ror__(cls, other):
        return cls

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False


class _Stub(metaclass=_StubMeta):
    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.any_schema()

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(name)

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __iter__(self):
        return iter(())

    def __bool__(self):
        return False

    def __getitem__(self, key):
        return _Stub()

    def __add__(self, other):
        return _Stub()

    def __radd__(self, other):
        return other if isinstance(other, str) else _Stub()

    __mul__ = __rmul__ = __sub__ = __truediv__ = __or__ = __ror__ = __add__

    def __int__(self):
        return 0

    __index__ = __len__ = __int__

    def __float__(self):
        return 0.0

    def __str__(self):
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, _Stub)

    def __hash__(self):
        return id(self)

    def __lt__(self, other):
        return False

    __gt__ = __lt__


def _stub_class(name: str) -> type:
    return _StubMeta(name or "Stub", (_Stub,), {"__module__": "stub"})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _stub_class(name)
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        if module.__name__ == "torch":
            module.__version__ = "2.14.0"
            module.iinfo = lambda t: types.SimpleNamespace(min=-(2**63), max=2**63 - 1, bits=64)
            module.finfo = lambda t: types.SimpleNamespace(min=-3.4e38, max=3.4e38, eps=1e-7)


class _StubFinder(importlib.abc.MetaPathFinder):
    """Stub the listed roots, and any other third-party top-level module that is not installed."""

    def find_spec(self, fullname, path, target=None):
        root = fullname.split(".")[0]
        if root in STUB_ROOTS:
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        if (
            root == "vllm"
            or "." in fullname
            or fullname in sys.stdlib_module_names
            or fullname.startswith("_")
        ):
            return None
        for finder in sys.meta_path:
            if finder is not self and finder.find_spec(fullname, path, target) is not None:
                return None
        return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)


def _tolerant_factory(factory):
    def make():
        try:
            return factory()
        except Exception as exc:
            print(f"default of {factory!r} skipped: {exc!r}", file=sys.stderr)
            return None

    return make


def build_serve_parser(vllm_src: str):
    sys.path.insert(0, vllm_src)
    sys.meta_path.insert(0, _StubFinder())

    import vllm.platforms
    from vllm.platforms.interface import UnspecifiedPlatform

    vllm.platforms.current_platform = UnspecifiedPlatform()

    import vllm.entrypoints.common.cli_args as cli_args
    from pydantic.fields import FieldInfo
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Config dataclass defaults are instances whose validators probe the (stubbed) platform.
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("vllm."):
            continue
        for cls in list(vars(module).values()):
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                continue
            for field in dataclasses.fields(cls):
                if isinstance(field.default, FieldInfo) and field.default.default_factory:
                    field.default.default_factory = _tolerant_factory(field.default.default_factory)
                elif field.default_factory is not dataclasses.MISSING:
                    field.default_factory = _tolerant_factory(field.default_factory)

    # As in vllm/entrypoints/cli/serve.py ServeSubcommand.subparser_init.
    parser = FlexibleArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]")
    return cli_args.make_arg_parser(parser)


def describe(parser: argparse.ArgumentParser) -> dict:
    from vllm import _version

    flags = {}
    for option, action in parser._option_string_actions.items():
        entry = {"dest": action.dest, "action": type(action).__name__}
        if action.nargs is not None:
            entry["nargs"] = action.nargs
        if action.choices is not None:
            entry["choices"] = sorted(str(c) for c in action.choices)
        # EnableDisableAction keeps --no-x registered but hides it from --help.
        entry["in_help"] = option in action.option_strings
        negative = getattr(action, "negative_option_strings", None)
        if negative is not None:
            entry["sets"] = option not in negative
        flags[option] = entry
    return {
        "_produced_by": (
            "scripts/record_vllm_flags.py: vLLM's own `vllm serve` parser (make_arg_parser) built "
            "from the vllm-0.33.0 wheel's sources with torch/transformers/GPU imports stubbed; "
            "parser._option_string_actions dumped. See the script's docstring for the commands."
        ),
        "vllm_version": _version.__version__,
        "vllm_commit": getattr(_version, "__commit_id__", None),
        "positionals": [a.dest for a in parser._actions if not a.option_strings],
        "flags": dict(sorted(flags.items())),
    }


def main() -> None:
    if sys.argv[1] == "--parse":
        # Parse a command line (everything after `vllm serve`) with the real parser, e.g. the
        # output of provisioning.engines.vllm.serve_args, and print the resulting namespace.
        namespace = build_serve_parser(sys.argv[2]).parse_args(sys.argv[3:])
        print(json.dumps(vars(namespace), indent=1, sort_keys=True, default=repr))
        return
    vllm_src, out = sys.argv[1], sys.argv[2]
    data = describe(build_serve_parser(vllm_src))
    with open(out, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    print(f"{len(data['flags'])} option strings from vLLM {data['vllm_version']} -> {out}")


if __name__ == "__main__":
    main()
