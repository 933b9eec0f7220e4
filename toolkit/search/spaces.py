"""The search spaces by name. Each is a module with one API, which the latency model, the search, the run
and the report use without knowing which space it is:

- `SPACE_NAME`, `OPS` (a slot's candidate ops, `skip` last), `SKIP`, `SLOTS`, `WIDTH_GROUPS` (the searched
  widths, one choice per group), `slot_group(k)`, `skippable(k)`, `META` (the fields taken from the data);
- `validate`, `sample`, `load_architecture`, `describe`, `choices(arch)` / `from_choices(meta, ops, widths)`;
- `blocks(arch)` (the searched units with their shapes), `FEATURES`, `block_features(unit, lanes)`,
  `fixed_features(arch)`, `fixed_width_arch(meta, last_width)`: the latency model's kernels;
- `build_module(arch)`, `input_shape`, `example_input`, `latency_sample(seed)`, `data_meta(data, size)`,
  `baseline_for(meta, scale)` (the hand-designed reference), `sizes` (the input sizes it allows).

A space's supernet module has `make_supernet(meta)` and `make_expected_latency(model, meta)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from compile import UsageError

_SPACES = {"mobile-cnn": ("toolkit.search.mobile_cnn", "toolkit.search.supernet"),
           "tiny-transformer": ("toolkit.search.tiny_transformer", "toolkit.search.transformer_supernet")}
NAMES = tuple(_SPACES)


def get(name: str) -> ModuleType:
    """The space module called `name` (UsageError naming the spaces if there is none)."""
    if name not in _SPACES:
        raise UsageError(f"unknown search space {name!r}; choose one of: {', '.join(NAMES)}")
    return importlib.import_module(_SPACES[name][0])


def of(arch: Any) -> ModuleType:
    """The space an architecture document names."""
    name = arch.get("space") if isinstance(arch, dict) else None
    if name not in _SPACES:
        raise UsageError(f"architecture space is {name!r}; this toolkit has the spaces {', '.join(NAMES)}")
    return get(name)


def supernet_module(name: str) -> ModuleType:
    get(name)
    return importlib.import_module(_SPACES[name][1])


def for_data(data: Any) -> str:
    """The space that fits a dataset's kind when none is given: images -> mobile-cnn, text -> tiny-transformer."""
    return "tiny-transformer" if getattr(data, "kind", "image") == "text" else "mobile-cnn"
