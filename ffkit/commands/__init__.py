"""The commands of ``python -m ffkit``: one module each, see ``ffkit/__main__.py``."""
