"""The packages' public names (``__all__``, loaded lazily on first use) resolve, are listed by ``dir()``, and
each function or class among them says what it does (a docstring)."""

import importlib
import inspect

import pytest


@pytest.mark.parametrize("package", ["squeeze_mobile", "export", "squeezetime", "squeezed_attention"])
def test_public_names_resolve_and_are_documented(package):
    module = importlib.import_module(package)
    assert inspect.getdoc(module), f"{package} has no docstring"
    names = getattr(module, "__all__", [])
    lazy = set(getattr(module, "_WHERE", {}))
    assert lazy <= set(names), f"{package} loads {sorted(lazy - set(names))} lazily but leaves them out of __all__"
    assert set(names) <= set(dir(module))
    undocumented = [n for n in names if (inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n)))
                    and not inspect.getdoc(getattr(module, n))]
    assert not undocumented, f"{package}: no docstring for {undocumented}"


@pytest.mark.parametrize("where", [
    # functions the README names as the Python API
    "squeezed_attention.decoder_session:read_decoder_manifest", "squeezed_attention.decoder_session:pick_artifact",
    "squeezed_attention.pack_arrays:decoder_context_inputs", "squeezed_attention.pack_arrays:held_inputs",
    "squeezed_attention.lookup_numpy:kept_rows", "squeezed_attention.lookup_numpy:follow_pointer",
    "squeezed_attention.exportable:DecoderStage", "squeezetime.rewrite:export_ready", "bench.gpu:run_gpu_benchmark",
    "bench.stats:summarize",
])
def test_api_named_in_the_readme_is_documented(where):
    module, name = where.split(":")
    assert inspect.getdoc(getattr(importlib.import_module(module), name)), where
