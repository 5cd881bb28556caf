"""Command line: ``python -m ffkit COMMAND [ARGS]`` (or the ``ffkit`` script).

Each command is a module ``ffkit.commands.<name>`` (dashes in the name become underscores) with a
``main(argv: list[str]) -> int`` function and a one-line module docstring, which ``--help`` lists.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import ffkit.commands


def _commands() -> dict[str, str]:
    found = {}
    for info in pkgutil.iter_modules(ffkit.commands.__path__):
        if not info.name.startswith("_"):
            found[info.name.replace("_", "-")] = info.name
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m ffkit COMMAND [ARGS]\n\ncommands:")
        for name, module in commands.items():
            # read the docstring without importing: a command may need packages that only the
            # book's environment has (nbclient for `notebooks`, say)
            source = Path(ffkit.commands.__path__[0], f"{module}.py").read_text(encoding="utf-8")
            doc = (ast.get_docstring(ast.parse(source)) or "").strip()
            print(f"  {name:<22} {doc.splitlines()[0] if doc else ''}")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"ffkit: unknown command {name!r}; known: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"ffkit.commands.{commands[name]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
