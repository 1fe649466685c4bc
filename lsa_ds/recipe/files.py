"""Recipe files as plain data: strict YAML (duplicate keys refused with file:line), `base:`
inheritance by deep merge, and `--set a.b=c` overrides. `lsa_ds.recipe.load` validates the
result; `lsa_ds.sweep.spec` reads ablation files with the same parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lsa_ds.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """Parse one YAML file strictly (duplicate keys refused); an empty file is {}."""
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        loader = _StrictLoader(path.read_text())
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge `over` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """Every dotted key where two recipe trees differ, with both values (mappings are walked,
    anything else is compared whole), in the order the keys first appear."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b])
                for d in differences(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))]
    return [] if a == b else [(key, a, b)]


def load_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file with its `base:` chain deep-merged (cycles and missing bases refused)."""
    path = path.resolve()
    if path in chain:
        raise UserError(f"{path}: `base:` cycle through {' -> '.join(p.name for p in chain)}")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"{path}: `base` must be a file path, got {base!r}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        raise UserError(f"{path}: base recipe '{base}' not found (looked at {base_path})")
    return deep_merge(load_tree(base_path, chain + (path,)), data)


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (so 3, 1e-4, true, [1,2] work)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.max_steps=20")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value
