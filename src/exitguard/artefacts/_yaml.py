"""The YAML form of the generated Prometheus and Alertmanager files (PyYAML)."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Block style everywhere, literal blocks for multi-line strings (readable PromQL)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, the way the Prometheus docs do.
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(data: Any) -> str:
    """``data`` as YAML text; the same data always gives the same text."""
    return yaml.dump(
        # No line folding: an annotation stays on one line, greppable.
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10_000,
        allow_unicode=True,
    )


def load(text: str) -> Any:
    """Parse YAML text; ``ValueError`` (naming the problem) when it is not valid YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {type(exc).__name__}") from None
